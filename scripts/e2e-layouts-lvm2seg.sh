#!/usr/bin/env bash
# Part of scripts/e2e-layouts.sh (`--only lvm2seg`): the Debian guest with
# its root LV in two scattered segments. The MBR LVM guest of
# e2e-layouts-lvm.sh (root 2200 MiB then swap 128 MiB on the PV in
# partition 2, msdos label) has the last 160 MiB of its root LV moved past the swap LV,
# as a `pvmove` of those extents would leave it: the bytes are copied there
# (the old place punched to zeros) and the LVM metadata rewritten with two
# segments (scripts/lvm-move-extents.py with lvm-edit-meta.py: checksums
# fixed, so the guest's own LVM activates it at boot). Then: finalize (the root LV served as one file
# through vmfinal's FUSE view of its pieces), the report's checks, e2fsck
# -fn on the artifact's LV (its pieces concatenated with dd), and a TCG boot
# to the marker.
#
#   e2e-layouts-lvm2seg.sh WORKDIR VMFINAL ROOT_OFF ROOT_SIZE BOOT_OFF BOOT_SIZE
# Needs what e2e-layouts.sh needs. One TCG boot.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$1 V=$2 roff=$3 rsize=$4 boff=$5 bsize=$6
[ -d "$W" ] && [ -x "$V" ] || { echo "e2e-layouts-lvm2seg.sh: bad arguments" >&2; exit 2; }
t() { date +%s.%N; }
el() { python3 -c "print(f'{$2 - $1:.1f}')"; }
echo "== lvm2seg: the Debian guest with its root LV in two scattered segments"
img=$W/lvm2seg.raw
scripts/make-debian-image.sh "$img" >/dev/null
if ! ls "$W"/debs/lvm2_*.deb >/dev/null 2>&1; then
  mkdir -p "$W/debs"
  (cd "$W/debs" && apt-get download -q lvm2 dmsetup dmeventd libdevmapper1.02.1 libdevmapper-event1.02.1 \
    liblvm2cmd2.03 libaio1 libedit2 libbsd0 libmd0 lsb-base >/dev/null 2>&1)
  ls "$W"/debs/lvm2_*.deb >/dev/null
fi
# On the msdos label, as the default LVM guest (the PV stays at ROOT_OFF).
VMFINAL_E2E_LVM_LABEL=mbr bash scripts/e2e-layouts-lvm.sh "$img" "$W" "$roff" "$rsize" "$boff" "$bsize"

# Move root's last 40 extents (160 MiB) past the swap LV.
python3 scripts/lvm-move-extents.py "$img" "$roff" root 40

t0=$(t)
"$V" finalize --format raw --profiles defaults --json -o "$W/lvm2seg.qcow2" "$img" > "$W/lvm2seg.json"
t_fin=$(el "$t0" "$(t)")
pieces=$(python3 scripts/e2e-layouts-check.py "$W/lvm2seg.json" --segments)
rm -f "$img"
"$V" expand --format qcow2 -q -o "$W/lvm2seg-final.raw" "$W/lvm2seg.qcow2"
rm -f "$W/lvm2seg-lv.img"
at=0
for pc in $pieces; do
  s=${pc%%:*} n=${pc##*:}
  dd if="$W/lvm2seg-final.raw" of="$W/lvm2seg-lv.img" bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes \
    skip="$s" seek="$at" count="$n" conv=notrunc,sparse status=none
  at=$(( at + n ))
done
rm -f "$W/lvm2seg-final.raw"
e2fsck -fn "$W/lvm2seg-lv.img" >/dev/null 2>&1 || { echo "e2e-layouts: lvm2seg: e2fsck failed on the artifact's root LV" >&2; exit 1; }
rm -f "$W/lvm2seg-lv.img"
echo "e2e-layouts: lvm2seg: / on LV vg-guest/root in 2 scattered segments ($pieces) through its FUSE view; e2fsck -fn clean on the artifact's LV"
scripts/boot-check.sh "$W/lvm2seg.qcow2" --timeout 300
echo "e2e-layouts: lvm2seg: finalize $t_fin s -> $(stat -c %s "$W/lvm2seg.qcow2") bytes; booted"
rm -f "$W/lvm2seg.qcow2"
