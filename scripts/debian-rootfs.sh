#!/usr/bin/env bash
# Prints the path of a Debian 12 (bookworm) system-container image: a rootfs tarball with systemd as /sbin/init,
# made with debootstrap from the Debian mirror apt on this machine uses and cached in $HULL_TEST_CACHE
# (default /var/cache/hull-tests). The first run downloads and unpacks ~100 MB of packages (about 1.5 minutes
# and 250 MB on disk here); later runs print the cached path at once. Used by the system-container tests and bench.
# Usage: scripts/debian-rootfs.sh [systemd|sysvinit]
set -euo pipefail
flavour=${1:-systemd}
cache=${HULL_TEST_CACHE:-/var/cache/hull-tests}
case $flavour in
  systemd) include=systemd,systemd-sysv,dbus,iproute2,procps ;;
  sysvinit) include=sysvinit-core,procps; exclude=systemd-sysv ;;
  *) echo "debian-rootfs.sh: unknown flavour '$flavour' (systemd or sysvinit)" >&2; exit 2 ;;
esac
tar=$cache/debian12-$flavour.tar
[ -s "$tar" ] && { echo "$tar"; exit 0; }
command -v debootstrap >/dev/null || { echo "debian-rootfs.sh: debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
# The mirror apt uses for bookworm (deb822 .sources or one-line lists).
mirror=$(awk '/^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/{print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $3=="bookworm"{print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
[ -n "$mirror" ] || { echo "debian-rootfs.sh: no bookworm mirror in /etc/apt (sources.list or sources.list.d)" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.debian12-$flavour.lock"
flock 9
[ -s "$tar" ] && { echo "$tar"; exit 0; }
dir=$cache/debian12-$flavour.tmp
rm -rf "$dir"
debootstrap --variant=minbase --include="$include" ${exclude:+--exclude="$exclude"} bookworm "$dir" "$mirror" \
  > "$cache/debian12-$flavour.log" 2>&1 || { echo "debian-rootfs.sh: debootstrap failed: see $cache/debian12-$flavour.log" >&2; exit 1; }
# The build host's name is not the image's: the container's hostname is its instance name.
rm -f "$dir/etc/hostname"
tar --numeric-owner -C "$dir" -cf "$tar.tmp" .
mv "$tar.tmp" "$tar"
rm -rf "$dir"
echo "$tar"
