#!/usr/bin/env bash
# Makes an xfs free-space tree lie: the largest free extent of allocation
# group AG is extended downwards over the K in-use blocks before it, in the
# by-block tree (bnobt) and, with `both`, the by-size tree (cntbt) too; the
# AGF's free count and longest extent and the superblock's free count are
# fixed up, and xfs_db recomputes
# every CRC it writes. With `both` the free-space metadata is entirely
# self-consistent: only the inodes (and the reverse-mapping tree, where
# there is one) still know the blocks are in use.
#
#   scripts/xfs-free-lie.sh IMAGE_OR_DEVICE AG K bno|both
#
# Prints the stolen AG block range "FIRST COUNT". Needs xfsprogs; both trees'
# roots must be leaves (a small, unfragmented AG).
set -euo pipefail
dev=${1:?usage: xfs-free-lie.sh IMAGE AG K bno|both}
ag=${2:?AG}
k=${3:?K}
mode=${4:?bno|both}
db() { xfs_db -r -c "agf $ag" "$@" "$dev"; }
val() { db -c "p $1" | awk '{print $3}'; }
[ "$(val bnolevel)" = 1 ] && [ "$(val cntlevel)" = 1 ] ||
  { echo "xfs-free-lie.sh: AG $ag's free-space trees are not single leaves" >&2; exit 1; }
# Records as "INDEX START COUNT", one a line.
recs() { db -c "addr $1" -c "p recs" | tr ' ' '\n' | sed -n 's/^\([0-9]*\):\[\([0-9]*\),\([0-9]*\)\]$/\1 \2 \3/p'; }
bno=$(recs bnoroot)
read -r bi start count < <(sort -k3,3n -k2,2n <<<"$bno" | tail -1)
prev_end=$(awk -v s="$start" '$2 < s { e = $2 + $3 } END { print e + 0 }' <<<"$bno")
[ $(( start - k )) -ge "$prev_end" ] && [ $(( start - k )) -gt 0 ] ||
  { echo "xfs-free-lie.sh: fewer than $k in-use blocks before the extent at $start" >&2; exit 1; }
new_start=$(( start - k )); new_count=$(( count + k ))
cmds=(-c "agf $ag" -c "addr bnoroot" -c "write recs[$bi].startblock $new_start" -c "write recs[$bi].blockcount $new_count")
if [ "$mode" = both ]; then
  ci=$(recs cntroot | awk -v s="$start" -v c="$count" '$2 == s && $3 == c { print $1 }')
  [ -n "$ci" ] || { echo "xfs-free-lie.sh: the by-size tree lacks $start+$count" >&2; exit 1; }
  cmds+=(-c "agf $ag" -c "addr cntroot" -c "write recs[$ci].startblock $new_start" -c "write recs[$ci].blockcount $new_count")
fi
freeblks=$(val freeblks); longest=$(val longest)
[ "$new_count" -gt "$longest" ] && longest=$new_count
fdblocks=$(xfs_db -r -c "sb 0" -c "p fdblocks" "$dev" | awk '{print $3}')
cmds+=(-c "agf $ag" -c "write freeblks $(( freeblks + k ))" -c "write longest $longest")
cmds+=(-c "sb 0" -c "write fdblocks $(( fdblocks + k ))")
xfs_db -x "${cmds[@]}" "$dev" >/dev/null
echo "$new_start $k"
