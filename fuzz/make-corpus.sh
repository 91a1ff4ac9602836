#!/usr/bin/env bash
# Builds the fuzz seed corpora from real images made by the real tools:
# qemu-img/qemu-io (qcow2 with 512-byte clusters: small but complete),
# vmfinal compact (seekable .zst), sfdisk (MBR with logical partitions, GPT),
# mkfs.ext4, mkfs.xfs, mkswap. Seeds are cut to the bytes the parsers read
# first; only seeds of at most 8 KiB are kept (and committed).
#
#   fuzz/make-corpus.sh [VMFINAL]     (default: target/release/vmfinal)
set -euo pipefail
cd "$(dirname "$0")"
vmfinal=${1:-../target/release/vmfinal}
out=corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"/{qcow2,zst,partitions,ext4,xfs,swap,profile,lvm,btrfs,fat,ntfs,pkgdb,fstab}
keep() { # keep SRC TARGET NAME [BYTES]: the first BYTES (default all) if <= 8 KiB
  local n=${4:-}
  if [ -n "$n" ]; then head -c "$n" "$1" > "$tmp/cut"; else cp "$1" "$tmp/cut"; fi
  if [ "$(stat -c %s "$tmp/cut")" -le 8192 ]; then cp "$tmp/cut" "$out/$2/$3"; fi
}

# qcow2: 512-byte clusters keep whole images tiny.
q() { qemu-img create -q -f qcow2 -o "$1" "$tmp/q.qcow2" "$2"; shift 2
      for c in "$@"; do qemu-io -c "$c" "$tmp/q.qcow2" >/dev/null; done; }
q cluster_size=512 4k;                                   keep "$tmp/q.qcow2" qcow2 empty
q cluster_size=512 16k "write -P 0x5a 0 1k" "write -z 2k 1k"; keep "$tmp/q.qcow2" qcow2 data
q cluster_size=512,compat=0.10 8k "write -P 7 512 512";  keep "$tmp/q.qcow2" qcow2 v2
q cluster_size=512,refcount_bits=1 8k "write -P 1 0 512"; keep "$tmp/q.qcow2" qcow2 refcount1
q cluster_size=512,refcount_bits=64 8k "write -P 1 0 512"; keep "$tmp/q.qcow2" qcow2 refcount64
q cluster_size=16k,extended_l2=on 64k "write -P 3 0 2k" "write -z 4k 2k"; keep "$tmp/q.qcow2" qcow2 extl2 8192
head -c 2048 /dev/urandom > "$tmp/r.raw"; printf 'qcow2 seed text %.0s' {1..100} >> "$tmp/r.raw"
truncate -s 4k "$tmp/r.raw"
qemu-img convert -c -O qcow2 -o cluster_size=512 "$tmp/r.raw" "$tmp/q.qcow2"; keep "$tmp/q.qcow2" qcow2 zlib
qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd "$tmp/r.raw" "$tmp/q.qcow2"; keep "$tmp/q.qcow2" qcow2 zstd
q cluster_size=512 4k "write -P 9 0 512"; qemu-img snapshot -c s1 "$tmp/q.qcow2"; keep "$tmp/q.qcow2" qcow2 snapshot
q cluster_size=512 4k; qemu-img bitmap --add "$tmp/q.qcow2" b0; keep "$tmp/q.qcow2" qcow2 bitmap
qemu-img create -q -f qcow2 -F raw -b "$tmp/r.raw" -o cluster_size=512 "$tmp/q.qcow2"; keep "$tmp/q.qcow2" qcow2 backing

# .zst from vmfinal itself (64 KiB frames), small disks.
truncate -s 256k "$tmp/z.raw"; printf 'zst seed %.0s' {1..500} | dd of="$tmp/z.raw" conv=notrunc status=none
"$vmfinal" compact -q --format raw --frame-size 64K "$tmp/z.raw" -o "$tmp/z.zst"; keep "$tmp/z.zst" zst data
truncate -s 128k "$tmp/e.raw"
"$vmfinal" compact -q --format raw --frame-size 64K "$tmp/e.raw" -o "$tmp/e.zst"; keep "$tmp/e.zst" zst empty
printf 'x' > "$tmp/one"; zstd -q -f "$tmp/one" -o "$tmp/plain.zst"; keep "$tmp/plain.zst" zst plain

