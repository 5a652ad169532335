#!/usr/bin/env bash
# Hull's main job on the built-in default: a busybox container (the host's busybox-static as its rootfs),
# run with hull-oci in its own namespaces and cgroup, then a longer-lived one with exec, pause and resume.
set -euo pipefail
cd "$(dirname "$0")/.."
HULL_OCI=${HULL_OCI:-$PWD/out/bin/hull-oci}
work=$(mktemp -d /tmp/hull-demo.XXXXXX)
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
echo "done"
