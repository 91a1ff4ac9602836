#!/usr/bin/env bash
# End to end on a real Debian guest with its root on btrfs subvolumes (run
# by .ci/run after scripts/e2e.sh, reusing its cached image):
#   1. the Debian image of scripts/make-debian-image.sh (cached), its root
#      ext4 rebuilt as btrfs with subvolumes @ (/), @home
#      (/home), @var (/var) mounted by fstab; btrfs added to the initramfs,
#      rootflags=subvol=@ in grub.cfg (/boot stays ext4);
#   2. vmfinal finalize --profiles defaults -> qcow2: the kernels step has
#      work (two kernels, dpkg --purge of the old one regenerates grub.cfg
#      in the sandbox); btrfs check --readonly on the expanded artifact, the
#      cleaned files gone, /home's files intact, one kernel;
#   3. boot the artifact under TCG to the marker;
#   4. finalize the artifact again (the kernels step has nothing to do):
#      btrfs check clean again, and it boots;
#   5. the same Debian guest with its root and swap on LVM2 LVs, on an
#      msdos label (p1 /boot ext4, p2 a PV; GRUB i386-pc in the MBR;
#      lvm2 installed in the guest from Debian's archive, see
#      e2e-layouts-lvm.sh): finalize (the root LV mapped by a loop device at
#      its offset), e2fsck -fn on the artifact's LV, boot; its artifact
#      within 5% of the same guest's with the LV's bytes on partition 2;
#   6. (uefi) the same Debian guest as a UEFI guest (e2e-layouts-uefi.sh):
#      GPT with an ESP (FAT32, mkfs.vfat + mtools) at /boot/efi by UUID (no
#      nofail) and an xfs root, grub-efi-amd64 from Debian's archive;
#      finalize (where the host kernel has no vfat, --skip-unmountable and
#      its warning; a run without it refused), xfs_repair -n on the
#      artifact's root, fsck.fat -n on its ESP (byte-identical to the
#      input's when it was not mounted), boot under OVMF (q35, TCG).
#
#   7. (first, in its own script) the MBR LVM guest (p2 the PV) with its
#      root LV in two scattered segments: finalize through vmfinal's FUSE
#      view of the LV, e2fsck -fn on the artifact's LV, boot
#      (e2e-layouts-lvm2seg.sh; `--only lvm2seg` runs just this).
#
#   scripts/e2e-layouts.sh [--workdir DIR] [--keep] [--only btrfs|lvm|lvm-gpt|lvm2seg|uefi]
# Needs root, btrfs-progs, lvm2, xfsprogs, dosfstools, mtools, ovmf,
# qemu-system-x86, network (apt-get download of lvm2 and grub-efi-amd64 for
# the guests). Six TCG boots of 70-130 s each here.
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=/var/tmp
keep=0
only=
while [ $# -gt 0 ]; do
  case $1 in
    --workdir) workdir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --only) only=$2; shift 2 ;;
    *) echo "e2e-layouts.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case $only in
  ''|btrfs|lvm|lvm-gpt|lvm2seg|uefi) ;;
  *) echo "e2e-layouts.sh: --only takes btrfs, lvm, lvm-gpt, lvm2seg or uefi" >&2; exit 2 ;;
esac
# The LVM guest's partition table: msdos (the default run), or the GPT of
# the Debian image (--only lvm-gpt; not in the default run).
lvm_label=mbr
[ "$only" != lvm-gpt ] || lvm_label=gpt
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
cargo build --release --locked -q
V=$PWD/target/release/vmfinal
W=$(mktemp -d "$workdir/vmfinal-e2e-layouts.XXXXXX")
[ "$keep" = 1 ] || trap 'rm -rf "$W"' EXIT
t() { date +%s.%N; }
el() { python3 -c "print(f'{$2 - $1:.1f}')"; }

scripts/make-debian-image.sh "$W/debian.raw"
# Partition 2 is /boot, 4 the root (see make-debian-image.sh).
part() { # N -> "OFFSET SIZE" in bytes
  sfdisk -J "$W/debian.raw" | python3 -c "import json,sys; p=json.load(sys.stdin)['partitiontable']['partitions'][$1-1]; print(p['start']*512, p['size']*512)"
}
read -r roff rsize <<< "$(part 4)"
read -r boff bsize <<< "$(part 2)"
rm -f "$W/debian.raw"