# Partition tables (the first sectors; GPT's backup needs the last ones too).
truncate -s 2M "$tmp/p.raw"
printf 'label: dos\n,256K,83\n,512K,5\n,128K,83\n,128K,83\n' | sfdisk -q "$tmp/p.raw" >/dev/null
keep "$tmp/p.raw" partitions mbr-logical 4096
rm -f "$tmp/p.raw"; truncate -s 64k "$tmp/p.raw"
printf 'label: gpt\nfirst-lba: 34\n,8K\n,8K\n' | sfdisk -q "$tmp/p.raw" >/dev/null 2>&1 || true
keep "$tmp/p.raw" partitions gpt 8192

# Filesystems: the first bytes (superblock, descriptors, bitmaps of small ones).
rm -f "$tmp/f.raw"; truncate -s 1M "$tmp/f.raw"
mkfs.ext4 -q -F -b 1024 -N 16 -O ^has_journal,^resize_inode "$tmp/f.raw"; keep "$tmp/f.raw" ext4 small 8192
rm -f "$tmp/f.raw"; truncate -s 300M "$tmp/f.raw"
mkfs.xfs -q -f "$tmp/f.raw" >/dev/null 2>&1 && keep "$tmp/f.raw" xfs head 8192
rm -f "$tmp/f.raw"; truncate -s 64k "$tmp/f.raw"
mkswap -q -L seed "$tmp/f.raw" >/dev/null 2>&1 || mkswap "$tmp/f.raw" >/dev/null; keep "$tmp/f.raw" swap small 8192

