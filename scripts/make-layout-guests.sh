#!/usr/bin/env bash
# Builds synthetic guests (the tree of a vm-fixtures recipe, default
# debian-mini) in the layouts golden-image pipelines produce, for
# tests/layouts.rs. Nothing is committed; every image is made here.
#
#   btrfs   MBR: p1 btrfs (320 MiB at 1 MiB) with subvolumes @ (/), @home
#           (/home), @var (/var), mounted by fstab by UUID with subvol=.
#           With ESP=1 (or ESP=nofail): also p2 vfat (64 MiB) that fstab
#           mounts on /boot/efi (with nofail).
#   lvm     MBR: p1 ext4 /boot (48 MiB), p2 LVM2 PV of VG vg-guest (dash on
#           purpose: /dev/mapper/vg--guest-root) with LVs root (ext4,
#           160 MiB, one segment) and swap (16 MiB); fstab names root by
#           /dev/mapper/vg--guest-root, /boot by UUID, swap by /dev/vg-guest/swap.
#   lvm2seg the same, but root has two segments (64 MiB, the swap LV, then
#           the rest): scattered on the disk, not mappable by one loop device.
#
#   plain   the lvm guest without LVM (same trees and filesystem sizes): MBR
#           p1 /boot, p2 root ext4, p3 swap; for comparing artifact sizes.
#
#   scripts/make-layout-guests.sh btrfs|lvm|lvm2seg|plain OUT.raw [RECIPE]
# Needs root, btrfs-progs, e2fsprogs, lvm2 (metadata tools only: no
# activation, no device-mapper), util-linux, python3. Mounts only in a
# private mount namespace; detaches only the loop devices it attached.
set -euo pipefail
if [ -z "${VMFINAL_FIXTURE_NS:-}" ]; then
  exec env VMFINAL_FIXTURE_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi
what=${1:?usage: make-layout-guests.sh btrfs|lvm|lvm2seg|plain OUT.raw [RECIPE]}
out=${2:?usage: make-layout-guests.sh btrfs|lvm|lvm2seg|plain OUT.raw [RECIPE]}
here=$(cd "$(dirname "$0")" && pwd)
recipe=${3:-$here/../vm-fixtures/debian-mini/tree.txt}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/vmfinal-layout.XXXXXX")
loops=()
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt" || true
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
M=1048576
attach() { # FILE OFFSET_BYTES SIZE_BYTES: sets $d
  d=$(losetup --offset "$2" --sizelimit "$3" -f --show "$1")
  loops+=("$d")
}
"$here/make-tree.py" "$recipe" "$work/root"
R=$work/root
mkdir -p "$R/boot" "$R/home" "$R/var" "$R/etc" "$work/mnt"
# Files the tests look for after finalize: kept in /home, on / and in /var.
mkdir -p "$R/home/alice/work"
head -c 300000 /dev/urandom > "$R/home/alice/work/keep.bin"
echo "vmfinal layout guest" > "$R/home/alice/work/keep.txt"
rm -f "$out"

btrfs_guest() {
  # A UUID of its own: two btrfs with one fsid on this host would collide.
  local uuid; uuid=$(cat /proc/sys/kernel/random/uuid)
  cat > "$R/etc/fstab" <<FSTAB
UUID=$uuid / btrfs subvol=@,compress=zstd 0 0
UUID=$uuid /home btrfs subvol=@home 0 0
UUID=$uuid /var btrfs subvol=@var 0 0
tmpfs /run tmpfs defaults 0 0
FSTAB
  local esp=${ESP:-}
  if [ -n "$esp" ]; then
    local opt=umask=0077
    [ "$esp" = nofail ] && opt=umask=0077,nofail
    echo "UUID=ABCD-0123 /boot/efi vfat $opt 0 1" >> "$R/etc/fstab"
    mkdir -p "$R/boot/efi"
  fi
  truncate -s 386M "$out"
  printf 'label: dos\nstart=2048, size=%d, type=83\nstart=%d, size=%d, type=ef\n' \
    $(( 320 * 2048 )) $(( 321 * 2048 )) $(( 64 * 2048 )) | sfdisk -q "$out"
  if [ -n "$esp" ]; then
    attach "$out" $(( 321 * M )) $(( 64 * M ))
    mkfs.vfat -F 32 -s 1 -i ABCD0123 -n ESP "$d" >/dev/null
  fi
  attach "$out" $M $(( 320 * M ))
  mkfs.btrfs -q -f -U "$uuid" -L guest "$d" >/dev/null
  mount "$d" "$work/mnt"
  local s
  for s in @ @home @var; do btrfs -q subvolume create "$work/mnt/$s" >/dev/null; done
  (cd "$R" && tar --exclude=./home --exclude=./var -cf - .) | tar -C "$work/mnt/@" -xf -
  mkdir -p "$work/mnt/@/home" "$work/mnt/@/var"
  (cd "$R/home" && tar -cf - .) | tar -C "$work/mnt/@home" -xf -
  (cd "$R/var" && tar -cf - .) | tar -C "$work/mnt/@var" -xf -
  umount "$work/mnt"
  echo "$out: btrfs $uuid, subvolumes @ @home @var"
}

