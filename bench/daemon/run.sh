#!/usr/bin/env bash
# hulld benchmark: instances through the daemon (docs/benchmarks.md, "Instances (hulld)").
#   bench/daemon/run.sh [all|latency|scale]        (as root, after `make build`; `make bench-daemon` runs "all")
# Environment:
#   ITER=30        latency: iterations of (hull launch + hull exec), the same privileged (security.privileged=true)
#                  and of `podman run --rm`, interleaved
#   N=1000         scale: containers launched through the SDK (N=10000 on request)
#   RUNNING=1000   scale: how many stay running (0..N); the later ones are handled as REST says
#   REST=stop      scale: stop each later one right after its launch, or REST=init: only create it (not started)
#   STEP=100       scale: report the per-launch latency every STEP launches (growth = last STEP vs first STEP)
#   LIST_RUNS=5    scale: `hull list` runs per checkpoint (1000 and N instances)
#   NET=none       scale: none, bridge (eth0 on a bridge network of the run's own) or routed (nictype=routed NICs)
#   OUT=DIR        where the bin dir is (default out/bin)
# It starts its own hulld (own socket and state dir in a temporary directory), raises kernel limits for the run and
# restores them, and on exit, error or Ctrl-C deletes every instance, stops hulld, unmounts what is left under its
# state dir, removes its cgroups and the temporary directory.
set -euo pipefail

MODE=${1:-all}
ITER=${ITER:-30}
N=${N:-1000}
RUNNING=${RUNNING:-1000}
REST=${REST:-stop}
STEP=${STEP:-100}
LIST_RUNS=${LIST_RUNS:-5}
NET=${NET:-none}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${OUT:-$REPO/out/bin}" && pwd)
RESULTS=$REPO/artifacts/bench
BENCH_BIN=$REPO/artifacts/bench-daemon/bin

case $MODE in all|latency|scale) ;; *) echo "usage: $0 [all|latency|scale]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "bench/daemon/run.sh: run it as root (it starts containers and raises kernel limits)" >&2; exit 1; }
for b in hull hulld hull-oci libe_sqlite3.so; do
  [ -e "$BIN/$b" ] || { echo "bench/daemon/run.sh: $BIN/$b is missing: run 'make build' first" >&2; exit 1; }
done
if [ "$MODE" != scale ]; then
  command -v podman >/dev/null || { echo "bench/daemon/run.sh: podman is not installed (the latency comparison needs it): apt-get install podman, or run '$0 scale'" >&2; exit 1; }
  command -v runc >/dev/null || { echo "bench/daemon/run.sh: runc is not installed (Podman runs with it here): apt-get install runc" >&2; exit 1; }
fi

TMP=$(mktemp -d /tmp/hull-dbench.XXXXXX)
chmod 711 "$TMP" # unprivileged containers (the default) reach their rootfs through it
STATE=$TMP/state
SOCK=$TMP/hulld.sock
export HULL_SOCKET=$SOCK HULL_DIR=$STATE HULL_HULLD=/bin/false HULL_DEFAULT_NETWORK=none # bench/net measures networks
HULLD_PID=
declare -A SAVED=()

