#!/usr/bin/env bash
# Hull's main job on the built-in default: a busybox container (the host's busybox-static as its rootfs),
# run with hull-oci in its own namespaces and cgroup, then a longer-lived one with exec, pause and resume.
set -euo pipefail
cd "$(dirname "$0")/.."
HULL_OCI=${HULL_OCI:-$PWD/out/bin/hull-oci}
HULL=${HULL:-$PWD/out/bin/hull}
work=$(mktemp -d /tmp/hull-demo.XXXXXX)
chmod 711 "$work" # unprivileged instances (another host uid) pass through to their rootfs
root="$work/state"
trap '"$HULL_OCI" --root "$root" delete --force demo-sleeper >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# The rootfs: busybox-static and its applets.
mkdir -p "$work/bundle/rootfs"/{bin,proc,sys,dev,etc,tmp,root}
cp /bin/busybox "$work/bundle/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/bundle/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/bundle/rootfs/etc/passwd"

cd "$work/bundle"
"$HULL_OCI" spec
# Not a terminal here, and a command that shows where it runs.
sed -i 's/"terminal": true/"terminal": false/; s/"readonly": true/"readonly": false/' config.json
cat > rootfs/bin/hello <<'SH'
#!/bin/sh
echo "hello from $(hostname): pid $$, uid $(id -u), $(wc -l < /proc/self/mounts) mounts"
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
SH
chmod +x rootfs/bin/hello
sed -i 's|"sh"$|"hello"|' config.json

echo "== hull-oci run (one-shot container)"
time "$HULL_OCI" --root "$root" run demo-oneshot

echo
echo "== a long-lived container: create, start, exec, pause, resume, delete"
sed -i 's|"hello"$|"sleep", "3600"|' config.json
"$HULL_OCI" --root "$root" create demo-sleeper
"$HULL_OCI" --root "$root" start demo-sleeper
"$HULL_OCI" --root "$root" list
"$HULL_OCI" --root "$root" exec demo-sleeper sh -c 'echo exec: pid $$ sees $(ps | wc -l) lines of ps'
"$HULL_OCI" --root "$root" pause demo-sleeper
"$HULL_OCI" --root "$root" state demo-sleeper | grep status
"$HULL_OCI" --root "$root" resume demo-sleeper
"$HULL_OCI" --root "$root" delete --force demo-sleeper

# Part two: hulld, a container and a VM side by side from the built-in image on a network of their own, each
# serving HTTP on a published port of the host. A state dir, socket and network of the demo's own: a hulld already
# running on this host is not touched.
echo
echo "== hulld: a container and a VM (QEMU; TCG where KVM cannot boot a stock kernel), each on a published port"
export HULL_DIR="$work/hulld" HULL_SOCKET="$work/hulld.sock" HULL_DEFAULT_NETWORK=none
cleanup_hulld() {
  "$HULL" delete --force demo-c demo-v >/dev/null 2>&1 || true
  "$HULL" network delete hulldemo0 >/dev/null 2>&1 || true
  pkill -f -- "hulld --socket $HULL_SOCKET" 2>/dev/null || true # its container monitor then exits by itself
}
trap 'cleanup_hulld; "$HULL_OCI" --root "$root" delete --force demo-sleeper >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"$HULL" network create hulldemo0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])'; }
pc=$(free_port); pv=$(free_port)
ms() { date +%s%N; }
t0=$(ms); "$HULL" launch busybox demo-c -n hulldemo0 -p "$pc:80" -- /bin/sh -c \
  'mkdir -p /www && echo "hello from container $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'
tc=$(( ($(ms) - t0) / 1000000 ))
t0=$(ms); "$HULL" launch busybox demo-v -n hulldemo0 --vm -c limits.memory=256MiB -p "$pv:80"
tv=$(( ($(ms) - t0) / 1000000 ))
"$HULL" exec demo-v -- /bin/sh -c \
  'mkdir -p /tmp/www && echo "hello from VM $(hostname)" > /tmp/www/index.html && httpd -p 80 -h /tmp/www'
echo
"$HULL" list
echo
for p in "$pc" "$pv"; do
  printf 'GET http://127.0.0.1:%s/ -> ' "$p"
  ok=
  for _ in $(seq 50); do busybox wget -q -O - "http://127.0.0.1:$p/" 2>/dev/null && { ok=1; break; }; sleep 0.2; done
  [ -n "$ok" ] || echo "(no answer)"
done
mem() { "$HULL" info "$1" | sed -n 's/^  Memory: //p'; }
echo
printf '%-8s %-10s %12s %12s\n' NAME TYPE "START (ms)" MEMORY
printf '%-8s %-10s %12s %12s\n' demo-c container "$tc" "$(mem demo-c)"
printf '%-8s %-10s %12s %12s\n' demo-v vm "$tv" "$(mem demo-v)"
echo "done"