if [ -z "$only" ] || [ "$only" = lvm2seg ]; then
  bash scripts/e2e-layouts-lvm2seg.sh "$W" "$V" "$roff" "$rsize" "$boff" "$bsize"
  [ "$only" != lvm2seg ] || { echo "e2e-layouts: all checks passed (lvm2seg only)"; exit 0; }
fi

if [ -z "$only" ] || [ "$only" = btrfs ]; then
echo "== 1. the Debian guest on btrfs subvolumes"
img=$W/btrfs.raw
scripts/make-debian-image.sh "$img" >/dev/null
unshare --mount --pid --fork --kill-child --propagation private bash -euc '
  img=$1 W=$2 roff=$3 rsize=$4 boff=$5 bsize=$6
  r=$(losetup -f --show -o "$roff" --sizelimit "$rsize" "$img")
  b=$(losetup -f --show -o "$boff" --sizelimit "$bsize" "$img")
  trap "umount -R $W/m 2>/dev/null || true; umount $W/old 2>/dev/null || true; losetup -d $r $b 2>/dev/null || true" EXIT
  old=$(blkid -s UUID -o value "$r")
  # A UUID of its own (copies of the cached image may be attached elsewhere).
  uuid=$(cat /proc/sys/kernel/random/uuid)
  mkdir -p "$W/old" "$W/m"
  mount -o ro "$r" "$W/old"
  tar -C "$W/old" --numeric-owner --xattrs --acls -cf "$W/root.tar" .
  umount "$W/old"
  mkfs.btrfs -q -f -U "$uuid" -L root "$r" >/dev/null
  mount "$r" "$W/m"
  for s in @ @home @var; do btrfs -q subvolume create "$W/m/$s" >/dev/null; done
  umount "$W/m"
  M=$W/m
  mount -o subvol=@ "$r" "$M"
  mkdir -p "$M/home" "$M/var" "$M/boot"
  mount -o subvol=@home "$r" "$M/home"
  mount -o subvol=@var "$r" "$M/var"
  tar -C "$M" --numeric-owner --xattrs --acls -xf "$W/root.tar"
  rm -f "$W/root.tar"
  python3 - "$M/etc/fstab" "$uuid" <<PY
import sys
p, u = sys.argv[1], sys.argv[2]
out = []
for l in open(p):
    f = l.split()
    if len(f) >= 2 and f[1] in ("/", "/home", "/var") and not l.startswith("#"):
        if f[1] != "/":
            continue
        out.append(f"UUID={u} / btrfs subvol=@ 0 0\n")
        out.append(f"UUID={u} /home btrfs subvol=@home 0 0\n")
        out.append(f"UUID={u} /var btrfs subvol=@var 0 0\n")
    else:
        out.append(l)
open(p, "w").write("".join(out))
PY
  # Files that must survive in /home.
  mkdir -p "$M/home/builder/project"
  head -c 2000000 /dev/urandom > "$M/home/builder/project/data.bin"
  sha256sum < "$M/home/builder/project/data.bin" > "$W/home.sha"
  mount "$b" "$M/boot"
  # The initramfs must mount a btrfs root.
  echo btrfs >> "$M/etc/initramfs-tools/modules"
  mount -t proc proc "$M/proc"
  mount -t sysfs sys "$M/sys"
  mount -t tmpfs tmpfs "$M/run"
  mount -t tmpfs -o mode=0755 dev "$M/dev"
  for n in null zero full random urandom tty; do cp -a "/dev/$n" "$M/dev/$n"; done
  chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    update-initramfs -u -k all >/dev/null 2>&1
  sed -i "s|$old|$uuid|g; s|\(linux\s.*root=UUID=$uuid\)|\1 rootflags=subvol=@|" "$M/boot/grub/grub.cfg"
  grep -q "rootflags=subvol=@" "$M/boot/grub/grub.cfg"
  umount -R "$M"
  btrfs check --readonly "$r" >/dev/null 2>&1
  echo "e2e-layouts: root $uuid is btrfs: @ @home @var"