# Profiles: the built-in ones (`--set` lines first).
for f in ../profiles/*.yaml; do
  n=$(basename "$f" .yaml)
  { echo "# kernels.keep=2"; cat "$f"; } > "$tmp/p.yaml"; keep "$tmp/p.yaml" profile "$n"
done
# Sparse seeds (common/sparse.rs): a disk's non-zero 4 KiB blocks, kept
# if at most 256 KiB (btrfs trees and NTFS's MFT lie megabytes apart).
sparse() { # sparse IMAGE TARGET NAME [ff]: with ff, all-0xff blocks (NTFS's empty $LogFile) are left out
  python3 - "$1" "$tmp/cut" "${4:-}" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
n = (len(d) + 4095) // 4096
out = [struct.pack("<I", n)]
for i in range(n):
    b = d[i * 4096:(i + 1) * 4096]
    if b.strip(b"\0") and not (sys.argv[3] == "ff" and not b.strip(b"\xff")):
        out.append(struct.pack("<I", i) + b.ljust(4096, b"\0"))
open(sys.argv[2], "wb").write(b"".join(out))
EOF
  if [ "$(stat -c %s "$tmp/cut")" -le 262144 ]; then cp "$tmp/cut" "$out/$2/$3"; fi
}

# btrfs (mkfs.btrfs: the smallest it makes), with a few files.
rm -f "$tmp/f.raw"; truncate -s 120M "$tmp/f.raw"
mkfs.btrfs -q -f -m single -d single "$tmp/f.raw" >/dev/null; sparse "$tmp/f.raw" btrfs empty
rm -f "$tmp/f.raw"; truncate -s 120M "$tmp/f.raw"
mkfs.btrfs -q -f --mixed "$tmp/f.raw" >/dev/null 2>&1 && sparse "$tmp/f.raw" btrfs mixed
# vfat: FAT12 and FAT16 with files written by mtools, FAT32.
for spec in "12 1M" "16 8M" "32 34M"; do
  set -- $spec; rm -f "$tmp/f.raw"; truncate -s "$2" "$tmp/f.raw"
  mkfs.vfat -F "$1" -s 1 -n SEED "$tmp/f.raw" >/dev/null 2>&1 || continue
  head -c 10000 /dev/urandom > "$tmp/blob"; printf 'hello\n' > "$tmp/small"
  mmd -i "$tmp/f.raw" ::/dir && mcopy -i "$tmp/f.raw" "$tmp/blob" ::/dir/blob && mcopy -i "$tmp/f.raw" "$tmp/small" ::/small
  mdel -i "$tmp/f.raw" ::/dir/blob
  sparse "$tmp/f.raw" fat "fat$1"
done
# NTFS (mkntfs, quick format), as made and after ntfs-3g's tools wrote a file.
rm -f "$tmp/f.raw"; truncate -s 2M "$tmp/f.raw"
mkntfs -q -F -f -L seed "$tmp/f.raw" >/dev/null 2>&1; sparse "$tmp/f.raw" ntfs empty ff
if command -v ntfscp >/dev/null; then
  ntfscp -f "$tmp/f.raw" "$tmp/blob" blob >/dev/null 2>&1 && sparse "$tmp/f.raw" ntfs file ff
fi
# LVM2 (pvcreate/vgcreate/lvcreate on a loop device, never activated; its
# own config and state so the host's LVM is neither read nor changed).
lvm_seed() {
  local loop; truncate -s 16M "$tmp/lvm.raw"
  loop=$(losetup -f --show "$tmp/lvm.raw")
  export LVM_SYSTEM_DIR="$tmp/lvmetc"; mkdir -p "$LVM_SYSTEM_DIR"
  printf 'devices { filter = [ "a|^%s$|", "r|.*|" ] use_devicesfile = 0 }\nactivation { udev_sync = 0 udev_rules = 0 }\nbackup { backup = 0 archive = 0 }\nglobal { locking_dir = "%s" }\n' \
    "$loop" "$tmp/lvmetc" > "$LVM_SYSTEM_DIR/lvm.conf"
  local rc=0
  { pvcreate -q -y "$loop" && vgcreate -q -s 1M vgseed "$loop" &&
    lvcreate -q --driverloaded n -an -Zn -L 4M -n root vgseed && lvcreate -q --driverloaded n -an -Zn -L 2M -n home vgseed &&
    lvcreate -q --driverloaded n -an -Zn -L 1M -n tail vgseed && lvextend -q --driverloaded n -L 2M vgseed/tail; } >/dev/null 2>&1 || rc=1
  losetup -d "$loop"; unset LVM_SYSTEM_DIR
  return $rc
}
if command -v pvcreate >/dev/null && lvm_seed; then
  # An ext4 inside LV root (its first extent: 1 MiB PE start + 0).
  mkfs.ext4 -q -F -b 1024 -N 16 -O ^has_journal,^resize_inode -E offset=1048576 "$tmp/lvm.raw" 4096 >/dev/null 2>&1 || true
  sparse "$tmp/lvm.raw" lvm vg
fi
# Package databases (pkgdb: first byte 0 dpkg, 1 apk, 2 an rpm header blob).
{ printf '\0'; head -c 6000 /var/lib/dpkg/status | sed '$d'; } > "$tmp/p"; keep "$tmp/p" pkgdb dpkg
{ printf '\1'; sed -n 's|^text /lib/apk/db/installed ||p' ../vm-fixtures/alpine/tree.txt | sed 's/\\n/\n/g'; } > "$tmp/p"
keep "$tmp/p" pkgdb apk
if command -v rpmbuild >/dev/null; then
  echo "rpmdb /db bash-5.2.26-3.fc40:1K" > "$tmp/r.txt"
  python3 ../scripts/make-tree.py "$tmp/r.txt" "$tmp/rt" >/dev/null 2>&1 &&
    { printf '\2'; sqlite3 "$tmp/rt/db/rpmdb.sqlite" "SELECT hex(blob) FROM Packages LIMIT 1" | xxd -r -p; } > "$tmp/p" &&
    keep "$tmp/p" pkgdb rpm
fi
# fstab: the forms vmfinal resolves, then the same over an MBR disk.
printf '%s\n' '# <fs> <mp> <type> <opts> <dump> <pass>' 'UUID=0a1b2c3d-1111-2222-3333-444455556666 / ext4 errors=remount-ro 0 1' \
  'LABEL=boot /boot ext4 defaults 0 2' 'PARTUUID=12345678-02 /home xfs defaults 0 2' '/dev/mapper/vg--guest-var /var btrfs subvol=@var 0 0' \
  '/dev/vg/swap none swap sw 0 0' '/dev/disk/by-uuid/ABCD-1234 /boot/efi vfat umask=0077,nofail 0 1' 'tmpfs /tmp tmpfs defaults 0 0' \
  '/srv/a\040b /mnt/a\040b none bind 0 0' > "$tmp/fstab"
keep "$tmp/fstab" fstab plain
cp "$out/partitions/mbr-logical" "$tmp/fd"; dd if="$tmp/fstab" of="$tmp/fd" bs=1 seek=1024 conv=notrunc status=none
keep "$tmp/fd" fstab mbr
echo "fuzz/make-corpus.sh: $(find "$out" -type f | wc -l) seeds in $out/"
