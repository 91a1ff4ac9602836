#!/usr/bin/env bash
# Builds the benchmark image: a sparse raw disk with a GPT, one ext4 partition
# filled with a few GiB of real files (a hard-linked copy of parts of /usr,
# written by mkfs.ext4 -d, so no mount is needed), a region of written zeros
# after the partition, and holes.
#
#   scripts/make-bench-image.sh OUT.raw [DATA_MIB]
#
# DATA_MIB (default 2048) caps the data copied. Needs e2fsprogs, util-linux (sfdisk).
set -euo pipefail
out=${1:?usage: make-bench-image.sh OUT.raw [DATA_MIB]}
cap_mib=${2:-2048}
disk_mib=$(( cap_mib * 2 + 1024 ))
part_mib=$(( cap_mib * 3 / 2 + 256 ))
stage=$(mktemp -d "$(dirname "$out")/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# Pick files (hard links are free; copies across filesystems) up to the cap.
list="$stage.list"
trap 'rm -rf "$stage" "$list"' EXIT
for d in /usr/share /usr/bin /usr/sbin /usr/include /usr/lib/x86_64-linux-gnu /usr/lib/gcc \
         /usr/lib/llvm-* /usr/lib/jvm /usr/lib/python3* /usr/libexec /usr/lib; do
  [ -d "$d" ] && find "$d" -type f -printf '%s %p\n' 2>/dev/null
done | awk -v cap=$(( cap_mib * 1024 * 1024 )) '
  !seen[$2]++ && !full { if (t + $1 > cap) { full = 1; next } t += $1; sub(/^[0-9]+ /, ""); print }' > "$list"
total=$(xargs -d '\n' -a "$list" stat -c %s 2>/dev/null | awk '{t+=$1} END {print t+0}')
(cd / && sed 's|^/||' "$list" | xargs -d '\n' cp -al --parents -t "$stage" 2>/dev/null) ||
  (cd / && sed 's|^/||' "$list" | xargs -d '\n' cp -a --parents -t "$stage")

rm -f "$out"
truncate -s "${disk_mib}M" "$out"
printf 'label: gpt\nstart=2048, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n' \
  $(( part_mib * 2048 )) | sfdisk -q "$out"
mkfs.ext4 -q -F -E offset=$((1024 * 1024)) -L benchroot -d "$stage" "$out" "${part_mib}M"
# 256 MiB of written zeros after the partition: allocated, but all zero.
dd if=/dev/zero of="$out" bs=1M seek=$(( part_mib + 64 )) count=256 conv=notrunc status=none
echo "bench image: $out ($(du -h --apparent-size "$out" | cut -f1) virtual, $(du -h "$out" | cut -f1) allocated, $(( total >> 20 )) MiB of files)"
