#!/usr/bin/env bash
# Builds a small raw disk image from a synthetic tree recipe, without
# mounting anything (mkfs.ext4 -d):
#   GPT: p1 ext4 /boot (the tree's /boot), p2 swap, p3 ext4 / (the rest).
# /etc/fstab names /boot, / and swap by UUID.
#
#   scripts/make-guest-image.sh RECIPE OUT.raw [ROOT_MIB]
# Needs e2fsprogs, util-linux (mkswap, sfdisk), python3.
set -euo pipefail
recipe=${1:?usage: make-guest-image.sh RECIPE OUT.raw [ROOT_MIB]}
out=${2:?usage: make-guest-image.sh RECIPE OUT.raw [ROOT_MIB]}
root_mib=${3:-160}
boot_mib=48
swap_mib=16
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/vmfinal-tree.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$here/make-tree.py" "$recipe" "$work/root"
mkdir -p "$work/root/boot" "$work/bootfs"
if [ -n "$(ls -A "$work/root/boot")" ]; then
  mv "$work/root/boot/"* "$work/bootfs/"
fi
root_uuid=11111111-2222-4333-8444-555555555501
boot_uuid=11111111-2222-4333-8444-555555555502
swap_uuid=11111111-2222-4333-8444-555555555503
mkdir -p "$work/root/etc"
# GUEST_BOOT_MOUNTPOINT: where fstab mounts the first filesystem (default
# /boot; a nested one such as /srv/data for tests of nested mount points).
boot_mp=${GUEST_BOOT_MOUNTPOINT:-/boot}
mkdir -p "$work/root$boot_mp"
cat > "$work/root/etc/fstab" <<FSTAB
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$boot_uuid $boot_mp ext4 defaults 0 2
UUID=$swap_uuid none swap sw 0 0
tmpfs /run tmpfs defaults 0 0
FSTAB
mkfs.ext4 -q -F -U "$boot_uuid" -L boot -d "$work/bootfs" "$work/boot.fs" "${boot_mib}M" >/dev/null
# GUEST_ROOT_MKFS_OPTS: extra mkfs.ext4 options for / (e.g. "-O inline_data").
read -ra root_opts <<< "${GUEST_ROOT_MKFS_OPTS:-}"
mkfs.ext4 -q -F -U "$root_uuid" -L root "${root_opts[@]}" -d "$work/root" "$work/root.fs" "${root_mib}M" >/dev/null
truncate -s "${swap_mib}M" "$work/swap.fs"
mkswap -q -U "$swap_uuid" "$work/swap.fs" >/dev/null
# Dirty swap pages, as a used swap partition has.
dd if=/dev/urandom of="$work/swap.fs" bs=1M seek=1 count=4 conv=notrunc status=none
total=$(( 1 + boot_mib + swap_mib + root_mib + 1 ))
rm -f "$out"
truncate -s "${total}M" "$out"
sfdisk -q "$out" <<PT
label: gpt
start=2048, size=$(( boot_mib * 2048 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
size=$(( swap_mib * 2048 )), type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
size=$(( root_mib * 2048 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
PT
off=1
for f in boot swap root; do
  dd if="$work/$f.fs" of="$out" bs=1M seek=$off conv=notrunc,sparse status=none
  case $f in boot) off=$(( off + boot_mib ));; swap) off=$(( off + swap_mib ));; esac
done
echo "$out: boot ${boot_mib}M, swap ${swap_mib}M, root ${root_mib}M"
