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
mkdir -p "$out"/{qcow2,zst,partitions,ext4,xfs,swap,profile}
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
echo "fuzz/make-corpus.sh: $(find "$out" -type f | wc -l) seeds in $out/"