lvm_guest() { # 1|2 segments of root
  local segs=$1 boot_uuid=22222222-3333-4444-8555-666666666602 root_uuid=22222222-3333-4444-8555-666666666603
  cat > "$R/etc/fstab" <<FSTAB
/dev/mapper/vg--guest-root / ext4 errors=remount-ro 0 1
UUID=$boot_uuid /boot ext4 defaults 0 2
/dev/vg-guest/swap none swap sw 0 0
tmpfs /run tmpfs defaults 0 0
FSTAB
  mkdir -p "$work/bootfs"
  if [ -n "$(ls -A "$R/boot")" ]; then mv "$R/boot/"* "$work/bootfs/"; fi
  mkfs.ext4 -q -F -U "$boot_uuid" -L boot -d "$work/bootfs" "$work/boot.fs" 48M >/dev/null
  mkfs.ext4 -q -F -U "$root_uuid" -L root -d "$R" "$work/root.fs" 160M >/dev/null
  truncate -s 16M "$work/swap.fs"
  mkswap -q -L swap "$work/swap.fs" >/dev/null
  dd if=/dev/urandom of="$work/swap.fs" bs=1M seek=1 count=4 conv=notrunc status=none
  if [ "$segs" = 0 ]; then
    # The same guest without LVM: p1 /boot, p2 root, p3 swap (and the
    # fstab naming them by UUID/LABEL, written into the root image again).
    printf 'UUID=%s / ext4 errors=remount-ro 0 1\nUUID=%s /boot ext4 defaults 0 2\nLABEL=swap none swap sw 0 0\ntmpfs /run tmpfs defaults 0 0\n' \
      "$root_uuid" "$boot_uuid" > "$R/etc/fstab"
    mkfs.ext4 -q -F -U "$root_uuid" -L root -d "$R" "$work/root.fs" 160M >/dev/null
    truncate -s 242M "$out"
    printf 'label: dos\nstart=2048, size=%d, type=83\nstart=%d, size=%d, type=83\nstart=%d, size=%d, type=82\n' \
      $(( 48 * 2048 )) $(( 49 * 2048 )) $(( 160 * 2048 )) $(( 209 * 2048 )) $(( 16 * 2048 )) | sfdisk -q "$out"
    dd if="$work/boot.fs" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$work/root.fs" of="$out" bs=1M seek=49 conv=notrunc,sparse status=none
    dd if="$work/swap.fs" of="$out" bs=1M seek=209 conv=notrunc,sparse status=none
    echo "$out: the lvm guest without LVM"
    return
  fi
  # 1 MiB gap, p1 /boot 48 MiB, p2 the PV 192 MiB.
  truncate -s 242M "$out"
  printf 'label: dos\nstart=2048, size=%d, type=83\nstart=%d, size=%d, type=8e\n' \
    $(( 48 * 2048 )) $(( 49 * 2048 )) $(( 192 * 2048 )) | sfdisk -q "$out"
  dd if="$work/boot.fs" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
  attach "$out" $(( 49 * M )) $(( 192 * M )); local pv=$d etc=$work/lvm-etc
  mkdir -p "$etc"
  cat > "$etc/lvm.conf" <<CONF
devices { filter = [ "a|^$pv\$|", "r|.*|" ] obtain_device_list_from_udev = 0 external_device_info_source = "none" use_devicesfile = 0 }
backup { backup = 0 archive = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 event_activation = 0 }
CONF
  local lvm=(env LVM_SYSTEM_DIR="$etc" LVM_SUPPRESS_FD_WARNINGS=1)
  local no=(--driverloaded n -an -Zn -q)
  "${lvm[@]}" pvcreate -q -y "$pv" >/dev/null
  "${lvm[@]}" vgcreate -q -s 4M vg-guest "$pv" >/dev/null 2>&1
  if [ "$segs" = 1 ]; then
    "${lvm[@]}" lvcreate "${no[@]}" -L 160M -n root vg-guest >/dev/null 2>&1
    "${lvm[@]}" lvcreate "${no[@]}" -L 16M -n swap vg-guest >/dev/null 2>&1
  else
    "${lvm[@]}" lvcreate "${no[@]}" -L 64M -n root vg-guest >/dev/null 2>&1
    "${lvm[@]}" lvcreate "${no[@]}" -L 16M -n swap vg-guest >/dev/null 2>&1
    "${lvm[@]}" lvextend --driverloaded n -q -L 160M vg-guest/root >/dev/null 2>&1
  fi
  local pe_start
  pe_start=$("${lvm[@]}" pvs --noheadings --units b --nosuffix -o pe_start "$pv" | tr -d ' ')
  "${lvm[@]}" lvs --noheadings --separator ';' -o lv_name,seg_start_pe,seg_pe_ranges vg-guest \
    > "$work/lvs.txt"
  losetup -d "$pv"
  # Write each filesystem into its LV's extents, as LVM's own tools place them.
  python3 - "$work/lvs.txt" "$pe_start" $(( 49 * M )) "$out" "$work" <<'PY'
import sys
lines, pe_start, part, disk, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
es = 4 << 20
lvs = {}
for l in open(lines):
    name, seg_start, ranges = [x.strip() for x in l.split(';')]
    for r in ranges.split():
        a, b = r.rsplit(':', 1)[1].split('-')
        lvs.setdefault(name, []).append((int(seg_start), part + pe_start + int(a) * es, (int(b) - int(a) + 1) * es))
with open(disk, "r+b") as f:
    for n, pieces in lvs.items():
        data = open(f"{work}/{n}.fs", "rb").read()
        at = 0
        for _, start, length in sorted(pieces):
            f.seek(start); f.write(data[at:at + length]); at += length
        assert at == len(data), (n, at, len(data))
PY
  echo "$out: LVM vg-guest (root in $segs segment(s)), /boot ext4"
}

case $what in
  btrfs) btrfs_guest ;;
  lvm) lvm_guest 1 ;;
  lvm2seg) lvm_guest 2 ;;
  plain) lvm_guest 0 ;;
  *) echo "make-layout-guests.sh: unknown layout $what" >&2; exit 2 ;;
esac
