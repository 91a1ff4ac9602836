#!/usr/bin/env bash
# The golden-image pipeline people run today against `vmfinal finalize`, on
# copies of the same Debian image (scripts/make-debian-image.sh), in one run:
#   (a) bento-style: in a chroot, apt-get clean, purge the old kernel, rm docs,
#       caches, lists, tmp, logs truncated, machine-id and ssh host keys;
#       dd zero-fill of / and /boot; then qemu-img convert -c (zlib, zstd)
#   (b) virt-sysprep, then virt-sparsify --compress (Debian's libguestfs-tools
#       1.48 in a tool chroot, scripts/make-guestfs-chroot.sh; direct backend, TCG)
#   (c) zerofree on every ext filesystem, then qemu-img convert -c (zlib, zstd)
#   (d) vmfinal finalize --profiles defaults,+docs (zlib, zstd)
#   (d') the same plus examples/profiles/bento-parity.yaml: bento's extra
#       deletions (all of /var/cache, copyright files), for equal content
# Each row: wall seconds, peak RSS (the largest process), artifact bytes, and
# vmfinal's speedup and size ratio against it (same codec).
#   (e) vmfinal finalize --profiles defaults against vmfinal compact of the same
#       input with the same options (zstd qcow2), and finalize --workspace copy
#       (the full raw copy): medians of 3 of wall and CPU seconds, peak RSS,
#       and finalize's extra disk use (the overlay) against the guest's used bytes
#
#   scripts/bench-pipeline.sh [--image RAW] [--workdir DIR] [--skip-guestfs] [--only-e]
# Needs root. The (b) chroot takes several minutes to build the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
image=
workdir=/var/tmp
skip_gfs=0
only_e=0
while [ $# -gt 0 ]; do
  case $1 in
    --image) image=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --skip-guestfs) skip_gfs=1; shift ;;
    --only-e) only_e=1; skip_gfs=1; shift ;;
    *) echo "bench-pipeline.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
cargo build --release --locked -q
V=$repo/target/release/vmfinal
W=$(mktemp -d "$workdir/vmfinal-benchpipe.XXXXXX")
trap 'rm -rf "$W"' EXIT
if [ -z "$image" ]; then image=$W/debian.raw; scripts/make-debian-image.sh "$image" >/dev/null; fi
gfs=
if [ "$skip_gfs" = 0 ]; then gfs=$(scripts/make-guestfs-chroot.sh); fi

res=$W/results.tsv
: > "$res"

# (e) finalize vs compact of the same input, same options; medians of 3.
# The page cache is warmed once (not dropped): every run reads the same
# cached input, so the rows compare CPU and waiting, not the disk.
e_rows() {
  local e=$W/e.tsv i row
  : > "$e"
  cat "$image" > /dev/null
  for i in 1 2 3; do
    for row in compact finalize finalize-copy; do
      local cmd=("$V" compact --format raw -q --force --compression zstd -o "$W/e.qcow2" "$image")
      case $row in
        finalize) cmd=("$V" finalize --format raw --json --force --profiles defaults --compression zstd --tmp "$W" -o "$W/e.qcow2" "$image") ;;
        finalize-copy) cmd=("$V" finalize --format raw --json --force --profiles defaults --compression zstd --tmp "$W" --workspace copy -o "$W/e.qcow2" "$image") ;;
      esac
      sync
      /usr/bin/time -f '%e %U %S %M' -o "$W/t" "${cmd[@]}" > "$W/e.json" 2> "$W/log.e" ||
        { echo "bench-pipeline: (e) $row failed:" >&2; tail -20 "$W/log.e" >&2; exit 1; }
      qemu-img check -q "$W/e.qcow2"
      python3 - "$row" "$W/t" "$W/e.json" "$W/e.qcow2" >> "$e" <<'PY'
import json, os, sys
row, t, j, art = sys.argv[1:5]
wall, usr, sys_, rss = open(t).read().split()
ov = used = ""
if row.startswith("finalize"):
    d = json.load(open(j))
    ov = d["workspace"].get("overlay_allocated_bytes") or ""
    used = sum(f["used_before"] for f in d["guest"]["filesystems"])
    if row == "finalize-copy":
        ov = d["workspace_allocated_bytes"]
print(f"{row}\t{wall}\t{float(usr) + float(sys_):.2f}\t{rss}\t{os.path.getsize(art)}\t{ov}\t{used}")
PY
    done
  done
  echo "(e) vmfinal finalize vs compact, $(basename "$image"), --compression zstd, medians of 3 (warm page cache)"
  python3 - "$e" <<'PY'
import sys, statistics, collections
rows = collections.OrderedDict()
for l in open(sys.argv[1]):
    r = l.rstrip("\n").split("\t")
    rows.setdefault(r[0], []).append(r)
