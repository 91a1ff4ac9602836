#!/usr/bin/env bash
# Builds the layout fixtures of tests/fs_layouts.rs into OUTDIR (never committed).
# Every free area starts as random bytes, so what compact skips is visible.
#
#   lvm.raw     MBR: p1 ext4 (/boot-like), p2 LVM2 PV of VG vmfixvg with LVs
#               root (ext4, two segments: 24 MiB, then the swap LV, then the
#               rest), swap (swap), data (xfs); unused extents after them.
#   plain.raw   MBR: p1 the same ext4, p2 the very same root filesystem
#               image, p3 swap, p4 the same xfs: the lvm.raw guest without LVM.
#   lvm.json    from LVM's own tools (lvs/pvs, not vmfinal): each LV's PV
#               byte ranges on the disk, in LV order.
#   root.img, data.img  the filesystems written into the LVs.
#   lvm2.raw    MBR: p1 and p2 PVs of VG vmfix2 (p1 with two metadata areas,
#               one at its end); LV big (ext4) spans both PVs; lvm2.json as
#               lvm.json; big.img the filesystem written into it.
#   win.raw     MBR: p1 vfat (FAT32, 64 MiB, at 1 MiB; files written with
#               mtools, some deleted), p2 NTFS (256 MiB, at 65 MiB; mkntfs,
#               files written through ntfs-3g, some deleted).
#   btrfs.raw   MBR: p1 btrfs (512 MiB at 1 MiB; subvolumes @ and @home,
#               files, some deleted; most of the device never allocated).
#
#   scripts/make-layout-fixtures.sh OUTDIR [lvm|ntfs|btrfs|fat ...]
# Needs root, lvm2, ntfs-3g, dosfstools, mtools, (metadata tools only: no activation, no device-mapper),
# e2fsprogs, xfsprogs, util-linux (sfdisk, losetup), python3.
set -euo pipefail
out=${1:?usage: make-layout-fixtures.sh OUTDIR [what...]}
shift
what=${*:-lvm lvm2 win btrfs}
mkdir -p "$out"
out=$(cd "$out" && pwd)
mnt=$(mktemp -d "$out/mnt.XXXXXX")
loops=()
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt" || true
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rmdir "$mnt" 2>/dev/null || true
  rm -rf "$out/lvm-etc"
}
trap cleanup EXIT
M=1048576

attach() { # FILE OFFSET_BYTES SIZE_BYTES: sets $d
  d=$(losetup --offset "$2" --sizelimit "$3" -f --show "$1")
  loops+=("$d")
}
detach() { losetup -d "$1"; }
garbage() { # FILE OFFSET_MIB SIZE_MIB
  dd if=/dev/urandom of="$1" bs=1M seek="$2" count="$3" conv=notrunc status=none
}
# Real files, some deleted again (their blocks become dirty free space).
fill() { # DIR
  local m=$1 i
  mkdir -p "$m/docs" "$m/deleted"
  cp -a /usr/share/doc/bash /usr/share/doc/coreutils /usr/share/doc/util-linux "$m/docs/" 2>/dev/null || true
  head -c 2000000 /dev/urandom > "$m/random.bin"
  { yes "vmfinal layout fixture" || true; } | head -c 1500000 > "$m/text.txt"
  for i in 1 2 3 4; do head -c 3000000 /dev/urandom > "$m/deleted/$i.bin"; done
  ln -s text.txt "$m/link"
  sync
  rm -rf "$m/deleted"
  sync
}
mkfs_filled() { # IMG SIZE_MIB ext4|xfs
  rm -f "$1"
  head -c $(( $2 * M )) /dev/urandom > "$1"
  if [ "$3" = xfs ]; then mkfs.xfs -q -f -K "$1"; else mkfs.ext4 -q -F -E nodiscard "$1"; fi
  mount -o loop "$1" "$mnt"
  fill "$mnt"
  umount "$mnt"
}

