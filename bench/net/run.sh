#!/usr/bin/env bash
# Networking, Hull side by side with Podman's default bridge network (runc), as root after `make build`
# (docs/networking.md):
#   bench/net/run.sh [latency]  launch + first exec of a busybox container with the default network (a veth on a
#                               managed bridge, NAT, DNS) and without one (--no-profiles), interleaved with
#                               `podman run --rm`
#   bench/net/run.sh throughput iperf3 TCP throughput host->container and container->container, and the host's ping
#                               round trip to a container; the same iperf3 binary in both (Hull's host image, a
#                               Podman rootfs of /usr/bin/iperf3 and its libraries), rounds interleaved, medians
#   bench/net/run.sh vm         a VM (QEMU; TCG where KVM cannot run a stock kernel) next to a container on the same
#                               network: HTTP download of 32 MiB from busybox httpd in each by the host (curl) and
#                               the host's ping round trip to each, rounds interleaved, medians
#   bench/net/run.sh all        all three
# Environment:
#   ITER=30        iterations of each (latency)
#   ROUNDS=5       rounds of each (throughput), SECONDS_PER=5 seconds of iperf3 per round
#   OUT=DIR        where the bin dir is (default out/bin)
# It starts its own hulld (own socket and state dir in a temporary directory) whose default network has a name of its
# own, and on exit deletes every instance, the network (bridge, nft table, dnsmasq) and the temporary directory.
set -euo pipefail

MODE=${1:-latency}
case "$MODE" in latency|throughput|vm|all) ;; *) echo "usage: bench/net/run.sh [latency|throughput|vm|all]" >&2; exit 2;; esac
ITER=${ITER:-30}
ROUNDS=${ROUNDS:-5}
SECONDS_PER=${SECONDS_PER:-5}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${OUT:-$REPO/out/bin}" && pwd)
RESULTS=$REPO/artifacts/bench

[ "$(id -u)" = 0 ] || { echo "bench/net/run.sh: run it as root" >&2; exit 1; }
for b in hull hulld hull-oci; do
  [ -e "$BIN/$b" ] || { echo "bench/net/run.sh: $BIN/$b is missing: run 'make build' first" >&2; exit 1; }