med = lambda v, i: statistics.median(float(x[i]) for x in v)
cw = med(rows["compact"], 1)
print("| row | wall s | cpu s | cpu/wall | peak RSS MiB | artifact MiB | wall / compact | extra disk | of guest used |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for n, v in rows.items():
    w, c = med(v, 1), med(v, 2)
    extra = pct = ""
    if v[0][5]:
        ov, used = med(v, 5), med(v, 6)
        extra, pct = f"{ov / 2**20:.1f} MiB", f"{100 * ov / used:.2f}%"
    print(f"| {n} | {w:.2f} | {c:.2f} | {c / w:.2f} | {med(v, 3) / 1024:.0f} | {med(v, 4) / 2**20:.1f} | {w / cw:.2f} | {extra} | {pct} |")
PY
}
if [ "$only_e" = 1 ]; then e_rows; exit 0; fi
# timed NAME CMD...: runs CMD; sets T_WALL (s) and T_RSS (KiB, largest process)
timed() {
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f '%e %M' -o "$W/t" "$@" > "$W/log.$name" 2>&1 ||
    { echo "bench-pipeline: $name failed:" >&2; tail -20 "$W/log.$name" >&2; exit 1; }
  read -r T_WALL T_RSS < "$W/t"
}
record() { # ROW WALL RSS_KIB ARTIFACT
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(stat -c %s "$4")" >> "$res"
}
fresh() { rm -f "$W/work.raw"; cp --sparse=always "$image" "$W/work.raw"; }
ext_parts() {
  sfdisk -J "$1" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    if p["type"] == "0FC63DAF-8483-4772-8E79-3D69D8477DE4":
        print(p["start"] * 512, p["size"] * 512)'
}

# (a) bento-style.
cat > "$W/bento.sh" <<'SH'
#!/bin/bash
# Mounts root (largest ext partition) and /boot of $1 in this private
# namespace, cleans like bento's cleanup scripts, zero-fills, unmounts.
set -euo pipefail
img=$1; shift
read -r bo bs <<< "$1"; read -r ro rs <<< "$2"
M=$(mktemp -d /var/tmp/vmfinal-bento.XXXXXX)
mount -o loop,offset=$ro,sizelimit=$rs "$img" "$M"
mount -o loop,offset=$bo,sizelimit=$bs "$img" "$M/boot"
mount -t proc proc "$M/proc"; mount --bind /dev "$M/dev"; mount -t tmpfs tmpfs "$M/run"
ch() { chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
kernels=$(ch dpkg-query -W -f='${Package} ${Status}\n' 'linux-image-[0-9]*' | awk '/ installed$/ {print $1}' | grep -v -- '-unsigned$' | sort -V)
newest=$(tail -1 <<< "$kernels")
old=$(grep -vx "$newest" <<< "$kernels" || true)
[ -z "$old" ] || ch apt-get -y -qq purge $old
ch apt-get -y -qq autoremove --purge
ch apt-get -y clean
rm -rf "$M"/var/lib/apt/lists/* "$M"/usr/share/doc/* "$M"/usr/share/man/* "$M"/usr/share/info/*
find "$M/var/cache" -type f -delete
rm -rf "$M"/root/.cache "$M"/root/.npm "$M"/home/*/.cache "$M"/home/*/.npm
find "$M/var/log" -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.journal' -o -name '*.journal~' \) -delete
find "$M/var/log" -type f -exec truncate -s 0 {} +
rm -rf "$M"/tmp/* "$M"/var/tmp/* "$M"/etc/ssh/ssh_host_* "$M"/root/.bash_history "$M"/home/*/.bash_history
truncate -s 0 "$M/etc/machine-id"
umount "$M/run" "$M/dev" "$M/proc"
for d in "$M/boot" "$M"; do
  dd if=/dev/zero of="$d/EMPTY" bs=1M status=none 2>/dev/null || true
  sync; rm -f "$d/EMPTY"
done
umount "$M/boot" "$M"; rmdir "$M"
SH
chmod +x "$W/bento.sh"
bp=$(ext_parts "$image" | sort -k2 -n | head -1); rp=$(ext_parts "$image" | sort -k2 -n | tail -1)
fresh
timed a-clean unshare --mount --propagation private "$W/bento.sh" "$W/work.raw" "$bp" "$rp"; a_wall=$T_WALL a_rss=$T_RSS
for c in zlib zstd; do
  timed "a-convert-$c" qemu-img convert -c -O qcow2 -o compression_type=$c "$W/work.raw" "$W/a-$c.qcow2"; w=$T_WALL r=$T_RSS
  record "(a) bento-style cleanup + dd zero-fill + qemu-img convert -c ($c)" \
    "$(python3 -c "print(round($a_wall + $w, 1))")" "$(( a_rss > r ? a_rss : r ))" "$W/a-$c.qcow2"
done

# (b) virt-sysprep + virt-sparsify --compress.
if [ -n "$gfs" ]; then
  fresh
  mkdir -p "$gfs/work"
  cat > "$W/gfs.sh" <<'SH'
#!/bin/bash
set -euo pipefail
g=$1 w=$2 what=$3
mount -t proc proc "$g/proc"; mount -t sysfs sys "$g/sys"; mount --bind /dev "$g/dev"
mount -t tmpfs tmpfs "$g/tmp"; mount --bind "$w" "$g/work"
ge() { chroot "$g" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp \
  LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg "$@"; }
case $what in
  sysprep) ge virt-sysprep -q -a /work/work.raw ;;
  sparsify) ge virt-sparsify -q --compress --convert qcow2 /work/work.raw /work/b-zlib.qcow2 ;;
