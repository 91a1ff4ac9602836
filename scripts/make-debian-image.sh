#!/usr/bin/env bash
# Builds a real, bootable Debian bookworm disk image (raw, sparse) with
# debootstrap, for the finalize and boot tests (recipe:
# vm-fixtures/debian/recipe.env and extras.txt):
#   GPT: p1 BIOS boot (GRUB i386-pc), p2 ext4 /boot, p3 swap, p4 ext4 /;
#   fstab by UUID; GRUB on the serial console with root=UUID=;
#   two kernel packages (bookworm's cloud kernel and bookworm-backports');
#   openssh-server (host keys), a machine-id, apt's .deb archives and lists
#   kept, pip/npm/yarn caches, logs (active, rotated, journal), histories;
#   the boot marker unit (vm-fixtures/debian/vmfinal-boot-marker.*).
#
#   scripts/make-debian-image.sh OUT.raw [--cache DIR] [--no-cache]
#
# The finished image is cached in DIR (default /var/tmp/vmfinal-cache) under
# a key made of this script and the recipe, and debootstrap's downloads in
# DIR/debs: a fresh machine builds it (a few minutes), later runs copy it.
# Needs root, debootstrap, util-linux (losetup, partx), sfdisk, e2fsprogs.
# It mounts nothing outside its own mount namespace and detaches only the
# loop device it attached.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fx="$here/../vm-fixtures/debian"
out=${1:?usage: make-debian-image.sh OUT.raw [--cache DIR] [--no-cache]}
shift
cache=/var/tmp/vmfinal-cache
use_cache=1
while [ $# -gt 0 ]; do
  case $1 in
    --cache) cache=$2; shift 2 ;;
    --no-cache) use_cache=0; shift ;;
    *) echo "make-debian-image.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# shellcheck source=../vm-fixtures/debian/recipe.env
