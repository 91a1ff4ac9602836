#!/usr/bin/env bash
# Builds disk images whose free-space metadata lies while staying
# self-consistent, one class of lie per partition, into OUTDIR (never
# committed):
#   ext-lies.raw    GPT: ext4 file data freed in the bitmap; an ext4 extent
#                   tree leaf freed; an ext3 indirect block freed; an ext4
#                   inode-table block freed (all with group/superblock counts
#                   and checksums fixed: scripts/ext4-freeb-lie.sh); an ext4
#                   bitmap lie whose bitmap checksum was left stale; an ext4
#                   lie with an unknown ro_compat bit; a clean ext4
#   xfs-lies.raw    GPT: xfs whose bnobt alone lists file data as free; xfs
#                   with rmapbt whose bnobt and cntbt both do; the same
#                   without rmapbt but marked NEEDSREPAIR; a clean xfs
#                   (scripts/xfs-free-lie.sh, CRCs recomputed by xfs_db)
#   swap-lies.raw   GPT: btrfs under a stale swap signature; a TuxOnIce
#                   image (valid swap header kept); a 64 KiB-page hibernation
#                   image under a stale 4 KiB swap signature; a swap area
#                   shorter than its partition; a swsusp image (S1SUSPEND);
#                   a plain swap area
#   overlap.raw     GPT: ext4 with a swap file, and a second partition over
#                   that swap file and the files after it
#   over-gpt.raw    GPT: ext4, and a swap partition over the backup GPT
#   past-end.raw    MBR: ext4 in a partition that runs past the end of the
#                   disk, over a stale whole-disk swap header
# and OUTDIR/NAME.layout: one line per filesystem to judge,
#   INDEX OFFSET SIZE KIND EXPECT
# KIND: ext4|xfs|btrfs (repair and compare file trees), bytes (compare
# bytes: no repair tool applies) or swap (compare the header page and
# everything after the header's last_page);
# EXPECT: whole (vmfinal must copy it whole) or skip (a control: vmfinal
# must still skip its free space).
#
#   scripts/make-fs-lies.sh OUTDIR [NAME...]
# Needs root (loop devices, mount), e2fsprogs, xfsprogs, btrfs-progs,
# util-linux (sfdisk, losetup, mkswap), attr, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Mount only in a private mount namespace: a namespace another process
# creates meanwhile (any unshare on this machine) would copy our mounts and
# keep the filesystems alive, half written back, after our umount.
if [ -z "${VMFINAL_FIXTURE_NS:-}" ]; then
  exec env VMFINAL_FIXTURE_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi
out=${1:?usage: make-fs-lies.sh OUTDIR [NAME...]}
shift
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
M=1048576

attach() { # IMG OFFSET_MIB SIZE_MIB: sets $d to a loop device over that range
  d=$(losetup --offset $(( $2 * M )) --sizelimit $(( $3 * M )) -f --show "$1")
  loops+=("$d")
}
# Unmounts $mnt and drops the loop device's buffered pages: the kernel
# filesystem wrote past them, and debugfs/xfs_db/dumpe2fs read through them.
unmount() {
  umount "$mnt"
  blockdev --flushbufs "$d"
}
detach() { # DEV: detaches it and forgets it, so cleanup never detaches a reused name
  local i
  losetup -d "$1"
  for i in "${!loops[@]}"; do [ "${loops[$i]}" != "$1" ] || loops[i]=; done
}

# Real files: random and text data, a hard link, symlinks, xattrs, odd
# modes and owners, nested directories, a FIFO.
fill() { # MOUNTPOINT
  local m=$1 i
  mkdir -p "$m/data/a/b" "$m/data/empty"
  head -c 6000000 /dev/urandom > "$m/data/random.bin"
  { yes "vmfinal lie fixture line" || true; } | head -c 1500000 > "$m/data/text.txt"
  for i in $(seq 1 40); do head -c $(( i * 7919 )) /dev/urandom > "$m/data/a/f$i"; done
  for i in $(seq 1 20); do head -c $(( i * 60000 )) /dev/urandom > "$m/data/a/b/g$i"; done
  ln "$m/data/text.txt" "$m/data/hardlink"
  ln -s data/text.txt "$m/link-to-text"
  ln -s "$(printf 'x%.0s' $(seq 1 120))" "$m/data/long-link"
  setfattr -n user.vmfinal -v lie "$m/data/text.txt"
  chmod 4751 "$m/data/random.bin"
  chown 1234:2345 "$m/data/text.txt"
  mkfifo "$m/data/fifo"
  sync
}

