#!/usr/bin/env bash
# Builds a small raw disk from a synthetic tree recipe in one of two other
# layouts, to test mounting beyond ext4 (needs root: it mounts, inside its
# own mount namespace only):
#   btrfs-subvol  GPT: p1 btrfs; the root lives in subvolume @, fstab
#                 mounts / with subvol=@ by UUID
#   xfs-var       GPT: p1 ext4 / (by UUID), p2 xfs /var (by LABEL=guestvar)
#
#   scripts/make-guest-image-fs.sh LAYOUT RECIPE OUT.raw
set -euo pipefail
layout=${1:?usage: make-guest-image-fs.sh btrfs-subvol|xfs-var RECIPE OUT.raw}
recipe=${2:?usage}
out=${3:?usage}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/vmfinal-tree.XXXXXX")
loops=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$here/make-tree.py" "$recipe" "$work/root"
rm -f "$out"
uuid=11111111-2222-4333-8444-5555555555a1
case $layout in
  btrfs-subvol)
    truncate -s 400M "$out"
    printf 'label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n' | sfdisk -q "$out"
    psize=$(sfdisk -J "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["size"] * 512)')
    l=$(losetup -f --show --offset $((2048 * 512)) --sizelimit "$psize" "$out"); loops+=("$l")
    mkfs.btrfs -q -f -U "$uuid" -L groot "$l" >/dev/null
    printf 'UUID=%s / btrfs subvol=@,defaults 0 0\n' "$uuid" > "$work/root/etc/fstab"
    unshare --mount --propagation private sh -ec '
      l=$1 src=$2 m=$3; mkdir -p "$m"; mount "$l" "$m"
      btrfs -q subvolume create "$m/@" >/dev/null
      cp -a "$src/." "$m/@/"
      umount "$m"' sh "$l" "$work/root" "$work/m"
    ;;
  xfs-var)
    truncate -s 520M "$out"
    printf 'label: gpt\nstart=2048, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\nsize=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n' \
      $((200 * 2048)) $((310 * 2048)) | sfdisk -q "$out"
    printf 'UUID=%s / ext4 defaults 0 1\nLABEL=guestvar /var xfs defaults 0 2\n' "$uuid" > "$work/root/etc/fstab"
    mv "$work/root/var" "$work/var"; mkdir "$work/root/var"
    mkfs.ext4 -q -F -U "$uuid" -d "$work/root" "$work/root.fs" 200M >/dev/null
    dd if="$work/root.fs" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
    l=$(losetup -f --show --offset $((201 << 20)) --sizelimit $((310 << 20)) "$out"); loops+=("$l")
    mkfs.xfs -q -f -L guestvar "$l"
    unshare --mount --propagation private sh -ec '
      l=$1 src=$2 m=$3; mkdir -p "$m"; mount "$l" "$m"
      cp -a "$src/." "$m/"
      umount "$m"' sh "$l" "$work/var" "$work/m"
    ;;
  *) echo "make-guest-image-fs: unknown layout $layout" >&2; exit 2 ;;
esac
echo "$out: $layout"
