#!/usr/bin/env bash
# Times vmfinal against its peers, side by side, on the same image in one run:
#   qcow2/zlib  vs qemu-img convert -c (default, and -m 16 -W)
#   qcow2/zstd  vs the same with -o compression_type=zstd
#   .zst        vs zstd -T0 -3 on the raw file
#   expand      of vmfinal's zstd qcow2 vs qemu-img convert -O raw of it, and of
#               vmfinal's .zst vs zstd -d -T0 of it
#   a sparse raw of 1 TiB virtual with 1 GiB of scattered data (peak RSS)
#   and, on a dirtied ext4 (scripts/make-fs-fixtures.sh), vmfinal's
#   filesystem-aware compact vs zerofree + qemu-img convert -c
# and prints, per row, the median wall time, CPU time (user+sys) and its ratio
# to wall (2.0 = both cores of 2 busy all along), peak RSS and output bytes over
# RUNS runs, with the ratios peer/vmfinal (time) and vmfinal/peer (size).
#
#   scripts/bench.sh [--runs N] [--data-mib MIB] [--image RAW] [--workdir DIR] [--skip ROWS]
# --skip takes a comma-separated list of row groups: zlib, zstd, zst, expand,
# sparse, fs (e.g. --skip zlib,fs on a busy machine).
#
# Needs: cargo, qemu-img, zstd, GNU time (/usr/bin/time), e2fsprogs, sfdisk.
set -euo pipefail
runs=3
skip=,
data_mib=2048
image=
workdir=
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --data-mib) data_mib=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --skip) skip=",$2,"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--data-mib MIB] [--image RAW] [--workdir DIR] [--skip ROWS]" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
for t in qemu-img zstd /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "bench.sh: $t is missing" >&2; exit 1; }
done
cargo build --release --quiet
vm="$here/target/release/vmfinal"

own_workdir=
if [ -z "$workdir" ]; then workdir=$(mktemp -d /var/tmp/vmfinal-bench.XXXXXX); own_workdir=1; fi
cleanup() { if [ -n "$own_workdir" ]; then rm -rf "$workdir"; else rm -f "$workdir"/out.*; fi; }
trap cleanup EXIT
if [ -z "$image" ]; then
  image="$workdir/bench.raw"
  "$here/scripts/make-bench-image.sh" "$image" "$data_mib"
fi
cores=$(nproc)
echo "image: $image  virtual $(stat -c %s "$image") B, allocated $(( $(stat -c %b "$image") * 512 )) B; cores: $cores; runs: $runs"

results="$workdir/results.tsv"
: > "$results"
# run NAME OUTFILE CMD...: RUNS timed runs; records wall, cpu, maxrss_kib, bytes.
run() {
  local name=$1 out=$2; shift 2
  local i
  for i in $(seq "$runs"); do
    rm -f "$out"
    sync
    /usr/bin/time -f '%e %U %S %M' -o "$workdir/time.txt" "$@" >/dev/null 2>"$workdir/err.txt" ||
      { echo "bench.sh: '$name' failed:" >&2; cat "$workdir/err.txt" >&2; exit 1; }
    read -r wall usr sys rss < "$workdir/time.txt"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$wall" "$(awk -v a="$usr" -v b="$sys" 'BEGIN{print a+b}')" "$rss" "$(stat -c %s "$out")" >> "$results"
  done
  rm -f "$out"
}

q="$workdir/out.qcow2"; z="$workdir/out.zst"
# Warm the page cache once so every tool reads the same cached file.
cat "$image" > /dev/null
want() { case $skip in *",$1,"*) return 1 ;; esac; }
if want zlib; then
run "vmfinal qcow2 zlib"            "$q" "$vm" compact --format raw -q --force "$image" -o "$q" --compression zlib
run "qemu-img -c zlib"              "$q" qemu-img convert -c -O qcow2 "$image" "$q"
run "qemu-img -c zlib -m16 -W"      "$q" qemu-img convert -c -O qcow2 -m 16 -W "$image" "$q"
fi
if want zstd; then
run "vmfinal qcow2 zstd"            "$q" "$vm" compact --format raw -q --force "$image" -o "$q" --compression zstd
run "qemu-img -c zstd"              "$q" qemu-img convert -c -O qcow2 -o compression_type=zstd "$image" "$q"
run "qemu-img -c zstd -m16 -W"      "$q" qemu-img convert -c -O qcow2 -o compression_type=zstd -m 16 -W "$image" "$q"
fi
if want zst; then
run "vmfinal .zst"                  "$z" "$vm" compact --format raw -q --force "$image" -o "$z"
run "zstd -T0 -3"                   "$z" zstd -q -f -T0 -3 "$image" -o "$z"
fi