layout() { # NAME INDEX OFFSET_MIB SIZE_MIB KIND EXPECT
  echo "$2 $(( $3 * M )) $(( $4 * M )) $5 $6" >> "$out/$1.layout"
}

# gpt_entry IMG INDEX(1-based) FIRST_LBA LAST_LBA: writes a GPT entry (Linux
# swap type) in both copies, checksums recomputed: a table no GPT tool
# would write, but one that passes every CRC.
gpt_entry() {
  python3 - "$@" <<'PY'
import struct, sys, uuid, zlib
img, idx, first, last = sys.argv[1], int(sys.argv[2]) - 1, int(sys.argv[3]), int(sys.argv[4])
with open(img, 'r+b') as f:
    f.seek(0, 2); lbas = f.tell() // 512
    for h_lba in (1, lbas - 1):
        f.seek(h_lba * 512); h = bytearray(f.read(512))
        assert h[:8] == b'EFI PART', 'no GPT header at LBA %d' % h_lba
        ent_lba, count, esize = struct.unpack_from('<QII', h, 72)
        f.seek(ent_lba * 512); ents = bytearray(f.read(count * esize))
        e = idx * esize
        ents[e:e + 16] = uuid.UUID('0657fd6d-a4ab-43c4-84e5-0933c84b4f4f').bytes_le
        ents[e + 16:e + 32] = uuid.UUID(int=0x5eed0000 + idx).bytes_le
        struct.pack_into('<QQQ', ents, e + 32, first, last, 0)
        f.seek(ent_lba * 512); f.write(ents)
        struct.pack_into('<I', h, 88, zlib.crc32(ents))
        hsize = struct.unpack_from('<I', h, 12)[0]
        struct.pack_into('<I', h, 16, 0)
        struct.pack_into('<I', h, 16, zlib.crc32(bytes(h[:hsize])))
        f.seek(h_lba * 512); f.write(h)
PY
}

# swap_header FILE BYTE_OFFSET PAGES: the fields of a version-1 swap header
# (4 KiB pages) written over whatever is there, as a stale one would be.
swap_header() {
  python3 - "$@" <<'PY'
import struct, sys
path, off, pages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, 'r+b') as f:
    f.seek(off + 1024); f.write(struct.pack('<III', 1, pages - 1, 0))
    f.seek(off + 4086); f.write(b'SWAPSPACE2')
PY
}

