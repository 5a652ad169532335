#!/usr/bin/env bash
# Full-OS containers: boot to `systemctl is-system-running` = running, stop, restart, and host memory per idle
# Debian 12 systemd container, unprivileged (default) and privileged.
#
#   bench/system/run.sh        (root; needs out/bin from 'make build' and debootstrap; ITER runs each, default 10)
#
# The image is scripts/debian-rootfs.sh's (cached; the first run builds it: ~1.5 min). A private hulld on a temp
# state dir. boot = from `hull launch`/`hull start` until `systemctl is-system-running --wait` answers running
# (polled through exec, 20 ms apart: the figure includes one exec, ~30 ms); stop = `hull stop`; restart =
# `hull restart` until running again. Memory: the container's memory cgroup (usage without page cache, v1
# memory.stat rss+mapped_file / v2 anon) 5 s after boot, averaged over N containers at once (N default 10).
#
# Side by side with LXD (the Debian package lxd, 5.0.2) on the same rootfs, when `lxc info` answers (LXD=0 skips it):
# set LXD up by hand first (`lxd --group root &`, `lxd init --preseed` with a dir pool, no network and
# images.auto_update_interval "0", so that LXD reaches nothing outside this host; see
# docs/benchmarks.md) and stop it afterwards. The rootfs is imported into LXD with a metadata.yaml (alias hull-bench,
# deleted at the end); LXD's containers are unprivileged (its default), measured the same way (polled through
# `lxc exec`), and the ratios Hull/LXD are printed last (below 1: Hull is faster or smaller).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ITER=${ITER:-10}
N=${N:-10}
[ "$(id -u)" = 0 ] || { echo "bench/system/run.sh: run as root" >&2; exit 1; }
for b in hull hulld hull-oci; do [ -x "$REPO/out/bin/$b" ] || { echo "bench/system/run.sh: out/bin/$b missing: make build" >&2; exit 1; }; done
TAR=$("$REPO/scripts/debian-rootfs.sh" systemd)
T=$(mktemp -d /tmp/hull-sysbench.XXXXXX)
chmod 711 "$T"
export HULL_SOCKET=$T/hulld.sock HULL_DIR=$T/state HULL_DEFAULT_NETWORK=none # no network: bench/net measures it
H=$REPO/out/bin/hull
"$REPO/out/bin/hulld" --socket "$HULL_SOCKET" --state-dir "$HULL_DIR" > "$T/hulld.log" 2>&1 &
HULLD=$!
cleanup() {
  for i in $($H list -f json 2>/dev/null | jq -r '.[].name' 2>/dev/null); do $H delete --force "$i" >/dev/null 2>&1 || true; done
  kill "$HULLD" 2>/dev/null || true; wait "$HULLD" 2>/dev/null || true
  [ -f "$HULL_DIR/monitor.pid" ] && kill "$(cat "$HULL_DIR/monitor.pid")" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$HULL_SOCKET" ] && break; sleep 0.05; done
$H image import "$TAR" --alias debian > /dev/null

now() { echo "${EPOCHREALTIME/./}"; }   # microseconds
wait_running() {
  local s
  while :; do
    s=$($H exec "$1" -- systemctl is-system-running 2>/dev/null || true)
    case "$s" in running) return 0 ;; degraded) echo "bench: $1 is degraded" >&2; return 0 ;; esac
    sleep 0.02
  done
}
stats() { sort -n | awk '{a[NR]=$1; s+=$1} END {printf "median %.3f s, mean %.3f s, min %.3f s, max %.3f s (n=%d)", a[int((NR+1)/2)]/1e6, s/NR/1e6, a[1]/1e6, a[NR]/1e6, NR}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A MED   # "<who> <what>" -> median in microseconds (memory: KiB)
# The container's memory without page cache (KiB), from the memory cgroup of its init.
memory_of() {
  local pid=$1 cg kb
  # The container's cgroup, not its init's init.scope (where systemd moves itself when it may).
  cg=$(awk -F: '$2=="memory"{sub(/\/init\.scope$/, "", $3); print $3}' "/proc/$pid/cgroup")
  if [ -n "$cg" ]; then
    kb=$(awk '$1=="total_rss"||$1=="total_mapped_file"{s+=$2} END {print int(s/1024)}' "/sys/fs/cgroup/memory$cg/memory.stat")
  else
    cg=$(awk -F: '$1=="0"{sub(/\/init\.scope$/, "", $3); print $3}' "/proc/$pid/cgroup")
    kb=$(awk '$1=="anon"||$1=="file_mapped"{s+=$2} END {print int(s/1024)}' "/sys/fs/cgroup$cg/memory.stat")
  fi
  echo "$kb"
}

for mode in unprivileged privileged; do
  cfg=(); [ $mode = privileged ] && cfg=(-c security.privileged=true)
  $H init debian b1 "${cfg[@]}" > /dev/null
  boot=(); stop=(); restart=()
  for i in $(seq "$ITER"); do
    t0=$(now); $H start b1 > /dev/null; wait_running b1; t1=$(now); boot+=($((t1 - t0)))
    t0=$(now); $H restart b1 > /dev/null; wait_running b1; t1=$(now); restart+=($((t1 - t0)))
    t0=$(now); $H stop b1 > /dev/null; t1=$(now); stop+=($((t1 - t0)))
  done
  MED["$mode boot"]=$(printf '%s\n' "${boot[@]}" | median)
  MED["$mode stop"]=$(printf '%s\n' "${stop[@]}" | median)
  MED["$mode restart"]=$(printf '%s\n' "${restart[@]}" | median)
  echo "$mode boot to running: $(printf '%s\n' "${boot[@]}" | stats)"
  echo "$mode stop:            $(printf '%s\n' "${stop[@]}" | stats)"
  echo "$mode restart:         $(printf '%s\n' "${restart[@]}" | stats)"
  $H delete b1 > /dev/null
done

# Memory: N idle unprivileged containers at once.
for i in $(seq "$N"); do $H launch debian "m$i" > /dev/null; done
for i in $(seq "$N"); do wait_running "m$i"; done
sleep 5
total=0
for i in $(seq "$N"); do
  pid=$($H list -f json | jq -r ".[] | select(.name==\"m$i\") | .pid")
  total=$((total + $(memory_of "$pid")))
done
MED["unprivileged memory"]=$((total / N))
echo "memory per idle container (rss+mapped, $N at once): $((total / N)) KiB"
for i in $(seq "$N"); do $H delete --force "m$i" > /dev/null; done

[ "${LXD:-1}" = 0 ] && exit 0
if ! lxc info > /dev/null 2>&1; then echo "LXD: not running (lxc info fails): no comparison"; exit 0; fi
lxd_running() {
  local s
  while :; do
    s=$(lxc exec "$1" -- systemctl is-system-running 2>/dev/null || true)
    case "$s" in running) return 0 ;; degraded) echo "bench: LXD's $1 is degraded" >&2; return 0 ;; esac
    sleep 0.02
  done
}
lxd_cleanup() {
  for c in $(lxc list -c n -f csv 2>/dev/null | grep '^hb-'); do lxc delete --force "$c" > /dev/null 2>&1 || true; done
  lxc image delete hull-bench > /dev/null 2>&1 || true
}
trap 'lxd_cleanup; cleanup' EXIT
printf 'architecture: x86_64\ncreation_date: %s\nproperties:\n  os: Debian\n  release: bookworm\n' "$(date +%s)" \
  > "$T/metadata.yaml"