' sh "$img" "$W" "$roff" "$rsize" "$boff" "$bsize"

# The artifact's btrfs: checked by btrfs itself; the cleaned files gone,
# /home intact; prints the kernel count.
check_btrfs() { # IMAGE.raw
  unshare --mount --propagation private bash -euc '
    img=$1 W=$2 roff=$3 rsize=$4
    r=$(losetup -r -f --show -o "$roff" --sizelimit "$rsize" "$img")
    trap "umount $W/c 2>/dev/null || true; losetup -d $r" EXIT
    btrfs check --readonly "$r" > "$W/check.log" 2>&1 || { cat "$W/check.log" >&2; echo "e2e-layouts: btrfs check failed" >&2; exit 1; }
    mkdir -p "$W/c"
    mount -o ro "$r" "$W/c"
    ! ls "$W/c/@var/cache/apt/archives/" | grep -q "\.deb$" || { echo "e2e-layouts: .deb files left in /var" >&2; exit 1; }
    [ ! -s "$W/c/@/etc/machine-id" ] || { echo "e2e-layouts: machine-id not emptied" >&2; exit 1; }
    ! ls "$W/c/@/etc/ssh/" | grep -q "^ssh_host_" || { echo "e2e-layouts: host keys left" >&2; exit 1; }
    sha256sum < "$W/c/@home/builder/project/data.bin" | cmp -s - "$W/home.sha" || { echo "e2e-layouts: /home changed" >&2; exit 1; }
    umount "$W/c"
  ' sh "$1" "$W" "$roff" "$rsize"
  echo "e2e-layouts: $(basename "$1"): btrfs check clean, cleaned files gone, /home intact"
}

echo "== 2. finalize (the kernels step has work)"
t0=$(t)
"$V" finalize --format raw --profiles defaults --json -o "$W/final.qcow2" "$img" > "$W/final.json"
t_fin=$(el "$t0" "$(t)")
python3 - "$W/final.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
g = r["guest"]
devs = {m["device"] for m in g["mounts"] if m["fstype"] == "btrfs"}
assert len([m for m in g["mounts"] if m["fstype"] == "btrfs"]) == 3 and len(devs) == 1, g["mounts"]
k = [p for p in g["profiles"] if p["name"] == "kernels"][0]
assert any(s.get("remove_packages") for s in k["steps"]), "the kernels step had nothing to do"
assert [v["check"] for v in g["verified"]].count("btrfs check --readonly") == 1, g["verified"]
print("e2e-layouts: / /home /var on one device; old kernel purged; verified:",
      ", ".join(f"{v['volume']} {v['check']}" for v in g["verified"]))
PY
"$V" expand --format qcow2 -q -o "$W/final.raw" "$W/final.qcow2"
check_btrfs "$W/final.raw"
rm -f "$W/final.raw" "$img"

echo "== 3. boot the artifact"
scripts/boot-check.sh "$W/final.qcow2" --timeout 300

echo "== 4. finalize again (the kernels step has nothing to do)"
t0=$(t)
"$V" finalize --format qcow2 --profiles defaults --json -o "$W/again.qcow2" "$W/final.qcow2" > "$W/again.json"
t_again=$(el "$t0" "$(t)")
python3 - "$W/again.json" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))["guest"]
k = [p for p in g["profiles"] if p["name"] == "kernels"][0]
assert not any(s.get("remove_packages") for s in k["steps"]), "the kernels step should have nothing to do"
PY
"$V" expand --format qcow2 -q -o "$W/again.raw" "$W/again.qcow2"
check_btrfs "$W/again.raw"
rm -f "$W/again.raw"
scripts/boot-check.sh "$W/again.qcow2" --timeout 300
echo "e2e-layouts: btrfs: finalize $t_fin s -> $(( $(stat -c %s "$W/final.qcow2") / 1048576 )) MiB; again $t_again s -> $(( $(stat -c %s "$W/again.qcow2") / 1048576 )) MiB"
rm -f "$W/again.qcow2" "$W/final.qcow2"
fi
[ "$only" != btrfs ] || { echo "e2e-layouts: all checks passed (btrfs only)"; exit 0; }

