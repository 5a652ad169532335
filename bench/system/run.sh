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

for mode in unprivileged privileged; do
  cfg=(); [ $mode = privileged ] && cfg=(-c security.privileged=true)
  $H init debian b1 "${cfg[@]}" > /dev/null
  boot=(); stop=(); restart=()
  for i in $(seq "$ITER"); do
    t0=$(now); $H start b1 > /dev/null; wait_running b1; t1=$(now); boot+=($((t1 - t0)))
    t0=$(now); $H restart b1 > /dev/null; wait_running b1; t1=$(now); restart+=($((t1 - t0)))
    t0=$(now); $H stop b1 > /dev/null; t1=$(now); stop+=($((t1 - t0)))
  done
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
  cg=$(awk -F: '$2=="memory"{print $3}' "/proc/$pid/cgroup")
  if [ -n "$cg" ]; then
    kb=$(awk '$1=="total_rss"||$1=="total_mapped_file"{s+=$2} END {print int(s/1024)}' "/sys/fs/cgroup/memory$cg/memory.stat")
  else
    cg=$(awk -F: '$1=="0"{print $3}' "/proc/$pid/cgroup")
    kb=$(awk '$1=="anon"||$1=="file_mapped"{s+=$2} END {print int(s/1024)}' "/sys/fs/cgroup$cg/memory.stat")
  fi
  total=$((total + kb))
done
echo "memory per idle container (rss+mapped, $N at once): $((total / N)) KiB"
