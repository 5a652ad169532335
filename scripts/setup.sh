#!/usr/bin/env bash
# Installs what Hull needs to build, test and run on Debian 12 (root): the Debian packages, and checks the .NET SDK.
set -euo pipefail
PKGS=(
  build-essential clang lld zlib1g-dev                 # NativeAOT link + the spawn shim
  busybox-static                                       # the built-in container rootfs
  debootstrap                                          # the Debian 12 system-container image (tests, bench)
  runc crun podman containerd                          # OCI clients and the runtimes we compare with
  containernetworking-plugins catatonit                # the CRI test: pod networking (bridge), the pause process
  iproute2 nftables dnsmasq-base                       # networking
  qemu-system-x86 qemu-utils ovmf seabios              # the VM engine's device model and firmware
  linux-image-amd64 e2fsprogs cpio xz-utils            # the default VM image (guest kernel, root disk, initramfs)
  grub-pc-bin grub-common xorriso mtools               # tests: bootable GRUB install media (grub-mkrescue)
  skopeo umoci docker-registry apache2-utils           # OCI images, a local registry for tests (htpasswd for its Basic auth)
  sqlite3 jq util-linux procps psmisc hyperfine time iperf3 curl
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v dotnet >/dev/null; then
  echo "setup: the .NET 10 SDK is needed (dotnet on PATH)" >&2
  exit 1
fi
echo "setup: ok"