esac
SH
  chmod +x "$W/gfs.sh"
  timed b-sysprep unshare --mount --pid --fork --propagation private "$W/gfs.sh" "$gfs" "$W" sysprep; s_wall=$T_WALL s_rss=$T_RSS
  timed b-sparsify unshare --mount --pid --fork --propagation private "$W/gfs.sh" "$gfs" "$W" sparsify; p_wall=$T_WALL p_rss=$T_RSS
  record "(b) virt-sysprep + virt-sparsify --compress (zlib)" \
    "$(python3 -c "print(round($s_wall + $p_wall, 1))")" "$(( s_rss > p_rss ? s_rss : p_rss ))" "$W/b-zlib.qcow2"
fi

# (c) zerofree + qemu-img convert -c.
fresh
cat > "$W/zerofree.sh" <<'SH'
#!/bin/bash
set -euo pipefail
img=$1; shift
for p in "$@"; do
  read -r o s <<< "$p"
  l=$(losetup -f --show --offset "$o" --sizelimit "$s" "$img")
  zerofree "$l" || { losetup -d "$l"; exit 1; }
  losetup -d "$l"
done
SH
chmod +x "$W/zerofree.sh"
timed c-zerofree "$W/zerofree.sh" "$W/work.raw" "$bp" "$rp"; z_wall=$T_WALL z_rss=$T_RSS
for c in zlib zstd; do
  timed "c-convert-$c" qemu-img convert -c -O qcow2 -o compression_type=$c "$W/work.raw" "$W/c-$c.qcow2"; w=$T_WALL r=$T_RSS
  record "(c) zerofree + qemu-img convert -c ($c)" \
    "$(python3 -c "print(round($z_wall + $w, 1))")" "$(( z_rss > r ? z_rss : r ))" "$W/c-$c.qcow2"
done

# (d) vmfinal finalize; (d') plus bento's extra deletions, for a
# like-for-like artifact size (examples/profiles/bento-parity.yaml).
for c in zlib zstd; do
  timed "d-$c" "$V" finalize --format raw -q --profiles defaults,+docs --compression $c -o "$W/d-$c.qcow2" "$image"; w=$T_WALL r=$T_RSS
  record "(d) vmfinal finalize --profiles defaults,+docs ($c)" "$w" "$r" "$W/d-$c.qcow2"
  qemu-img check "$W/d-$c.qcow2" >/dev/null
done
for c in zlib zstd; do
  timed "p-$c" "$V" finalize --format raw -q --profiles defaults,+docs --profile-file examples/profiles/bento-parity.yaml \
    --compression $c -o "$W/p-$c.qcow2" "$image"; w=$T_WALL r=$T_RSS
  record "(d') vmfinal finalize, same deletions as (a) ($c)" "$w" "$r" "$W/p-$c.qcow2"
done

e_rows
echo "image: $(basename "$image"), $(( $(stat -c %s "$image") >> 20 )) MiB virtual, $(( $(stat -c %b "$image") * 512 >> 20 )) MiB allocated; $(nproc) cores; $(date -u +%F)"
python3 - "$res" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
vm = {("zstd" if "zstd" in r[0] else "zlib"): r for r in rows if r[0].startswith("(d)")}
par = {("zstd" if "zstd" in r[0] else "zlib"): r for r in rows if r[0].startswith("(d')")}
print(f"| pipeline | wall s | peak RSS MiB | artifact MiB | vmfinal (d) speedup | (d) size / it | (d') size / it |")
print(f"|---|---:|---:|---:|---:|---:|---:|")
for name, wall, rss, size in rows:
    codec = "zstd" if "zstd" in name else "zlib"
    ours = name.startswith("(d")
    d, p = vm[codec], par.get(codec)
    sp = "" if ours else f"{float(wall) / float(d[1]):.2f}x"
    ratio = "" if ours else f"{int(d[3]) / int(size):.3f}"
    pr = "" if ours or not p else f"{int(p[3]) / int(size):.3f}"
    bold = "**" if ours else ""
    print(f"| {bold}{name}{bold} | {float(wall):.1f} | {int(rss) / 1024:.0f} | {int(size) / 2**20:.1f} | {sp} | {ratio} | {pr} |")
PY