# --- 6. the UEFI guest (ESP + xfs root): its own block.
e2e_uefi() {
  echo "== 6. the Debian guest as a UEFI guest: ESP (FAT) at /boot/efi, / on xfs"
  local img=$W/uefi.raw t0 t_build t_fin out eoff esize xoff xsize euuid xuuid vfat skip x e
  t0=$(t)
  scripts/make-debian-image.sh "$img" >/dev/null
  mkdir -p "$W/debs-uefi"
  (cd "$W/debs-uefi" && apt-get download -q grub-efi-amd64 grub-efi-amd64-bin >/dev/null 2>&1)
  ls "$W"/debs-uefi/grub-efi-amd64_*.deb "$W"/debs-uefi/grub-efi-amd64-bin_*.deb >/dev/null
  out=$(bash scripts/e2e-layouts-uefi.sh "$img" "$W")
  printf '%s\n' "$out" | sed '$d'
  read -r eoff esize xoff xsize euuid xuuid <<< "$(printf '%s\n' "$out" | tail -1)"
  [ -n "$xuuid" ]
  t_build=$(el "$t0" "$(t)")
  vfat=0
  skip=()
  if grep -qw vfat /proc/filesystems; then
    vfat=1
  else
    skip=(--skip-unmountable)
    # Without the flag the run stops before any workspace, naming the ESP.
    if "$V" finalize --dry-run --format raw --profiles defaults -q -o "$W/refused.qcow2" "$img" 2> "$W/uefi-refused.err"; then
      echo "e2e-layouts: uefi: finalize without --skip-unmountable did not refuse the unmountable ESP" >&2
      return 1
    fi
    if ! grep -q "/boot/efi (UUID=$euuid).*--skip-unmountable" "$W/uefi-refused.err"; then
      cat "$W/uefi-refused.err" >&2
      echo "e2e-layouts: uefi: the refusal does not name /boot/efi" >&2
      return 1
    fi
    [ ! -e "$W/refused.qcow2" ]
    echo "e2e-layouts: uefi: no vfat in this kernel: refused without --skip-unmountable: $(head -1 "$W/uefi-refused.err")"
  fi
  t0=$(t)
  if ! "$V" finalize --format raw --profiles defaults --json "${skip[@]}" -o "$W/uefi.qcow2" "$img" > "$W/uefi.json" 2> "$W/uefi.err"; then
    cat "$W/uefi.err" >&2
    return 1
  fi
  t_fin=$(el "$t0" "$(t)")
  python3 scripts/e2e-layouts-uefi-check.py "$W/uefi.json" "$W/uefi.err" "$vfat" "$euuid"
  "$V" expand --format qcow2 -q -o "$W/uefi-final.raw" "$W/uefi.qcow2"
  x=$(losetup -r -f --show -o "$xoff" --sizelimit "$xsize" "$W/uefi-final.raw")
  e=$(losetup -r -f --show -o "$eoff" --sizelimit "$esize" "$W/uefi-final.raw")
  if ! xfs_repair -n "$x" > "$W/uefi-xfs.log" 2>&1; then
    losetup -d "$x" "$e"
    cat "$W/uefi-xfs.log" >&2
    echo "e2e-layouts: uefi: xfs_repair -n failed on the artifact's root" >&2
    return 1
  fi
  if ! fsck.fat -n "$e" > "$W/uefi-fat.log" 2>&1; then
    losetup -d "$x" "$e"
    cat "$W/uefi-fat.log" >&2
    echo "e2e-layouts: uefi: fsck.fat -n failed on the artifact's ESP" >&2
    return 1
  fi
  losetup -d "$x" "$e"
  if [ "$vfat" = 0 ]; then
    if ! cmp -s -i "$eoff:$eoff" -n "$esize" "$img" "$W/uefi-final.raw"; then
      echo "e2e-layouts: uefi: the ESP was not mounted but its bytes changed" >&2
      return 1
    fi
    echo "e2e-layouts: uefi: xfs_repair -n and fsck.fat -n clean on the artifact; its ESP byte-identical to the input's"
  else
    echo "e2e-layouts: uefi: xfs_repair -n and fsck.fat -n clean on the artifact"
  fi
  rm -f "$W/uefi-final.raw" "$img"
  scripts/boot-check.sh "$W/uefi.qcow2" --uefi --timeout 300
  echo "e2e-layouts: uefi: built in $t_build s; finalize $t_fin s -> $(stat -c %s "$W/uefi.qcow2") bytes"
  rm -f "$W/uefi.qcow2"
}
if [ -z "$only" ] || [ "$only" = uefi ]; then e2e_uefi; fi
[ "$only" != uefi ] || { echo "e2e-layouts: all checks passed (uefi only)"; exit 0; }
# --- end of the UEFI block

