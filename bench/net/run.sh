#!/usr/bin/env bash
# Networking cost: launch + first exec of a busybox container with the default network (a veth on a managed bridge,
# NAT, DNS) and without one (--no-profiles), interleaved with `podman run --rm` on Podman's default bridge network.
#   bench/net/run.sh            (as root, after `make build`; docs/networking.md)
# Environment:
#   ITER=30        iterations of each
#   OUT=DIR        where the bin dir is (default out/bin)
# It starts its own hulld (own socket and state dir in a temporary directory) whose default network has a name of its
# own, and on exit deletes every instance, the network (bridge, nft table, dnsmasq) and the temporary directory.
set -euo pipefail

ITER=${ITER:-30}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${OUT:-$REPO/out/bin}" && pwd)
RESULTS=$REPO/artifacts/bench

[ "$(id -u)" = 0 ] || { echo "bench/net/run.sh: run it as root" >&2; exit 1; }
for b in hull hulld hull-oci; do
  [ -e "$BIN/$b" ] || { echo "bench/net/run.sh: $BIN/$b is missing: run 'make build' first" >&2; exit 1; }
done
command -v podman >/dev/null || { echo "bench/net/run.sh: podman is missing: apt-get install podman" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench/net/run.sh: curl is missing: apt-get install curl" >&2; exit 1; }

TMP=$(mktemp -d /tmp/hull-nbench.XXXXXX)
chmod 711 "$TMP"
STATE=$TMP/state
SOCK=$TMP/hulld.sock
NET=hbn$(printf '%04x' $((RANDOM % 65536)))
export HULL_SOCKET=$SOCK HULL_DIR=$STATE HULL_HULLD=/bin/false HULL_DEFAULT_NETWORK=$NET
HULLD_PID=
P=(podman --runtime "$(command -v runc)" --root "$TMP/podman/root" --runroot "$TMP/podman/run" --tmpdir "$TMP/podman/tmp"
  --cgroup-manager cgroupfs --events-backend file)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  echo "cleaning up..." >&2
  if [ -n "$HULLD_PID" ] && kill -0 "$HULLD_PID" 2>/dev/null; then
    for i in $("$BIN/hull" list -f json 2>/dev/null | grep -o '"name":"[^"]*"' | cut -d'"' -f4); do
      "$BIN/hull" delete --force "$i" >/dev/null 2>&1
    done
    curl -s --unix-socket "$SOCK" -X PUT http://hull/1.0/profiles/default \
      -d '{"description":"Default profile","config":{},"devices":{}}' >/dev/null
    curl -s --unix-socket "$SOCK" -X DELETE "http://hull/1.0/networks/$NET" >/dev/null
    kill -TERM "$HULLD_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$HULLD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HULLD_PID" 2>/dev/null
  fi
  local mpid
  mpid=$(cat "$STATE/monitor.pid" 2>/dev/null || true)
  if [ -n "$mpid" ] && grep -q "$STATE" "/proc/$mpid/cmdline" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$mpid" 2>/dev/null
  fi
  findmnt -rn -o TARGET | grep "^$TMP/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  "${P[@]}" rm -af >/dev/null 2>&1
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$STATE" "$RESULTS"
setsid "$BIN/hulld" --socket "$SOCK" --state-dir "$STATE" > "$TMP/hulld.log" 2>&1 &
HULLD_PID=$!
for _ in $(seq 200); do [ -S "$SOCK" ] && "$BIN/hull" list >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN/hull" list >/dev/null || { echo "hulld did not start:" >&2; cat "$TMP/hulld.log" >&2; exit 1; }
"$BIN/hull" init busybox warmup >/dev/null && "$BIN/hull" delete warmup >/dev/null
curl -sf --unix-socket "$SOCK" "http://hull/1.0/networks/$NET" >/dev/null \
  || { echo "hulld made no default network $NET:" >&2; cat "$TMP/hulld.log" >&2; exit 1; }

rootfs=$(find "$STATE/images" -mindepth 2 -maxdepth 2 -type d -name rootfs | head -1)
cp -a "$rootfs" "$TMP/podman-rootfs"
PR=(run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --rootfs "$TMP/podman-rootfs" /bin/true)
"${P[@]}" "${PR[@]}" # warm-up (and Podman's default network), fail early if Podman cannot run here
"$BIN/hull" launch busybox w1 >/dev/null && "$BIN/hull" exec w1 -- true && "$BIN/hull" delete --force w1 >/dev/null

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b - a) * 1000}'; }
: > "$TMP/lat"
echo "net: $ITER iterations of hull launch+exec with the default network, without, and podman run --rm (bridge)" >&2
for ((i = 0; i < ITER; i++)); do
  t0=$EPOCHREALTIME
  "$BIN/hull" launch busybox "n$i" >/dev/null
  "$BIN/hull" exec "n$i" -- true
  t1=$EPOCHREALTIME
  "$BIN/hull" launch busybox "x$i" --no-profiles >/dev/null
  "$BIN/hull" exec "x$i" -- true
  t2=$EPOCHREALTIME
  "${P[@]}" "${PR[@]}"
  t3=$EPOCHREALTIME
  "$BIN/hull" delete --force "n$i" "x$i" >/dev/null
  echo "$(ms "$t0" "$t1") $(ms "$t1" "$t2") $(ms "$t2" "$t3")" >> "$TMP/lat"
done
net=$(awk '{print $1}' "$TMP/lat" | median)
nonet=$(awk '{print $2}' "$TMP/lat" | median)
podman=$(awk '{print $3}' "$TMP/lat" | median)
printf '\nlaunch + first exec, median of %d (ms):\n' "$ITER"
printf '  hull, default network (veth, NAT, DNS) %8.1f\n  hull, no network                       %8.1f\n' "$net" "$nonet"
printf '  podman run --rm (default bridge)       %8.1f\n' "$podman"
printf '  networking adds %.1f ms; hull with network / podman: %.2f\n' \
  "$(awk -v a="$net" -v b="$nonet" 'BEGIN {print a - b}')" "$(awk -v a="$net" -v b="$podman" 'BEGIN {print a / b}')"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
echo "{\"iter\": $ITER, \"hull_net_ms\": $net, \"hull_nonet_ms\": $nonet, \"podman_bridge_ms\": $podman, \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" \
  > "$RESULTS/net-$STAMP.json"