done
command -v podman >/dev/null || { echo "bench/net/run.sh: podman is missing: apt-get install podman" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench/net/run.sh: curl is missing: apt-get install curl" >&2; exit 1; }
for t in iperf3 jq; do
  command -v $t >/dev/null || { echo "bench/net/run.sh: $t is missing: apt-get install $t" >&2; exit 1; }
done

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
latency() {
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
}

# iperf3's received throughput in Gbit/s from its JSON report.
gbits() { jq -r '.end.sum_received.bits_per_second / 1e9' | awk '{printf "%.2f", $1}'; }
# The average round trip in ms of 50 pings (busybox's ping: no other is needed on the host).
rtt() { busybox ping -q -c 50 -i 0.02 "$1" | sed -n 's|.*min/avg/max = [0-9.]*/\([0-9.]*\)/.*|\1|p'; }

throughput() {
  local libs ips pips r a b c d e f
  # The same iperf3 for Podman: its binary and libraries in a rootfs of their own.
  mkdir -p "$TMP/iperf-rootfs/usr/bin" "$TMP/iperf-rootfs/tmp"
  cp /usr/bin/iperf3 "$TMP/iperf-rootfs/usr/bin/"
  libs=$(ldd /usr/bin/iperf3 | grep -o '/[^ ]*')
  for l in $libs; do mkdir -p "$TMP/iperf-rootfs$(dirname "$l")"; cp -L "$l" "$TMP/iperf-rootfs$l"; done
  "$BIN/hull" launch host ips -- iperf3 -s >/dev/null
  "$BIN/hull" launch host ipc -- sleep 100000 >/dev/null
  ips=$("$BIN/hull" list -f json | jq -r '.[] | select(.name == "ips") | .config["volatile.eth0.ipv4.address"]')
  "${P[@]}" run -d --name ips --rootfs "$TMP/iperf-rootfs" /usr/bin/iperf3 -s >/dev/null
  pips=$("${P[@]}" inspect -f '{{.NetworkSettings.IPAddress}}' ips)
  echo "throughput: hull server $ips, podman server $pips; $ROUNDS rounds of ${SECONDS_PER}s" >&2
  sleep 1
  : > "$TMP/tp"
  for ((r = 0; r < ROUNDS; r++)); do
    a=$(iperf3 -J -t "$SECONDS_PER" -c "$ips" | gbits)
    b=$(iperf3 -J -t "$SECONDS_PER" -c "$pips" | gbits)
    c=$("$BIN/hull" exec ipc -- iperf3 -J -t "$SECONDS_PER" -c "$ips" | gbits)
    d=$("${P[@]}" run --rm --rootfs "$TMP/iperf-rootfs" /usr/bin/iperf3 -J -t "$SECONDS_PER" -c "$pips" | gbits)
    e=$(rtt "$ips")
    f=$(rtt "$pips")
    echo "$a $b $c $d $e $f" >> "$TMP/tp"
    echo "  round $r: host->c $a / $b Gbit/s, c->c $c / $d Gbit/s, ping $e / $f ms (hull / podman)" >&2
  done
  col() { awk -v k="$1" '{print $k}' "$TMP/tp" | median; }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
  printf '\nthroughput and latency, median of %d rounds:            hull     podman   hull/podman\n' "$ROUNDS"
  printf '  host -> container TCP (iperf3, Gbit/s)          %8.2f   %8.2f   %8s\n' "$(col 1)" "$(col 2)" \
    "$(ratio "$(col 1)" "$(col 2)")"
  printf '  container -> container TCP (iperf3, Gbit/s)     %8.2f   %8.2f   %8s\n' "$(col 3)" "$(col 4)" \
    "$(ratio "$(col 3)" "$(col 4)")"
  printf '  host -> container ping round trip (ms)          %8.3f   %8.3f   %8s\n' "$(col 5)" "$(col 6)" \
    "$(ratio "$(col 5)" "$(col 6)")"
  echo "{\"rounds\": $ROUNDS, \"seconds\": $SECONDS_PER, \"host_to_c_gbit\": [$(col 1), $(col 2)], \"c_to_c_gbit\": [$(col 3), $(col 4)], \"rtt_ms\": [$(col 5), $(col 6)], \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" \
    > "$RESULTS/net-throughput-$(date -u +%Y%m%dT%H%M%SZ).json"
  "${P[@]}" rm -f ips >/dev/null
  "$BIN/hull" delete --force ips ipc >/dev/null
}

# The address hulld keeps for an instance's eth0.
addr_of() { "$BIN/hull" list -f json | jq -r --arg n "$1" '.[] | select(.name == $n) | .config["volatile.eth0.ipv4.address"]'; }
# curl's download speed of URL in Gbit/s.
download() { curl -sf -o /dev/null -w '%{speed_download}' "$1" | awk '{printf "%.3f", $1 * 8 / 1e9}'; }

vm() {
  local vip cip r a b c d got=""
  local serve='dd if=/dev/zero of=/tmp/big bs=1M count=32 2>/dev/null && httpd -p 8080 -h /tmp'
  "$BIN/hull" launch busybox v1 --vm -c limits.memory=256MiB >/dev/null
  "$BIN/hull" launch busybox c1 -- sh -c "$serve; sleep 100000" >/dev/null
  vip=$(addr_of v1); cip=$(addr_of c1)
  for _ in $(seq 300); do
    got=$("$BIN/hull" exec v1 -- ip -4 addr show eth0 2>/dev/null || true)
    [[ $got == *"inet $vip/"* ]] && break; sleep 0.2
  done
  [[ $got == *"inet $vip/"* ]] || { echo "the VM did not get $vip by DHCP: $got" >&2; exit 1; }
  "$BIN/hull" exec v1 -- sh -c "$serve"
  echo "vm: VM $vip, container $cip; $ROUNDS rounds" >&2
  : > "$TMP/vm"
  for ((r = 0; r < ROUNDS; r++)); do
    a=$(download "http://$vip:8080/big"); b=$(download "http://$cip:8080/big")
    c=$(rtt "$vip"); d=$(rtt "$cip")
    echo "$a $b $c $d" >> "$TMP/vm"
    echo "  round $r: VM->host $a / $b Gbit/s, ping $c / $d ms (vm / container)" >&2
  done
  col() { awk -v k="$1" '{print $k}' "$TMP/vm" | median; }
  local accel=TCG
  tr '\0' ' ' < "/proc/$(pgrep -f "qemu-system.*$TMP" | head -1)/cmdline" | grep -q -- '-accel kvm' && accel=KVM
  printf '\nVM (%s) and container on one network, median of %d rounds:     vm     container\n' "$accel" "$ROUNDS"
  printf '  HTTP download by the host, 32 MiB (Gbit/s)                %8.3f   %8.3f\n' "$(col 1)" "$(col 2)"
  printf '  host ping round trip (ms)                                 %8.3f   %8.3f\n' "$(col 3)" "$(col 4)"
  echo "{\"rounds\": $ROUNDS, \"download_gbit\": [$(col 1), $(col 2)], \"rtt_ms\": [$(col 3), $(col 4)], \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" \
    > "$RESULTS/net-vm-$(date -u +%Y%m%dT%H%M%SZ).json"
  "$BIN/hull" delete --force v1 c1 >/dev/null
}

case "$MODE" in
  latency) latency ;;
  throughput) throughput ;;
  vm) vm ;;
  all) latency; throughput; vm ;;
esac
