#!/usr/bin/env bash
# Hull vs runc vs crun on one busybox bundle, side by side in one run.
#
#   bench/run.sh [all|run|split|density]     (make bench runs "all"; needs root and 'make build')
#
# Environment: SECCOMP (default "profile": the spec's default seccomp profile; "none": no profile, as a
# 'runc spec' bundle), ITER (run and split iterations, default 100), N (density containers, default 1000),
# STEP (density reporting step, default 100), MIN_AVAIL_MIB (density stops starting containers when the host's
# MemAvailable falls below it, default 1024), TOOLS (default "hull runc crun"), OUT (JSON directory,
# default artifacts/bench).
#
# Every tool runs inside one private mount namespace whose cgroup2 mount (/sys/fs/cgroup/unified) is
# unmounted: crun refuses this host's hybrid cgroup layout otherwise. The same namespace is used for all
# tools, so no tool pays for a wrapper per call. Timing uses bash's $EPOCHREALTIME (no fork per sample).
set -euo pipefail

MODE=${1:-all}
case "$MODE" in all|run|split|density) ;; *) echo "usage: bench/run.sh [all|run|split|density]" >&2; exit 2 ;; esac
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ITER=${ITER:-100}
N=${N:-1000}
STEP=${STEP:-100}
MIN_AVAIL_MIB=${MIN_AVAIL_MIB:-1024}
TOOLS=${TOOLS:-"hull runc crun"}
OUT=${OUT:-$REPO/artifacts/bench}

if [ "$(id -u)" != 0 ]; then echo "bench/run.sh: run as root (containers need it)" >&2; exit 1; fi
HULL=$REPO/out/bin/hull-oci
[ -x "$HULL" ] || { echo "bench/run.sh: $HULL is missing: run 'make build' first" >&2; exit 1; }
for t in busybox unshare; do command -v $t >/dev/null || { echo "bench/run.sh: '$t' is not installed" >&2; exit 1; }; done

# Re-enter in a private mount namespace with the cgroup2 mount hidden (see the header).
if [ -z "${HULL_BENCH_INNER:-}" ]; then
  export HULL_BENCH_INNER=1
  exec unshare -m --propagation private "$0" "$@"
fi
if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then umount /sys/fs/cgroup/unified; fi

declare -A BIN=([hull]=$HULL [runc]=$(command -v runc || true) [crun]=$(command -v crun || true))
ACTIVE=()
for t in $TOOLS; do
  if [ -n "${BIN[$t]:-}" ] && [ -x "${BIN[$t]}" ]; then ACTIVE+=("$t"); else echo "note: $t is not installed, skipped" >&2; fi
done

WORK=$(mktemp -d /tmp/hull-bench.XXXXXX)
OLD_PID_MAX=$(cat /proc/sys/kernel/pid_max)
OLD_THREADS_MAX=$(cat /proc/sys/kernel/threads-max)

cleanup() {
  trap - EXIT INT TERM
  for t in "${ACTIVE[@]}"; do
    root=$WORK/state-$t
    [ -d "$root" ] || continue
    "${BIN[$t]}" --root "$root" list -q 2>/dev/null | xargs -r -P 2 -n 50 sh -c '
      bin=$0; root=$1; shift 2
      for id in "$@"; do "$bin" --root "$root" kill "$id" KILL >/dev/null 2>&1; "$bin" --root "$root" delete --force "$id" >/dev/null 2>&1; done
    ' "${BIN[$t]}" "$root" _ || true
  done
  echo "$OLD_PID_MAX" > /proc/sys/kernel/pid_max || true
  echo "$OLD_THREADS_MAX" > /proc/sys/kernel/threads-max || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "interrupted: cleaning up" >&2; exit 130' INT TERM

# Limits for the density run are raised here, for the benchmark only (restored at exit).
echo 4194304 > /proc/sys/kernel/pid_max
[ "$OLD_THREADS_MAX" -lt 200000 ] && echo 200000 > /proc/sys/kernel/threads-max
ulimit -n 65536 2>/dev/null || true

# The bundle: static busybox + applet links; config from 'hull-oci spec', no terminal, ociVersion 1.0.2
# (crun 1.8 refuses 1.2.0). The same bundle directory serves every tool.
BUNDLE=$WORK/bundle
mkdir -p "$BUNDLE/rootfs/bin"
cp "$(command -v busybox)" "$BUNDLE/rootfs/bin/busybox"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$BUNDLE/rootfs/bin/$a"; done
(cd "$BUNDLE" && "$HULL" spec && mv config.json "$WORK/config.template")
jq '.process.terminal = false | .ociVersion = "1.0.2"' "$WORK/config.template" > "$WORK/config.tmp" && mv "$WORK/config.tmp" "$WORK/config.template"
case "${SECCOMP:-profile}" in
  profile) ;;
  none) jq 'del(.linux.seccomp)' "$WORK/config.template" > "$WORK/config.tmp" && mv "$WORK/config.tmp" "$WORK/config.template" ;;
  *) echo "bench/run.sh: SECCOMP must be 'profile' or 'none'" >&2; exit 2 ;;
