#!/usr/bin/env bash
# Makes an ext2/3/4 block bitmap lie while staying self-consistent: marks
# BLOCKs free with debugfs `freeb`, then fixes the group descriptors' free
# counts, the superblock's free count and every checksum (debugfs writes the
# bitmap checksums; `set_bg N checksum calc` the descriptors'). Afterwards the
# bitmaps, descriptors and superblock all agree; only the inodes (and e2fsck
# -f) still know the blocks are in use.
#
#   scripts/ext4-freeb-lie.sh IMAGE_OR_DEVICE BLOCK...
#
# Used by scripts/make-fs-lies.sh and the ext4 unit tests. Needs e2fsprogs.
set -euo pipefail
dev=${1:?usage: ext4-freeb-lie.sh IMAGE BLOCK...}
shift
[ $# -gt 0 ] || { echo "ext4-freeb-lie.sh: no blocks given" >&2; exit 2; }
hdr=$(dumpe2fs -h "$dev" 2>/dev/null)
field() { awk -F: -v k="$1" '$1 == k { gsub(/ /, "", $2); print $2; exit }' <<<"$hdr"; }
bpg=$(field "Blocks per group")
first=$(field "First block")
bsize=$(field "Block size")
csize=$(field "Cluster size")
ratio=$(( ${csize:-$bsize} / bsize ))
stats=$(debugfs -R stats "$dev" 2>/dev/null)
cmds=$(mktemp)
trap 'rm -f "$cmds"' EXIT
declare -A seen add
n=0
for b in "$@"; do
  c=$(( b / ratio ))
  [ -z "${seen[$c]:-}" ] || continue
  seen[$c]=1
  echo "freeb $b" >> "$cmds"
  g=$(( (b - first) / bpg ))
  add[$g]=$(( ${add[$g]:-0} + 1 ))
  n=$(( n + 1 ))
done
for g in "${!add[@]}"; do
  cur=$(awk -v g="$g:" '$1 == "Group" && $2 == g { getline; print $1; exit }' <<<"$stats")
  [ -n "$cur" ] || { echo "ext4-freeb-lie.sh: no group $g in debugfs stats" >&2; exit 1; }
  echo "set_bg $g free_blocks_count $(( cur + add[$g] ))" >> "$cmds"
  echo "set_bg $g checksum calc" >> "$cmds"
done
total=$(awk -F: '/^Free blocks:/ { gsub(/ /, "", $2); print $2; exit }' <<<"$stats")
echo "ssv free_blocks_count $(( total + n * ratio ))" >> "$cmds"
debugfs -w -f "$cmds" "$dev" >/dev/null 2>&1