. "$fx/recipe.env"
key=$(cat "$0" "$fx"/* "$here/make-tree.py" | sha256sum | cut -c1-16)
cached="$cache/debian-$SUITE-$key.raw"
if [ "$use_cache" = 1 ] && [ -f "$cached" ]; then
  cp --sparse=always "$cached" "$out"
  echo "make-debian-image: $out (cached $cached)"
  exit 0
fi
mkdir -p "$cache/debs"
work=$(mktemp -d /var/tmp/vmfinal-debian.XXXXXX)
loop=
cleanup() {
  if [ -n "$loop" ]; then
    partx -d "$loop" 2>/dev/null || true
    losetup -d "$loop" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
R="$work/root"
t0=$(date +%s)

echo "make-debian-image: debootstrap $SUITE"
debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$cache/debs" \
  "$SUITE" "$R" "$MIRROR" > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }

# Commands in the chroot, in a private mount + PID namespace: the /proc,
# /sys, /dev and /run mounts vanish with it, whatever happens.
inchroot() {
  unshare --mount --pid --fork --kill-child --propagation private \
    sh -c 'R=$1; shift
      mount -t proc proc "$R/proc" && mount -t sysfs sys "$R/sys" &&
      mount --bind /dev "$R/dev" && mount -t tmpfs tmpfs "$R/run" &&
      exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"' sh "$R" "$@"
}

cat > "$R/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
deb $MIRROR $SUITE-backports main
SRC
echo 'APT::Keep-Downloaded-Packages "true";' > "$R/etc/apt/apt.conf.d/99keep-debs"
echo golden > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 golden\n' > "$R/etc/hosts"
echo "make-debian-image: kernels"
inchroot apt-get update -qq
old=$(inchroot apt-cache depends "$OLD_KERNEL_META" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$old" ] || { echo "make-debian-image: cannot find the versioned package behind $OLD_KERNEL_META" >&2; exit 1; }
inchroot apt-get install -y -qq --no-install-recommends "$old" > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; exit 1; }
inchroot apt-get install -y -qq --no-install-recommends -t "$NEW_KERNEL_SUITE" "$NEW_KERNEL_META" >> "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; exit 1; }

# Identity, users, boot configuration.
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$R/etc/machine-id"
echo >> "$R/etc/machine-id"
ln -sf /etc/machine-id "$R/var/lib/dbus/machine-id" 2>/dev/null || true
mid=$(cat "$R/etc/machine-id")
inchroot useradd -m -s /bin/bash builder
printf 'auto lo\niface lo inet loopback\n' > "$R/etc/network/interfaces"
cat > "$R/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
install -m 0755 "$fx/vmfinal-boot-marker.sh" "$R/usr/local/sbin/vmfinal-boot-marker"
install -m 0644 "$fx/vmfinal-boot-marker.service" "$R/etc/systemd/system/vmfinal-boot-marker.service"
ln -sf ../vmfinal-boot-marker.service "$R/etc/systemd/system/multi-user.target.wants/vmfinal-boot-marker.service"
sed "s/JOURNAL_ID/$mid/" "$fx/extras.txt" > "$work/extras.txt"
python3 "$here/make-tree.py" "$work/extras.txt" "$R"
chown -R 1000:1000 "$R/home/builder"

# The disk.
img="$work/disk.raw"
truncate -s "${DISK_MIB}M" "$img"
sfdisk -q "$img" <<PT
label: gpt
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios
size=$(( BOOT_MIB * 2048 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot
size=$(( SWAP_MIB * 2048 )), type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
PT
boot_uuid=$(cat /proc/sys/kernel/random/uuid)
root_uuid=$(cat /proc/sys/kernel/random/uuid)
swap_uuid=$(cat /proc/sys/kernel/random/uuid)
cat > "$R/etc/fstab" <<FSTAB
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$boot_uuid /boot ext4 defaults 0 2
UUID=$swap_uuid none swap sw 0 0
FSTAB
loop=$(losetup -f --show "$img")
partx -a "$loop"
mkfs.ext4 -q -U "$boot_uuid" -L boot "${loop}p2"
mkswap -q -U "$swap_uuid" -L swap "${loop}p3"
mkfs.ext4 -q -U "$root_uuid" -L root "${loop}p4"

echo "make-debian-image: filesystems and GRUB"
# Copy the tree in and install GRUB, all inside one private mount namespace
# with a /dev of our own, where /dev/disk/by-uuid resolves (else update-grub
# writes root=/dev/loopNpM).
M="$work/mnt"
mkdir -p "$M"
devnode() { # NAME: "b MAJ MIN" of /dev/NAME
  printf 'b %d %d' "0x$(stat -c %t "/dev/$1")" "0x$(stat -c %T "/dev/$1")"
}
l=$(basename "$loop")
unshare --mount --pid --fork --kill-child --propagation private sh -euc '
  R=$1 M=$2 l=$3 bu=$4 ru=$5 su=$6; shift 6
  mount "/dev/${l}p4" "$M"
  mkdir -p "$M/boot"
  mount "/dev/${l}p2" "$M/boot"
  tar -C "$R" --numeric-owner --xattrs --acls -cf - . | tar -C "$M" --numeric-owner --xattrs --acls -xf -
  mount -t proc proc "$M/proc"
  mount -t sysfs sys "$M/sys"
  mount -t tmpfs tmpfs "$M/run"
  mount -t tmpfs -o mode=0755 dev "$M/dev"
  for n in null zero full random urandom tty; do cp -a "/dev/$n" "$M/dev/$n"; done
  for n in "$l" "${l}p1" "${l}p2" "${l}p3" "${l}p4"; do cp -a "/dev/$n" "$M/dev/$n"; done
  mkdir -p "$M/dev/disk/by-uuid" "$M/dev/pts"
  ln -s "../../${l}p2" "$M/dev/disk/by-uuid/$bu"
  ln -s "../../${l}p4" "$M/dev/disk/by-uuid/$ru"
  ln -s "../../${l}p3" "$M/dev/disk/by-uuid/$su"
  ln -s /proc/self/fd "$M/dev/fd"
  chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    sh -ec "grub-install --target=i386-pc /dev/$l >/dev/null 2>&1 || grub-install --target=i386-pc /dev/$l; update-grub 2>/dev/null"
  if grep -q "root=/dev/loop" "$M/boot/grub/grub.cfg"; then echo "grub.cfg names a loop device" >&2; exit 1; fi
  grep -q "root=UUID=$ru" "$M/boot/grub/grub.cfg"
  umount "$M/dev" "$M/run" "$M/sys" "$M/proc" "$M/boot" "$M"
' sh "$R" "$M" "$l" "$boot_uuid" "$root_uuid" "$swap_uuid"
partx -d "$loop"
losetup -d "$loop"
loop=

kernels=$(ls "$R/boot" | grep -c '^vmlinuz-' || true)
debs=$(ls "$R/var/cache/apt/archives" | grep -c '\.deb$' || true)
cp --sparse=always "$img" "$out"
if [ "$use_cache" = 1 ]; then
  cp --sparse=always "$img" "$cached.tmp" && mv "$cached.tmp" "$cached"
fi
echo "make-debian-image: $out in $(( $(date +%s) - t0 )) s: $kernels kernels, $debs .deb archives, $(du -h "$out" | cut -f1) allocated"