# Reading: expand vmfinal's own outputs, against the peers reading the same file.
if want expand; then
iq="$workdir/in.qcow2"; iz="$workdir/in.zst"; r="$workdir/out.raw"
"$vm" compact --format raw -q --force "$image" -o "$iq" --compression zstd
"$vm" compact --format raw -q --force "$image" -o "$iz"
cat "$iq" "$iz" > /dev/null
run "vmfinal expand-qcow2 zstd"     "$r" "$vm" expand --format qcow2 -q --force "$iq" -o "$r"
run "qemu-img convert -O raw"       "$r" qemu-img convert -O raw "$iq" "$r"
# vmfinal fsyncs its output before renaming it into place (it is on disk when
# vmfinal exits); the peers leave it in the page cache. The same with an fsync:
run "qemu-img convert -O raw; sync" "$r" sh -c 'qemu-img convert -O raw "$0" "$1" && sync "$1"' "$iq" "$r"
run "vmfinal expand-.zst"           "$r" "$vm" expand --format zst -q --force "$iz" -o "$r"
run "zstd -d -T0"                   "$r" zstd -q -d -f -T0 "$iz" -o "$r"
run "zstd -d -T0; sync"             "$r" sh -c 'zstd -q -d -f -T0 "$0" -o "$1" && sync "$1"' "$iz" "$r"
rm -f "$iq" "$iz"
fi

# Peak RSS on a sparse raw of 1 TiB virtual with 1 GiB of data in 1 MiB
# pieces scattered over it (every 1 GiB).
if want sparse; then
sp="$workdir/sparse-1t.raw"
python3 - "$sp" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 40)
    chunk = os.urandom(1 << 20)
    for i in range(1024):
        f.seek(i * (1 << 30) + (i * 7919 % 1000) * 4096)
        f.write(chunk[i % 64:] + chunk[:i % 64])
PY
run "vmfinal sparse-1T qcow2 zstd"  "$q" "$vm" compact --format raw -q --force "$sp" -o "$q" --compression zstd
run "vmfinal sparse-1T .zst"        "$z" "$vm" compact --format raw -q --force "$sp" -o "$z"
rm -f "$sp"
fi

# Filesystem-aware rows (root): the dirtied bare ext4 fixture, against the
# zerofree pipeline (sparse copy, zerofree, qemu-img convert -c -m 16 -W).
if ! want fs; then
  :
elif [ "$(id -u)" -eq 0 ] && command -v zerofree >/dev/null; then
  fx="$workdir/fixtures"
  [ -f "$fx/bare-ext4.raw" ] || "$here/scripts/make-fs-fixtures.sh" "$fx" >/dev/null
  dirty="$fx/bare-ext4.raw"
  zf_pipeline() { # CODEC OUT
    cp --sparse=always "$dirty" "$workdir/zf.raw" && zerofree "$workdir/zf.raw" &&
      qemu-img convert -c -O qcow2 -o compression_type="$1" -m 16 -W "$workdir/zf.raw" "$2"
    local rc=$?; rm -f "$workdir/zf.raw"; return $rc
  }
  export -f zf_pipeline; export dirty workdir
  run "vmfinal dirty-ext4 zlib"        "$q" "$vm" compact --format raw -q --force "$dirty" -o "$q" --compression zlib
  run "zerofree+qemu-img zlib"         "$q" bash -c 'zf_pipeline zlib "$0"' "$q"
  run "vmfinal dirty-ext4 zstd"        "$q" "$vm" compact --format raw -q --force "$dirty" -o "$q" --compression zstd
  run "zerofree+qemu-img zstd"         "$q" bash -c 'zf_pipeline zstd "$0"' "$q"
else
  echo "(skipping the zerofree rows: they need root and zerofree)"
fi

python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    name, wall, cpu, rss, size = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append((float(wall), float(cpu), int(rss), int(size)))
med = {n: tuple(statistics.median(x[i] for x in v) for i in range(4)) for n, v in rows.items()}
peers = {
    "qemu-img -c zlib": "vmfinal qcow2 zlib", "qemu-img -c zlib -m16 -W": "vmfinal qcow2 zlib",
    "qemu-img -c zstd": "vmfinal qcow2 zstd", "qemu-img -c zstd -m16 -W": "vmfinal qcow2 zstd",
    "zstd -T0 -3": "vmfinal .zst",
    "qemu-img convert -O raw": "vmfinal expand-qcow2 zstd", "zstd -d -T0": "vmfinal expand-.zst",
    "qemu-img convert -O raw; sync": "vmfinal expand-qcow2 zstd", "zstd -d -T0; sync": "vmfinal expand-.zst",
    "zerofree+qemu-img zlib": "vmfinal dirty-ext4 zlib", "zerofree+qemu-img zstd": "vmfinal dirty-ext4 zstd",
}
print(f"{'tool':30} {'wall s':>8} {'cpu s':>8} {'cpu/wall':>8} {'RSS MiB':>8} {'output MiB':>11} {'speedup':>8} {'size':>7}")
for n, (wall, cpu, rss, size) in med.items():
    extra = ""
    if n in peers:
        v = med.get(peers[n])
        if v is None:
            print(f"{n:30} {wall:8.2f} {cpu:8.2f} {cpu / max(wall, 0.01):8.2f} {rss / 1024:8.1f} {size / 2**20:11.1f}")
            continue
        extra = f"{wall / v[0]:7.2f}x {v[3] / size:6.3f}x"
    print(f"{n:30} {wall:8.2f} {cpu:8.2f} {cpu / max(wall, 0.01):8.2f} {rss / 1024:8.1f} {size / 2**20:11.1f} {extra}")
print("speedup = peer wall / vmfinal wall (higher is better for vmfinal); size = vmfinal bytes / peer bytes (lower is better)")
PY