poke() { # FILE BYTE_OFFSET STRING: writes STRING (printf escapes) at BYTE_OFFSET
  printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

new_gpt() { # IMG SIZE_MIB PARTS_MIB...: GPT with partitions of those sizes from 1 MiB
  local img=$1 size=$2 start=2048 s script='label: gpt\n'
  shift 2
  rm -f "$img" "${img%.raw}.layout"
  truncate -s "${size}M" "$img"
  for s in "$@"; do
    script+="start=$start, size=$(( s * 2048 ))\n"
    start=$(( start + s * 2048 ))
  done
  printf "$script" | sfdisk -q "$img"
}

ext_lies() {
  local img="$out/ext-lies.raw" n=ext-lies blocks b ind itable ino g off csum
  new_gpt "$img" 480 64 64 64 64 64 64 64
  # p1: file data freed.
  attach "$img" 1 64; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  blocks=$(debugfs -R "blocks /data/random.bin" "$d" 2>/dev/null | tr ' ' '\n' | awk 'NF && NR <= 64')
  "$here/ext4-freeb-lie.sh" "$d" $blocks; detach "$d"; layout $n 1 1 64 ext4 whole
  # p2: an extent tree leaf block freed (a file of 60 separate extents).
  attach "$img" 65 64; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"
  for b in $(seq 0 59); do head -c 4096 /dev/urandom | dd of="$mnt/data/frag" bs=4096 seek=$(( b * 8 )) conv=notrunc,fsync status=none; done
  unmount
  b=$(debugfs -R "stat /data/frag" "$d" 2>/dev/null | sed -n 's/.*(ETB0):\([0-9]*\).*/\1/p' | awk 'NR == 1')
  [ -n "$b" ] || { echo "make-fs-lies: /data/frag has no extent tree block" >&2; exit 1; }
  "$here/ext4-freeb-lie.sh" "$d" "$b"; detach "$d"; layout $n 2 65 64 ext4 whole
  # p3: ext3 (block maps): an indirect block freed.
  attach "$img" 129 64; mkfs.ext3 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  ind=$(debugfs -R "stat /data/random.bin" "$d" 2>/dev/null | sed -n 's/.*(IND):\([0-9]*\).*/\1/p' | awk 'NR == 1')
  [ -n "$ind" ] || { echo "make-fs-lies: /data/random.bin has no indirect block" >&2; exit 1; }
  "$here/ext4-freeb-lie.sh" "$d" "$ind"; detach "$d"; layout $n 3 129 64 ext4 whole
  # p4: the inode-table block holding /data/text.txt's inode freed.
  attach "$img" 193 64; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  ino=$(debugfs -R "stat /data/text.txt" "$d" 2>/dev/null | sed -n 's/^Inode: \([0-9]*\).*/\1/p')
  g=$(( (ino - 1) / $(dumpe2fs -h "$d" 2>/dev/null | awk -F: '/^Inodes per group/ {print $2+0}') ))
  itable=$(dumpe2fs "$d" 2>/dev/null | awk -v g="Group $g:" '$0 ~ "^"g { f = 1 } f && /Inode table at/ { sub(/.*Inode table at /, ""); sub(/-.*/, ""); print; exit }')
  off=$(( ((ino - 1) % $(dumpe2fs -h "$d" 2>/dev/null | awk -F: '/^Inodes per group/ {print $2+0}')) * 256 / 4096 ))
  "$here/ext4-freeb-lie.sh" "$d" $(( itable + off )); detach "$d"; layout $n 4 193 64 ext4 whole
  # p5: file data freed, but the bitmap checksum left as it was.
  attach "$img" 257 64; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  blocks=$(debugfs -R "blocks /data/random.bin" "$d" 2>/dev/null | tr ' ' '\n' | awk 'NF && NR <= 64')
  b=${blocks%%$'\n'*}
  g=$(( b / 32768 ))
  csum=$(dumpe2fs "$d" 2>/dev/null | awk -v g="Group $g:" '$0 ~ "^"g { f = 1 } f && /Block bitmap at/ { sub(/.*csum /, ""); print; exit }')
  "$here/ext4-freeb-lie.sh" "$d" $blocks
  # -n: debugfs itself refuses a bitmap whose checksum does not match.
  printf 'set_bg %s block_bitmap_csum %s\nset_bg %s checksum calc\n' "$g" "$csum" "$g" |
    debugfs -w -n -f - "$d" >/dev/null 2>&1
  detach "$d"; layout $n 5 257 64 ext4 whole
  # p6: file data freed on a filesystem with an ro_compat bit vmfinal does not know.
  attach "$img" 321 64; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  blocks=$(debugfs -R "blocks /data/random.bin" "$d" 2>/dev/null | tr ' ' '\n' | awk 'NF && NR <= 64')
  "$here/ext4-freeb-lie.sh" "$d" $blocks
  python3 - "$d" <<'PY'
import struct, sys
# Set ro_compat bit 0x40000000 (unknown) and recompute the superblock crc32c.
dev = sys.argv[1]
def crc32c(data, crc=0xFFFFFFFF):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc
with open(dev, 'r+b') as f:
    f.seek(1024); sb = bytearray(f.read(1024))
    ro = struct.unpack_from('<I', sb, 0x64)[0] | 0x40000000
    struct.pack_into('<I', sb, 0x64, ro)
    struct.pack_into('<I', sb, 0x3FC, crc32c(bytes(sb[:0x3FC])))
    f.seek(1024); f.write(sb)
PY
  detach "$d"; layout $n 6 321 64 bytes whole
  # p7: a clean control.
  attach "$img" 385 64; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  detach "$d"; layout $n 7 385 64 ext4 skip
}

xfs_lies() {
  local img="$out/xfs-lies.raw" n=xfs-lies inc
  new_gpt "$img" 1300 320 320 320 320
  attach "$img" 1 320; mkfs.xfs -q -f "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  "$here/xfs-free-lie.sh" "$d" 0 64 bno >/dev/null; detach "$d"; layout $n 1 1 320 xfs whole
  attach "$img" 321 320; mkfs.xfs -q -f -m rmapbt=1 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  "$here/xfs-free-lie.sh" "$d" 0 64 both >/dev/null; detach "$d"; layout $n 2 321 320 xfs whole
  attach "$img" 641 320; mkfs.xfs -q -f "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  "$here/xfs-free-lie.sh" "$d" 0 64 both >/dev/null
  inc=$(xfs_db -r -c "sb 0" -c "p features_incompat" "$d" | awk '{print $3}')
  xfs_db -x -c "sb 0" -c "write features_incompat $(( inc | 0x10 ))" "$d" >/dev/null
  detach "$d"; layout $n 3 641 320 xfs whole
  attach "$img" 961 320; mkfs.xfs -q -f "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount
  detach "$d"; layout $n 4 961 320 xfs skip
}

swap_lies() {
  local img="$out/swap-lies.raw" n=swap-lies
  new_gpt "$img" 320 128 32 32 32 32 32
  # p1: btrfs with files, under a stale swap signature and header.
  attach "$img" 1 128; mkfs.btrfs -q -f "$d" >/dev/null; mount "$d" "$mnt"; fill "$mnt"; unmount; detach "$d"
  swap_header "$img" $(( 1 * M )) $(( 128 * 256 ))
  layout $n 1 1 128 btrfs whole
  # p2: TuxOnIce: image pages, a valid swap header, the TuxOnIce magic at 0.
  attach "$img" 129 32; dd if=/dev/urandom of="$d" bs=1M count=32 status=none; mkswap -q "$d"; detach "$d"
  poke "$img" $(( 129 * M )) '\xed\xc3\x02\xe9\x98\x56\xe5\x0c'
  layout $n 2 129 32 bytes whole
  # p3: a 64 KiB-page hibernation image under a stale 4 KiB swap header.
  attach "$img" 161 32; dd if=/dev/urandom of="$d" bs=1M count=32 status=none; mkswap -q "$d"; detach "$d"
  poke "$img" $(( 161 * M + 65526 )) 'S1SUSPEND\0'
  layout $n 3 161 32 bytes whole
  # p4: a 16 MiB swap area in a 32 MiB partition; data after last_page.
  attach "$img" 193 32; dd if=/dev/urandom of="$d" bs=1M count=32 status=none; mkswap -q "$d" 16384; detach "$d"
  layout $n 4 193 32 swap skip
  # p5: a swsusp image (S1SUSPEND where SWAPSPACE2 was).
  attach "$img" 225 32; dd if=/dev/urandom of="$d" bs=1M count=32 status=none; mkswap -q "$d"; detach "$d"
  poke "$img" $(( 225 * M + 4076 )) 'SWAPSPACE2S1SUSPEND\0'
  layout $n 5 225 32 bytes whole
  # p6: a plain swap area (a control: everything after the header is free).
  attach "$img" 257 32; dd if=/dev/urandom of="$d" bs=1M count=32 status=none; mkswap -q "$d"; detach "$d"
  layout $n 6 257 32 swap skip
}

part_lies() {
  local img blk first
  # overlap.raw: p2 starts at p1's swap file and runs over the files after it.
  img="$out/overlap.raw"; new_gpt "$img" 256 200
  attach "$img" 1 200; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"
  dd if=/dev/urandom of="$mnt/swapfile" bs=1M count=8 conv=fsync status=none
  chmod 600 "$mnt/swapfile"; mkswap -q "$mnt/swapfile"; fill "$mnt"; unmount
  blk=$(debugfs -R "bmap /swapfile 0" "$d" 2>/dev/null)
  detach "$d"
  first=$(( 2048 + blk * 8 ))
  gpt_entry "$img" 2 "$first" $(( first + 64 * 2048 - 1 ))
  layout overlap 1 1 200 ext4 whole
  # over-gpt.raw: p2 covers the last MiB, the backup GPT included.
  img="$out/over-gpt.raw"; new_gpt "$img" 128 100
  attach "$img" 1 100; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount; detach "$d"
  gpt_entry "$img" 2 $(( 127 * 2048 )) $(( 128 * 2048 - 1 ))
  swap_header "$img" $(( 127 * M )) 256
  layout over-gpt 1 1 100 ext4 whole
  layout over-gpt 2 127 1 bytes whole
  # past-end.raw: MBR whose partition 1 runs past the end of the disk (an
  # image cut short), over a stale whole-disk swap header in the MBR gap.
  img="$out/past-end.raw"; rm -f "$img" "$out/past-end.layout"; truncate -s 128M "$img"
  printf 'label: dos\nstart=2048, size=204800, type=83\n' | sfdisk -q "$img"
  attach "$img" 1 100; mkfs.ext4 -q -b 4096 "$d"; mount "$d" "$mnt"; fill "$mnt"; unmount; detach "$d"
  python3 - "$img" <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(446 + 12); f.write(struct.pack('<I', 300 * 2048))
PY
  swap_header "$img" 0 $(( 128 * 256 ))
  layout past-end 1 1 100 ext4 whole
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(ext xfs swap part)
for n in "${names[@]}"; do
  case $n in
    ext) ext_lies ;;
    xfs) xfs_lies ;;
    swap) swap_lies ;;
    part) part_lies ;;
    *) echo "make-fs-lies: unknown set $n (ext, xfs, swap, part)" >&2; exit 2 ;;
  esac
done
echo "lies in $out"