# hulld's cgroup prefix: /hull/i-<FNV-1a of the state dir>- (ContainerDriver); the sweep only touches ours.
fnv() { local s=$1 h=2166136261 i c; for ((i = 0; i < ${#s}; i++)); do printf -v c '%d' "'${s:i:1}"; h=$(( ((h ^ c) * 16777619) & 0xffffffff )); done; printf '%08x' "$h"; }
CG_PREFIX=i-$(fnv "$STATE")-

raise() { # sysctl key, value: raise only (never lower), remember the old value
  local k=$1 v=$2 f=/proc/sys/${1//.//} old
  [ -w "$f" ] || return 0
  old=$(cat "$f")
  if [ "$old" -lt "$v" ] 2>/dev/null; then SAVED[$k]=$old; echo "$v" > "$f"; fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  echo "cleaning up..." >&2
  if [ -n "$HULLD_PID" ] && kill -0 "$HULLD_PID" 2>/dev/null; then
    timeout 600 dotnet "$BENCH_BIN/Hull.Daemon.Bench.dll" cleanup --socket "$SOCK" >&2
    kill -TERM "$HULLD_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$HULLD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HULLD_PID" 2>/dev/null
  fi
  # hulld's per-state-dir container monitor (if this hulld has one) leaves by itself once no container and no hulld
  # is left; give it a moment, then stop it.
  local mpid
  mpid=$(cat "$STATE/monitor.pid" 2>/dev/null || true)
  if [ -n "$mpid" ] && grep -q "$STATE" "/proc/$mpid/cmdline" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$mpid" 2>/dev/null
  fi
  # Whatever survived (a Ctrl-C mid-launch, a failed delete): the containers' processes, cgroups and mounts.
  local d
  for d in $(find /sys/fs/cgroup/*/hull -mindepth 1 -maxdepth 1 -type d -name "$CG_PREFIX*" 2>/dev/null); do
    cat "$d/cgroup.procs" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  done
  sleep 0.2
  find /sys/fs/cgroup/*/hull -mindepth 1 -maxdepth 1 -type d -name "$CG_PREFIX*" 2>/dev/null | while read -r d; do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  findmnt -rn -o TARGET | grep "^$TMP/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  podman --root "$TMP/podman/root" --runroot "$TMP/podman/run" --cgroup-manager cgroupfs --events-backend file rm -af >/dev/null 2>&1
  rm -rf "$TMP"
  local k
  for k in "${!SAVED[@]}"; do echo "${SAVED[$k]}" > "/proc/sys/${k//.//}"; done
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Limits for many containers: pids (each container is an init plus a sleep), mounts, inotify, files.
raise kernel.pid_max 4194304
raise kernel.threads-max 4194304
raise fs.mount-max 1000000
raise fs.inotify.max_user_instances 65536
raise fs.inotify.max_user_watches 4194304
raise fs.file-max 9223372036854775807
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "building the SDK client (bench/daemon)..." >&2
dotnet build "$REPO/bench/daemon/Hull.Daemon.Bench.csproj" -c Release -o "$BENCH_BIN" --nologo -v q >&2

mkdir -p "$STATE" "$RESULTS"
setsid "$BIN/hulld" --socket "$SOCK" --state-dir "$STATE" > "$TMP/hulld.log" 2>&1 &
HULLD_PID=$!
for _ in $(seq 200); do [ -S "$SOCK" ] && "$BIN/hull" list >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN/hull" list >/dev/null || { echo "hulld did not start:" >&2; cat "$TMP/hulld.log" >&2; exit 1; }
# The built-in image is made on first use: make it now, outside any timing.
"$BIN/hull" init busybox warmup >/dev/null && "$BIN/hull" delete warmup >/dev/null

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
JSON=$RESULTS/daemon-$STAMP.json
echo "{" > "$JSON"
echo "  \"host\": {\"cpus\": $(nproc), \"kernel\": \"$(uname -r)\", \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >> "$JSON"

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b - a) * 1000}'; }

latency() {
  local rootfs
  rootfs=$(find "$STATE/images" -mindepth 2 -maxdepth 2 -type d -name rootfs | head -1)
  [ -n "$rootfs" ] || { echo "the busybox image's rootfs was not found under $STATE/images" >&2; exit 1; }
  cp -a "$rootfs" "$TMP/podman-rootfs" # the same files; Podman may add mount points to it
  local P=(podman --runtime "$(command -v runc)" --root "$TMP/podman/root" --runroot "$TMP/podman/run" --tmpdir "$TMP/podman/tmp"
    --cgroup-manager cgroupfs --events-backend file)
  local PR=(run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --rootfs "$TMP/podman-rootfs" /bin/true)
  "${P[@]}" "${PR[@]}" # warm-up, and fail early if Podman cannot run here
  local runtime_v; runtime_v=$(runc --version | head -1)
  : > "$TMP/lat"
  local i t0 t1 t2 t3 t4 t5 t6
  echo "latency: $ITER iterations, hull (launch, exec), privileged and podman run --rm interleaved" >&2
  for ((i = 0; i < ITER; i++)); do
    t0=$EPOCHREALTIME
    "$BIN/hull" launch busybox "l$i" >/dev/null
    t1=$EPOCHREALTIME
    "$BIN/hull" exec "l$i" -- true
    t2=$EPOCHREALTIME
    "${P[@]}" "${PR[@]}"
    t3=$EPOCHREALTIME
    "$BIN/hull" delete --force "l$i" >/dev/null
    t4=$EPOCHREALTIME
    "$BIN/hull" launch busybox "p$i" -c security.privileged=true >/dev/null
    t5=$EPOCHREALTIME
    "$BIN/hull" exec "p$i" -- true
    t6=$EPOCHREALTIME
    "$BIN/hull" delete --force "p$i" >/dev/null
    echo "$(ms "$t0" "$t1") $(ms "$t1" "$t2") $(ms "$t0" "$t2") $(ms "$t2" "$t3") $(ms "$t3" "$t4")" \
      "$(ms "$t4" "$t5") $(ms "$t4" "$t6")" >> "$TMP/lat"
  done
  local launch exec both podman del plaunch pboth
  launch=$(awk '{print $1}' "$TMP/lat" | median); exec=$(awk '{print $2}' "$TMP/lat" | median)
  both=$(awk '{print $3}' "$TMP/lat" | median); podman=$(awk '{print $4}' "$TMP/lat" | median); del=$(awk '{print $5}' "$TMP/lat" | median)
  plaunch=$(awk '{print $6}' "$TMP/lat" | median); pboth=$(awk '{print $7}' "$TMP/lat" | median)
  printf '\nlatency, median of %d (ms):\n' "$ITER"
  printf '  hull launch busybox      %8.1f\n  hull exec -- true        %8.1f\n  launch + exec            %8.1f\n' "$launch" "$exec" "$both"
  printf '  privileged launch        %8.1f\n  privileged launch + exec %8.1f\n' "$plaunch" "$pboth"
  printf '  podman run --rm (%s) %8.1f\n  hull delete --force      %8.1f\n' "$runtime_v" "$podman" "$del"
  printf '  unprivileged (the default) / privileged: launch %.2f, launch + exec %.2f\n' \
    "$(awk -v a="$launch" -v b="$plaunch" 'BEGIN {print a / b}')" "$(awk -v a="$both" -v b="$pboth" 'BEGIN {print a / b}')"
  printf '  ratio (launch + exec) / podman run: %.2f; launch / podman run: %.2f\n' \
    "$(awk -v a="$both" -v b="$podman" 'BEGIN {print a / b}')" "$(awk -v a="$launch" -v b="$podman" 'BEGIN {print a / b}')"
  echo "  ,\"latency\": {\"iter\": $ITER, \"hull_launch_ms\": $launch, \"hull_exec_ms\": $exec, \"hull_launch_exec_ms\": $both, \"podman_run_ms\": $podman, \"hull_delete_ms\": $del, \"privileged_launch_ms\": $plaunch, \"privileged_launch_exec_ms\": $pboth, \"podman_runtime\": \"$runtime_v\"}" >> "$JSON"
}

scale() {
  local r=$RUNNING; [ "$r" -le "$N" ] || r=$N
  dotnet "$BENCH_BIN/Hull.Daemon.Bench.dll" scale --socket "$SOCK" --hull "$BIN/hull" --pid "$HULLD_PID" \
    --count "$N" --running "$r" --rest "$REST" --step "$STEP" --list-runs "$LIST_RUNS" --net "$NET" \
    --json "$TMP/scale.json"
  echo "  ,\"scale\": $(cat "$TMP/scale.json")" >> "$JSON"
  local t0; t0=$EPOCHREALTIME
  dotnet "$BENCH_BIN/Hull.Daemon.Bench.dll" cleanup --socket "$SOCK"
  echo "  ,\"delete_all_s\": $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')" >> "$JSON"
}

case $MODE in
  latency) latency ;;
  scale) scale ;;
  all) latency; scale ;;
esac
echo "}" >> "$JSON"
echo "results: $JSON"
