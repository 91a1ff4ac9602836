#!/usr/bin/env bash
# Builds the filesystem-aware fixtures into OUTDIR (never committed):
#   gpt-ext4-swap.raw  GPT: ext4 (dirtied free space, real files) + swap (dirty)
#   bare-ext4.raw      no partition table: one ext4, dirtied free space
#   ext4-recovery.raw  an ext4 with needs_recovery set (must be copied whole)
#   mbr-xfs.raw        MBR: xfs primary + extended partition with a logical ext4
# and OUTDIR/NAME.truth.json: per partition, the bytes of non-zero 4 KiB blocks
# inside the filesystem's free space, computed from the filesystem's own tools
# (dumpe2fs, xfs_db) and a byte scan, independently of vmfinal.
#
#   scripts/make-fs-fixtures.sh OUTDIR
# Needs root (loop devices, mount), e2fsprogs, xfsprogs, util-linux, attr, python3.
set -euo pipefail
# Mount only in a private mount namespace: a namespace another process
# creates meanwhile (any unshare on this machine) would copy our mounts and
# keep the filesystems alive, half written back, after our umount.
if [ -z "${VMFINAL_FIXTURE_NS:-}" ]; then
  exec env VMFINAL_FIXTURE_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi
out=${1:?usage: make-fs-fixtures.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
mnt=$(mktemp -d "$out/mnt.XXXXXX")
loops=()
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt" || true
  # Only the loop devices this script attached and has not detached yet.
  for l in "${loops[@]}"; do [ -z "$l" ] || losetup -d "$l" 2>/dev/null || true; done
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT

attach() { # IMG OFFSET_MIB SIZE_MIB: sets $d to the loop device
  d=$(losetup --offset $(( $2 * 1048576 )) --sizelimit $(( $3 * 1048576 )) -f --show "$1")
  loops+=("$d")
}
detach() { # DEV: detaches it and forgets it, so cleanup never detaches a reused name
  local i
  losetup -d "$1"
  for i in "${!loops[@]}"; do [ "${loops[$i]}" != "$1" ] || loops[i]=; done
}

# Dirty the free space (random files, then deleted), then add real files with
# symlinks, xattrs, odd modes and owners.
fill() { # MOUNTPOINT
  local m=$1 avail
  avail=$(df -k --output=avail "$m" | tail -1)
  dd if=/dev/urandom of="$m/garbage" bs=1M count=$(( avail / 1024 / 2 )) status=none
  sync; rm -f "$m/garbage"; sync
  mkdir -p "$m/data/docs" "$m/data/empty"
  # Real files, up to a quarter of the space: whole package doc directories.
  local cap used=0 sz dir
  cap=$(( avail / 4 ))
  for dir in /usr/share/doc/*/; do
    sz=$(du -sk "$dir" | cut -f1)
    [ $(( used + sz )) -le "$cap" ] || continue
    cp -a "$dir" "$m/data/docs/" 2>/dev/null || true
    used=$(( used + sz ))
  done
  head -c 3000000 /dev/urandom > "$m/data/random.bin"
  { yes "vmfinal fixture line" || true; } | head -c 2000000 > "$m/data/text.txt"
  ln -s data/text.txt "$m/link-to-text"
  ln -s /etc/passwd "$m/absolute-link"
  setfattr -n user.vmfinal -v fixture "$m/data/text.txt"
  chmod 4751 "$m/data/random.bin"
  chown 1234:2345 "$m/data/text.txt"
  mkfifo "$m/data/fifo"
  sync
}

truth_ext4() { # DEV IMG OFFSET_BYTES INDEX -> JSON fragment
  # The kernel wrote past the device's buffered pages; read fresh ones.
  blockdev --flushbufs "$1"
  dumpe2fs "$1" 2>/dev/null | python3 "$here/scripts/fs-truth.py" ext4 "$2" "$3" "$4" "$(dumpe2fs -h "$1" 2>/dev/null | awk -F: '/^Block size/ {gsub(/ /,"",$2); print $2}')"
}
truth_xfs() { # DEV IMG OFFSET_BYTES INDEX
  local bs agblocks agcount
  blockdev --flushbufs "$1"
  bs=$(xfs_db -r -c 'sb 0' -c 'p blocksize' "$1" | awk '{print $3}')
  agblocks=$(xfs_db -r -c 'sb 0' -c 'p agblocks' "$1" | awk '{print $3}')
  agcount=$(xfs_db -r -c 'sb 0' -c 'p agcount' "$1" | awk '{print $3}')
  for ((a = 0; a < agcount; a++)); do
    xfs_db -r -c "agf $a" -c "addr bnoroot" -c "p recs" "$1" 2>/dev/null | sed "s/^/AG $a $agblocks /"
  done | python3 "$here/scripts/fs-truth.py" xfs "$2" "$3" "$4" "$bs"
}
truth_swap() { # IMG OFFSET SIZE INDEX
  printf 'SWAP %s %s\n' 4096 "$3" | python3 "$here/scripts/fs-truth.py" swap "$1" "$2" "$4" 4096
}
here=$(cd "$(dirname "$0")/.." && pwd)

# 1. GPT: ext4 at 1 MiB (200 MiB), swap after it (64 MiB).
img="$out/gpt-ext4-swap.raw"; rm -f "$img"; truncate -s 320M "$img"
printf 'label: gpt\nstart=2048, size=409600, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\nstart=411648, size=131072, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n' | sfdisk -q "$img"
attach "$img" 1 200; mkfs.ext4 -q -L fixroot "$d"; mount "$d" "$mnt"; fill "$mnt"; umount "$mnt"
t1=$(truth_ext4 "$d" "$img" $((1 * 1048576)) 1); detach "$d"
attach "$img" 201 64; dd if=/dev/urandom of="$d" bs=1M count=64 status=none; mkswap -q -L fixswap "$d"; detach "$d"
t2=$(truth_swap "$img" $((201 * 1048576)) $((64 * 1048576)) 2)
echo "{\"partitions\": [$t1, $t2]}" > "$out/gpt-ext4-swap.truth.json"

# 2. Bare ext4.
img="$out/bare-ext4.raw"; rm -f "$img"; truncate -s 192M "$img"
mkfs.ext4 -q -F -L bare "$img"
attach "$img" 0 192; mount "$d" "$mnt"; fill "$mnt"; umount "$mnt"
t1=$(truth_ext4 "$d" "$img" 0 0); detach "$d"
echo "{\"partitions\": [$t1]}" > "$out/bare-ext4.truth.json"

# 3. ext4 with needs_recovery set.
img="$out/ext4-recovery.raw"; rm -f "$img"; truncate -s 128M "$img"
mkfs.ext4 -q -F -L recov "$img"
attach "$img" 0 128; mount "$d" "$mnt"; fill "$mnt"; umount "$mnt"; detach "$d"
debugfs -w -R 'feature needs_recovery' "$img" >/dev/null 2>&1
dumpe2fs -h "$img" 2>/dev/null | grep -q needs_recovery || { echo "could not set needs_recovery" >&2; exit 1; }
echo '{"partitions": []}' > "$out/ext4-recovery.truth.json"

# 4. MBR: xfs primary (320 MiB), extended partition with a logical ext4 (48 MiB).
img="$out/mbr-xfs.raw"; rm -f "$img"; truncate -s 400M "$img"
printf 'label: dos\nstart=2048, size=655360, type=83\nstart=657408, size=102400, type=5\nstart=659456, size=98304, type=83\n' | sfdisk -q "$img"
attach "$img" 1 320; mkfs.xfs -q -f -L fixxfs "$d"; mount "$d" "$mnt"; fill "$mnt"; umount "$mnt"
t1=$(truth_xfs "$d" "$img" $((1 * 1048576)) 1); detach "$d"
attach "$img" 322 48; mkfs.ext4 -q -L logical "$d"; mount "$d" "$mnt"; fill "$mnt"; umount "$mnt"
t5=$(truth_ext4 "$d" "$img" $((322 * 1048576)) 5); detach "$d"
echo "{\"partitions\": [$t1, $t5]}" > "$out/mbr-xfs.truth.json"
echo "fixtures in $out"