echo "== 5. the Debian guest with its root and swap on LVM"
# /boot ext4 as before; the root partition an LVM2 PV of VG vg-guest with LVs root
# (ext4, one segment) and swap; lvm2 installed in the guest from Debian's
# archive (its initramfs activates the VG). The host's LVM only writes the
# metadata (no activation, no device-mapper); the root filesystem is
# written into the LV's extents through a loop device at its offset.
img=$W/lvm.raw
scripts/make-debian-image.sh "$img" >/dev/null
mkdir -p "$W/debs"
(cd "$W/debs" && apt-get download -q lvm2 dmsetup dmeventd libdevmapper1.02.1 libdevmapper-event1.02.1 \
  liblvm2cmd2.03 libaio1 libedit2 libbsd0 libmd0 lsb-base >/dev/null 2>&1)
ls "$W"/debs/lvm2_*.deb >/dev/null
# On an msdos label (p1 /boot, p2 the PV; GRUB in the MBR), as Debian's
# installer makes a BIOS guest with LVM (--only lvm-gpt: the GPT, p4 the PV).
VMFINAL_E2E_LVM_LABEL=$lvm_label bash scripts/e2e-layouts-lvm.sh \
  "$img" "$W" "$roff" "$rsize" "$boff" "$bsize"
t0=$(t)
"$V" finalize --format raw --profiles defaults --json -o "$W/lvm.qcow2" "$img" > "$W/lvm.json"
t_lvm=$(el "$t0" "$(t)")
read -r lstart lsize < <(python3 scripts/e2e-layouts-check.py "$W/lvm.json")
"$V" expand --format qcow2 -q -o "$W/lvm-final.raw" "$W/lvm.qcow2"
l=$(losetup -r -f --show -o "$lstart" --sizelimit "$lsize" "$W/lvm-final.raw")
e2fsck -fn "$l" >/dev/null 2>&1 || { losetup -d "$l"; echo "e2e-layouts: e2fsck failed on the root LV of the artifact" >&2; exit 1; }
losetup -d "$l"
rm -f "$W/lvm-final.raw"
# The same guest without LVM, for size: the PV's partition holds the root LV's
# very bytes (its ext4) instead of the PV, the rest of it empty.
cp --sparse=always "$img" "$W/plain.raw"
fallocate --punch-hole --offset "$roff" --length "$rsize" "$W/plain.raw"
dd if="$img" of="$W/plain.raw" bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes \
  skip="$lstart" seek="$roff" count="$lsize" conv=notrunc,sparse status=none
rm -f "$img"
echo "e2e-layouts: lvm: / on LV vg-guest/root through one loop device; e2fsck -fn clean on the artifact's LV"
scripts/boot-check.sh "$W/lvm.qcow2" --timeout 300
"$V" finalize --format raw --profiles defaults -q -o "$W/plain.qcow2" "$W/plain.raw"
a=$(stat -c %s "$W/lvm.qcow2")
p=$(stat -c %s "$W/plain.qcow2")
echo "e2e-layouts: lvm: finalize $t_lvm s -> $a bytes; the same guest without LVM -> $p bytes"
python3 -c "import sys; a, p = $a, $p; print(f'e2e-layouts: LVM artifact {(a - p) * 100 / p:+.1f}% against the plain one'); sys.exit(0 if a <= p * 1.05 else 1)" \
  || { echo "e2e-layouts: the LVM artifact is more than 5% larger" >&2; exit 1; }
echo "e2e-layouts: all checks passed"