tar -C "$T" -cf "$T/meta.tar" metadata.yaml
lxc image import "$T/meta.tar" "$TAR" --alias hull-bench > /dev/null
lxc init hull-bench hb-1 > /dev/null
boot=(); stop=(); restart=()
for i in $(seq "$ITER"); do
  t0=$(now); lxc start hb-1 > /dev/null; lxd_running hb-1; t1=$(now); boot+=($((t1 - t0)))
  t0=$(now); lxc restart hb-1 > /dev/null; lxd_running hb-1; t1=$(now); restart+=($((t1 - t0)))
  t0=$(now); lxc stop hb-1 > /dev/null; t1=$(now); stop+=($((t1 - t0)))
done
MED["lxd boot"]=$(printf '%s\n' "${boot[@]}" | median)
MED["lxd stop"]=$(printf '%s\n' "${stop[@]}" | median)
MED["lxd restart"]=$(printf '%s\n' "${restart[@]}" | median)
echo "LXD boot to running: $(printf '%s\n' "${boot[@]}" | stats)"
echo "LXD stop:            $(printf '%s\n' "${stop[@]}" | stats)"
echo "LXD restart:         $(printf '%s\n' "${restart[@]}" | stats)"
lxc delete hb-1 > /dev/null
# (its "no network attached" notice on stderr is expected: LXD runs without a network here)
for i in $(seq "$N"); do lxc launch hull-bench "hb-m$i" > /dev/null 2> "$T/lxc.err" || { cat "$T/lxc.err" >&2; exit 1; }; done
for i in $(seq "$N"); do lxd_running "hb-m$i"; done
sleep 5
total=0
for i in $(seq "$N"); do
  pid=$(lxc query "/1.0/instances/hb-m$i/state" | jq -r .pid)
  total=$((total + $(memory_of "$pid")))
done
MED["lxd memory"]=$((total / N))
echo "LXD memory per idle container (rss+mapped, $N at once): $((total / N)) KiB"
echo "ratios (median Hull / median LXD; goal: boot and stop <= 0.5, memory <= 1):"
for mode in unprivileged privileged; do
  for what in boot stop restart; do
    awk -v h="${MED[$mode $what]}" -v l="${MED[lxd $what]}" -v m="$mode" -v w="$what" \
      'BEGIN {printf "  %-13s %-8s %.2f (%.3f s vs %.3f s)\n", m, w, h/l, h/1e6, l/1e6}'
  done
done
awk -v h="${MED[unprivileged memory]}" -v l="${MED[lxd memory]}" \
  'BEGIN {printf "  %-13s %-8s %.2f (%d KiB vs %d KiB)\n", "unprivileged", "memory", h/l, h, l}'