lvm_fixture() {
  local disk=$out/lvm.raw plain=$out/plain.raw pv etc=$out/lvm-etc
  mkfs_filled "$out/boot.img" 32 ext4
  mkfs_filled "$out/root.img" 96 ext4
  mkfs_filled "$out/data.img" 300 xfs
  # lvm.raw: 1 MiB gap, p1 32 MiB, p2 the PV (452 MiB).
  rm -f "$disk"; truncate -s 486M "$disk"
  printf 'label: dos\nstart=2048, size=%d, type=83\nstart=%d, size=%d, type=8e\n' \
    $(( 32 * 2048 )) $(( 33 * 2048 )) $(( 452 * 2048 )) | sfdisk -q "$disk"
  dd if="$out/boot.img" of="$disk" bs=1M seek=1 conv=notrunc status=none
  garbage "$disk" 33 452
  attach "$disk" $(( 33 * M )) $(( 452 * M )); pv=$d
  mkdir -p "$etc"
  cat > "$etc/lvm.conf" <<CONF
devices { filter = [ "a|^$pv\$|", "r|.*|" ] obtain_device_list_from_udev = 0 external_device_info_source = "none" }
backup { backup = 0 archive = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 event_activation = 0 }
CONF
  local lvm=(env LVM_SYSTEM_DIR="$etc" LVM_SUPPRESS_FD_WARNINGS=1)
  "${lvm[@]}" pvcreate -q -y "$pv" >/dev/null
  "${lvm[@]}" vgcreate -q -s 4M vmfixvg "$pv" >/dev/null
  local no=(--driverloaded n -an -Zn -q)
  "${lvm[@]}" lvcreate "${no[@]}" -L 24M -n root vmfixvg >/dev/null 2>&1
  "${lvm[@]}" lvcreate "${no[@]}" -L 32M -n swap vmfixvg >/dev/null 2>&1
  "${lvm[@]}" lvextend --driverloaded n -q -L 96M vmfixvg/root >/dev/null 2>&1
  "${lvm[@]}" lvcreate "${no[@]}" -L 300M -n data vmfixvg >/dev/null 2>&1
  # Where LVM says each LV lies: PE ranges -> disk bytes.
  local pe_start
  pe_start=$("${lvm[@]}" pvs --noheadings --units b --nosuffix -o pe_start "$pv" | tr -d ' ')
  "${lvm[@]}" lvs --noheadings --separator ';' -o lv_name,seg_start_pe,seg_pe_ranges vmfixvg \
    > "$out/lvs.txt"
  detach "$pv"
  python3 - "$out/lvs.txt" "$pe_start" $(( 33 * M )) > "$out/lvm.json" <<'PY'
import json, sys
lines, pe_start, part = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
es = 4 << 20
lvs = {}
for l in open(lines):
    name, seg_start, ranges = [x.strip() for x in l.split(';')]
    for r in ranges.split():
        a, b = r.rsplit(':', 1)[1].split('-')
        lvs.setdefault(name, []).append((int(seg_start), part + pe_start + int(a) * es, (int(b) - int(a) + 1) * es))
print(json.dumps({n: [[s, l] for _, s, l in sorted(v)] for n, v in lvs.items()}))
PY
  python3 - "$disk" "$out/lvm.json" "$out" <<'PY'
import json, sys
disk, lvs, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
src = {"root": open(out + "/root.img", "rb").read(), "data": open(out + "/data.img", "rb").read()}
swap = bytearray(open("/dev/urandom", "rb").read(32 << 20))
swap[0:4096] = bytes(4096)
swap[4086:4096] = b"SWAPSPACE2"; swap[1024] = 1
swap[1028:1032] = ((32 << 20) // 4096 - 1).to_bytes(4, "little")
src["swap"] = bytes(swap)
with open(disk, "r+b") as f:
    for n, pieces in lvs.items():
        at = 0
        for start, length in pieces:
            f.seek(start); f.write(src[n][at:at + length]); at += length
        assert at == len(src[n]), (n, at, len(src[n]))
PY
  # plain.raw: the same filesystems on partitions.
  rm -f "$plain"; truncate -s 486M "$plain"
  printf 'label: dos\nstart=2048, size=%d, type=83\nstart=%d, size=%d, type=83\nstart=%d, size=%d, type=82\nstart=%d, size=%d, type=83\n' \
    $(( 32 * 2048 )) $(( 33 * 2048 )) $(( 96 * 2048 )) $(( 129 * 2048 )) $(( 32 * 2048 )) \
    $(( 161 * 2048 )) $(( 300 * 2048 )) | sfdisk -q "$plain"
  dd if="$out/boot.img" of="$plain" bs=1M seek=1 conv=notrunc status=none
  dd if="$out/root.img" of="$plain" bs=1M seek=33 conv=notrunc status=none
  dd if="$disk" of="$plain" bs=1M seek=129 conv=notrunc status=none \
    skip=$(( $(python3 -c "import json;print(json.load(open('$out/lvm.json'))['swap'][0][0])") / M )) count=32
  dd if="$out/data.img" of="$plain" bs=1M seek=161 conv=notrunc status=none
  rm -f "$out/boot.img" "$out/lvs.txt"
}

lvm2_fixture() {
  local disk=$out/lvm2.raw etc=$out/lvm-etc a b
  mkfs_filled "$out/big.img" 152 ext4
  rm -f "$disk"; truncate -s 194M "$disk"
  printf 'label: dos\nstart=2048, size=%d, type=8e\nstart=%d, size=%d, type=8e\n' \
    $(( 96 * 2048 )) $(( 97 * 2048 )) $(( 96 * 2048 )) | sfdisk -q "$disk"
  garbage "$disk" 1 192
  attach "$disk" $M $(( 96 * M )); a=$d
  attach "$disk" $(( 97 * M )) $(( 96 * M )); b=$d
  mkdir -p "$etc"
  cat > "$etc/lvm.conf" <<CONF
devices { filter = [ "a|^$a\$|", "a|^$b\$|", "r|.*|" ] obtain_device_list_from_udev = 0 external_device_info_source = "none" }
backup { backup = 0 archive = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 event_activation = 0 }
CONF
  local lvm=(env LVM_SYSTEM_DIR="$etc" LVM_SUPPRESS_FD_WARNINGS=1)
  "${lvm[@]}" pvcreate -q -y --pvmetadatacopies 2 "$a" >/dev/null
  "${lvm[@]}" pvcreate -q -y "$b" >/dev/null
  "${lvm[@]}" vgcreate -q -s 4M vmfix2 "$a" "$b" >/dev/null
  "${lvm[@]}" lvcreate --driverloaded n -an -Zn -q -L 152M -n big vmfix2 "$a" "$b" >/dev/null 2>&1
  local pa pb
  pa=$("${lvm[@]}" pvs --noheadings --units b --nosuffix -o pe_start "$a" | tr -d ' ')
  pb=$("${lvm[@]}" pvs --noheadings --units b --nosuffix -o pe_start "$b" | tr -d ' ')
  "${lvm[@]}" lvs --noheadings --separator ';' -o lv_name,seg_start_pe,seg_pe_ranges vmfix2 > "$out/lvs2.txt"
  detach "$a"; detach "$b"
  python3 - "$out/lvs2.txt" "$disk" "$out/big.img" "$a=$(( M + pa ))" "$b=$(( 97 * M + pb ))" > "$out/lvm2.json" <<'PY'
import json, sys
lines, disk, img, devs = sys.argv[1], sys.argv[2], sys.argv[3], dict(a.split('=') for a in sys.argv[4:])
es = 4 << 20
pieces = []
for l in open(lines):
    name, seg_start, ranges = [x.strip() for x in l.split(';')]
    for r in ranges.split():
        dev, span = r.rsplit(':', 1)
        a, b = span.split('-')
        pieces.append((int(seg_start), int(devs[dev]) + int(a) * es, (int(b) - int(a) + 1) * es))
pieces.sort()
data = open(img, 'rb').read()
with open(disk, 'r+b') as f:
    at = 0
    for _, start, length in pieces:
        f.seek(start); f.write(data[at:at + length]); at += length
assert at == len(data), (at, len(data))
print(json.dumps({"big": [[s, l] for _, s, l in pieces]}))
PY
  rm -f "$out/lvs2.txt"
}

win_fixture() {
  local disk=$out/win.raw src=$out/src
  rm -f "$disk"; truncate -s 322M "$disk"
  printf 'label: dos\nstart=2048, size=%d, type=c\nstart=%d, size=%d, type=7\n' \
    $(( 64 * 2048 )) $(( 65 * 2048 )) $(( 256 * 2048 )) | sfdisk -q "$disk"
  garbage "$disk" 1 320
  # vfat through mtools (no vfat in this kernel).
  attach "$disk" $M $(( 64 * M ))
  mkfs.vfat -F 32 -s 1 -n VMFESP "$d" >/dev/null
  detach "$d"
  rm -rf "$src"; mkdir -p "$src/EFI/BOOT" "$src/gone"
  head -c 3000000 /dev/urandom > "$src/EFI/BOOT/BOOTX64.EFI"
  { yes "vmfinal esp" || true; } | head -c 500000 > "$src/EFI/BOOT/grub.cfg"
  for i in 1 2 3; do head -c 4000000 /dev/urandom > "$src/gone/$i.bin"; done
  export MTOOLS_SKIP_CHECK=1
  mcopy -s -i "$disk@@$M" "$src/EFI" "$src/gone" ::/
  mdeltree -i "$disk@@$M" ::/gone
  # NTFS through ntfs-3g (FUSE; no ntfs in this kernel).
  attach "$disk" $(( 65 * M )) $(( 256 * M ))
  mkntfs -q -F -Q -L vmfdata "$d" >/dev/null
  ntfs-3g "$d" "$mnt"
  fill "$mnt"
  umount "$mnt"
  detach "$d"
  rm -rf "$src"
}

btrfs_fixture() {
  local disk=$out/btrfs.raw
  rm -f "$disk"; truncate -s 514M "$disk"
  printf 'label: dos\nstart=2048, size=%d, type=83\n' $(( 512 * 2048 )) | sfdisk -q "$disk"
  garbage "$disk" 1 512
  attach "$disk" $M $(( 512 * M ))
  mkfs.btrfs -q -f -K -L vmfbtrfs "$d" >/dev/null
  mount "$d" "$mnt"
  btrfs -q subvolume create "$mnt/@" >/dev/null
  btrfs -q subvolume create "$mnt/@home" >/dev/null
  fill "$mnt/@"
  fill "$mnt/@home"
  umount "$mnt"
  detach "$d"
}

for w in $what; do "${w}_fixture"; done