esac
echo "seccomp: ${SECCOMP:-profile}"
set_args() { # set_args JSON-ARRAY: the bundle's config.json with these process.args
  jq --argjson a "$1" '.process.args = $a' "$WORK/config.template" > "$BUNDLE/config.json"
}
for t in "${ACTIVE[@]}"; do mkdir -p "$WORK/state-$t"; done

rt() { local t=$1; shift; "${BIN[$t]}" --root "$WORK/state-$t" "$@"; }
now_us() { local r=${EPOCHREALTIME/./}; echo $((10#$r)); }

# stats FILE -> "median p90 mean min max" in ms (input: one value in µs per line)
stats() {
  sort -n "$1" | awk '{ v[NR] = $1; s += $1 } END {
    if (NR == 0) { print "0 0 0 0 0"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    p = int(NR * 0.9 + 0.999999); if (p < 1) p = 1; if (p > NR) p = NR
    printf "%.2f %.2f %.2f %.2f %.2f\n", m / 1000, v[p] / 1000, s / NR / 1000, v[1] / 1000, v[NR] / 1000 }'
}
median() { stats "$1" | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

wait_stopped() { # wait_stopped TOOL ID: polls state until the process has exited (not timed)
  local i
  for i in $(seq 1 500); do
    rt "$1" state "$2" 2>/dev/null | grep -q '"status": *"stopped"' && return 0
    sleep 0.01
  done
  echo "container $2 ($1) did not stop" >&2; return 1
}

JSON_PARTS=()
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "Hull OCI benchmark, $DATE, $(nproc) CPUs, kernel $(uname -r)"
for t in "${ACTIVE[@]}"; do printf '  %-5s %s\n' "$t" "$("${BIN[$t]}" --version 2>/dev/null | head -1 || echo "?")"; done

# --- run /bin/true -----------------------------------------------------------------------------------------------
bench_run() {
  set_args '["/bin/true"]'
  for t in "${ACTIVE[@]}"; do : > "$WORK/run-$t"; rt "$t" run --bundle "$BUNDLE" "warm-$t" </dev/null >/dev/null 2>&1 || true; rt "$t" delete --force "warm-$t" >/dev/null 2>&1 || true; done
  local i t s e
  for i in $(seq 1 "$ITER"); do
    for t in "${ACTIVE[@]}"; do # interleaved, so load from other work on the host hits every tool alike
      s=$(now_us)
      if ! rt "$t" run --bundle "$BUNDLE" "r$i" </dev/null >/dev/null 2>"$WORK/err"; then echo "$t run failed: $(cat "$WORK/err")" >&2; exit 1; fi
      e=$(now_us)
      echo $((e - s)) >> "$WORK/run-$t"
      rt "$t" delete --force "r$i" >/dev/null 2>&1 || true
    done
  done
  echo
  echo "run /bin/true: $ITER iterations, wall clock of '<tool> run' (ms)"
  printf '  %-5s %8s %8s %8s %8s %8s\n' tool median p90 mean min max
  local parts=()
  for t in "${ACTIVE[@]}"; do
    read -r med p90 mean min max < <(stats "$WORK/run-$t")
    printf '  %-5s %8s %8s %8s %8s %8s\n' "$t" "$med" "$p90" "$mean" "$min" "$max"
    parts+=("\"$t\": {\"median_ms\": $med, \"p90_ms\": $p90, \"mean_ms\": $mean, \"min_ms\": $min, \"max_ms\": $max}")
  done
  local ratios=()
  for o in runc crun; do
    if [ -s "$WORK/run-hull" ] && [ -s "$WORK/run-$o" ] 2>/dev/null; then
      r=$(ratio "$(median "$WORK/run-hull")" "$(median "$WORK/run-$o")")
      echo "  hull/$o (median): $r"
      ratios+=("\"hull_over_$o\": $r")
    fi
  done
  JSON_PARTS+=("\"run_true\": {\"iterations\": $ITER, $(IFS=,; echo "${parts[*]}")$( [ ${#ratios[@]} -gt 0 ] && echo ", $(IFS=,; echo "${ratios[*]}")")}")
}

# --- create / start / delete ---------------------------------------------------------------------------------------
bench_split() {
  set_args '["/bin/true"]'
  local i t s e
  for t in "${ACTIVE[@]}"; do : > "$WORK/create-$t"; : > "$WORK/start-$t"; : > "$WORK/delete-$t"; done
  for i in $(seq 1 "$ITER"); do
    for t in "${ACTIVE[@]}"; do
      s=$(now_us); rt "$t" create --bundle "$BUNDLE" "s$i" </dev/null >/dev/null 2>"$WORK/err" || { echo "$t create failed: $(cat "$WORK/err")" >&2; exit 1; }; e=$(now_us)
      echo $((e - s)) >> "$WORK/create-$t"
      s=$(now_us); rt "$t" start "s$i" >/dev/null 2>"$WORK/err" || { echo "$t start failed: $(cat "$WORK/err")" >&2; exit 1; }; e=$(now_us)
      echo $((e - s)) >> "$WORK/start-$t"
      wait_stopped "$t" "s$i"
      s=$(now_us); rt "$t" delete "s$i" >/dev/null 2>"$WORK/err" || { echo "$t delete failed: $(cat "$WORK/err")" >&2; exit 1; }; e=$(now_us)
      echo $((e - s)) >> "$WORK/delete-$t"
    done
  done
  echo
  echo "create / start / delete of a /bin/true container: $ITER iterations, median (p90) in ms"
  printf '  %-5s %16s %16s %16s\n' tool create start delete
  local parts=()
  for t in "${ACTIVE[@]}"; do
    local row=() js=()
    for phase in create start delete; do
      read -r med p90 _ _ _ < <(stats "$WORK/$phase-$t")
      row+=("$med ($p90)"); js+=("\"$phase\": {\"median_ms\": $med, \"p90_ms\": $p90}")
    done
    printf '  %-5s %16s %16s %16s\n' "$t" "${row[0]}" "${row[1]}" "${row[2]}"
    parts+=("\"$t\": {$(IFS=,; echo "${js[*]}")}")
  done
  JSON_PARTS+=("\"create_start_delete\": {\"iterations\": $ITER, $(IFS=,; echo "${parts[*]}")}")
}

# --- density --------------------------------------------------------------------------------------------------------
mem_used_kib() { awk '/^MemTotal:/ { t = $2 } /^MemAvailable:/ { a = $2 } END { print t - a }' /proc/meminfo; }
# unreclaimable kernel memory (namespaces, mounts, tasks, page tables, and the per-CPU statistics of memory cgroups):
# less disturbed by other work than MemAvailable
kmem_kib() { awk '/^SUnreclaim:|^KernelStack:|^PageTables:|^Percpu:/ { s += $2 } END { print s }' /proc/meminfo; }
container_pids() { rt "$1" list --format json 2>/dev/null | busybox tr ',' '\n' | busybox sed -n 's/.*"pid": *\([0-9]*\).*/\1/p'; }
memcg_user_kib() { # pages (anonymous, file, shmem) charged to the containers' memory cgroups, summed
  local t=$1 total=0 pid cg f v
  for pid in $(container_pids "$t"); do
    [ "$pid" -gt 0 ] 2>/dev/null || continue
    cg=$(awk -F: '$2 == "memory" { print $3 }' "/proc/$pid/cgroup" 2>/dev/null)
    if [ -n "$cg" ] && [ -f "/sys/fs/cgroup/memory$cg/memory.stat" ]; then
      v=$(awk '$1 == "rss" || $1 == "cache" { s += $2 } END { print int(s / 1024) }' "/sys/fs/cgroup/memory$cg/memory.stat")
    else
      cg=$(awk -F: '$1 == "0" { print $3 }' "/proc/$pid/cgroup" 2>/dev/null); f=/sys/fs/cgroup$cg/memory.stat
      v=$( [ -f "$f" ] && awk '$1 == "anon" || $1 == "file" { s += $2 } END { print int(s / 1024) }' "$f" || echo 0)
    fi
    total=$((total + ${v:-0}))
  done
  echo $total
}
pss_sum_kib() { # PSS of the containers' processes (their init pids from state)
  local t=$1 total=0 pid v
  for pid in $(container_pids "$t"); do
    [ "$pid" -gt 0 ] 2>/dev/null || continue
    v=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo $total
}
delete_all() { # delete_all TOOL: kills and deletes every container of the tool (2 in parallel)
  local t=$1
  rt "$t" list -q 2>/dev/null | xargs -r -P 2 -n 50 sh -c '
    bin=$0; root=$1; shift 2
    for id in "$@"; do "$bin" --root "$root" kill "$id" KILL >/dev/null 2>&1; "$bin" --root "$root" delete --force "$id" >/dev/null 2>&1; done
  ' "${BIN[$t]}" "$WORK/state-$t" _ || true
}

bench_density() {
  set_args '["sleep", "1000000"]'
  local t i s e parts=()
  echo
  echo "density: $N containers running 'sleep', started one after another (create + start each)"
  for t in "${ACTIVE[@]}"; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    sleep 1
    local before kbefore; before=$(mem_used_kib); kbefore=$(kmem_kib)
    : > "$WORK/dens-$t"
    local t0; t0=$(now_us)
    for i in $(seq 1 "$N"); do
      # Stop before the host runs out of memory (no swap here: the OOM killer would pick any process).
      if (( i % 100 == 0 )) && (( $(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo) < MIN_AVAIL_MIB )); then
        echo "  $t: stopping after $((i - 1)) containers: MemAvailable fell below ${MIN_AVAIL_MIB} MiB" >&2
        break
      fi
      s=$(now_us)
      rt "$t" create --bundle "$BUNDLE" "d$i" </dev/null >/dev/null 2>"$WORK/err" || { echo "$t create #$i failed: $(cat "$WORK/err")" >&2; break; }
      rt "$t" start "d$i" >/dev/null 2>"$WORK/err" || { echo "$t start #$i failed: $(cat "$WORK/err")" >&2; break; }
      e=$(now_us)
      echo $((e - s)) >> "$WORK/dens-$t"
    done
    local total_s; total_s=$(awk -v a="$t0" -v b="$(now_us)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
    local started; started=$(wc -l < "$WORK/dens-$t")
    sleep 2
    local after kafter; after=$(mem_used_kib); kafter=$(kmem_kib)
    local pss; pss=$(pss_sum_kib "$t")
    local ucg; ucg=$(memcg_user_kib "$t")
    local per_mem per_pss per_k per_u per_host
    per_k=$(awk -v a="$kafter" -v b="$kbefore" -v n="$started" 'BEGIN { if (n > 0) printf "%.0f", (a - b) / n; else print 0 }')
    per_mem=$(awk -v a="$after" -v b="$before" -v n="$started" 'BEGIN { if (n > 0) printf "%.0f", (a - b) / n; else print 0 }')
    per_pss=$(awk -v p="$pss" -v n="$started" 'BEGIN { if (n > 0) printf "%.0f", p / n; else print 0 }')
    per_u=$(awk -v p="$ucg" -v n="$started" 'BEGIN { if (n > 0) printf "%.0f", p / n; else print 0 }')
    per_host=$((per_k + per_u))
    echo "  $t: $started started in ${total_s}s; host memory per container $per_host KiB = kernel (SUnreclaim+KernelStack+PageTables+Percpu) $per_k KiB + pages charged to its memory cgroup $per_u KiB; PSS of the containers' processes $per_pss KiB each; MemTotal-MemAvailable +$(( (after - before) / 1024 )) MiB = $per_mem KiB per container (disturbed by any other work on the host)"
    printf '    %8s %12s %12s\n' running "median ms" "p90 ms"
    local steps=() k
    for ((k = STEP; k <= started; k += STEP)); do
      sed -n "$((k - STEP + 1)),${k}p" "$WORK/dens-$t" > "$WORK/win"
      read -r med p90 _ _ _ < <(stats "$WORK/win")
      printf '    %8d %12s %12s\n' "$k" "$med" "$p90"
      steps+=("{\"running\": $k, \"median_ms\": $med, \"p90_ms\": $p90}")
    done
    local first last growth="n/a"
    if [ ${#steps[@]} -ge 2 ]; then
      first=$(sed -n "1,${STEP}p" "$WORK/dens-$t" > "$WORK/win" && median "$WORK/win")
      last=$(sed -n "$((started - STEP + 1)),${started}p" "$WORK/dens-$t" > "$WORK/win" && median "$WORK/win")
      growth=$(ratio "$last" "$first")
      echo "    per-start growth, last $STEP vs first $STEP: ${growth}x"
    fi
    parts+=("\"$t\": {\"started\": $started, \"seconds\": $total_s, \"mem_used_kib_per_container\": $per_mem, \"kernel_kib_per_container\": $per_k, \"memcg_user_kib_per_container\": $per_u, \"host_kib_per_container\": $per_host, \"pss_kib_per_container\": $per_pss, \"growth_last_over_first\": \"$growth\", \"steps\": [$(IFS=,; echo "${steps[*]}")]}")
    s=$(now_us); delete_all "$t"; e=$(now_us)
    echo "    deleted all in $(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')s"
  done
  JSON_PARTS+=("\"density\": {\"n\": $N, \"step\": $STEP, $(IFS=,; echo "${parts[*]}")}")
}

case "$MODE" in
  all) bench_run; bench_split; bench_density ;;
  run) bench_run ;;
  split) bench_split ;;
  density) bench_density ;;
esac

mkdir -p "$OUT"
json="$OUT/bench-$(date -u +%Y%m%dT%H%M%SZ).json"
{
  echo "{\"date\": \"$DATE\", \"mode\": \"$MODE\", \"cpus\": $(nproc), \"kernel\": \"$(uname -r)\", \"tools\": \"${ACTIVE[*]}\","
  echo "$(IFS=,; echo "${JSON_PARTS[*]}")}"
} > "$json"
echo
echo "results: $json"
