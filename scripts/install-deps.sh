#!/usr/bin/env bash
# Installs the system packages vmfinal's tests, scripts and benchmarks use.
# Idempotent; needs root. qemu-utils comes from bookworm-backports (qemu 10),
# matching the developers' machines; installing plain bookworm's qemu (7.2)
# would replace it.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then echo "install-deps.sh: run as root" >&2; exit 1; fi
. /etc/os-release
src=/etc/apt/sources.list.d/vmfinal-backports.sources
if [ "${VERSION_CODENAME:-}" = bookworm ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > "$src" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
pkgs=(zstd e2fsprogs xfsprogs btrfs-progs zerofree fdisk gdisk parted rsync util-linux mount
      attr acl time debootstrap python3 gcc libc6-dev make pkg-config dosfstools kmod strace
      ca-certificates packer sudo man-db lvm2 ntfs-3g mtools fuse3 python3-fusepy
      rpm chromium ovmf)
# rpm (rpm, rpmbuild): the real rpmdb.sqlite of the rpm-sqlite fixture and the
# check of analyze --guest against `rpm -qa`; chromium: the HTML report test;
# ovmf (UEFI firmware, architecture all): the UEFI guest's boot in e2e-layouts.sh.
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
  # qemu-system-x86 for the boot checks, from the same suite as qemu-utils.
  apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    qemu-utils qemu-system-x86 qemu-system-data seabios ipxe-qemu >/dev/null
else
  apt-get install -y -qq --no-install-recommends qemu-utils qemu-system-x86 >/dev/null
fi
qemu-img --version | head -1
