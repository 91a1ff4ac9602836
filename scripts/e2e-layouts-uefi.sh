# Part of scripts/e2e-layouts.sh: turns a copy of the Debian image of
# scripts/make-debian-image.sh (GPT: p1 BIOS boot, p2 /boot ext4, p3 swap,
# p4 ext4 /) into a UEFI guest laid out as Debian's installer lays one out:
#   GPT: p1 EFI system partition (FAT32, 301 MiB, over the old p1 + p2),
#        p2 swap (the old p3, unchanged), p3 xfs / (the old p4's tree with
#        the old /boot's in /boot);
#   fstab: / and the ESP at /boot/efi (vfat umask=0077 0 1, no nofail) by
#   UUID; grub-pc replaced by grub-efi-amd64 (from WORKDIR/debs, downloaded
#   from Debian's archive by the caller), grub.cfg made by update-grub
#   (root=UUID= of the xfs), xfs in the initramfs; GRUB's EFI image (made by
#   grub-mkimage as grub-install --removable makes it: search.fs_uuid of the
#   root, prefix /boot/grub) copied into the ESP's EFI/BOOT/BOOTX64.EFI
#   and EFI/debian/grubx64.efi with mtools (this host kernel has no vfat).
# Prints "ESP_OFF ESP_SIZE ROOT_OFF ROOT_SIZE ESP_UUID ROOT_UUID" last.
#
#   e2e-layouts-uefi.sh IMAGE WORKDIR
set -euo pipefail
# Mounts only in a private mount namespace of its own.
if [ -z "${VMFINAL_E2E_NS:-}" ]; then
  exec env VMFINAL_E2E_NS=1 unshare --mount --pid --fork --kill-child --propagation private bash "$0" "$@"
fi
img=$1 W=$2
[ -f "$img" ] && [ -d "$W" ] || { echo "e2e-layouts-uefi.sh: bad arguments" >&2; exit 2; }
M=$W/um
O=$W/uold
mkdir -p "$M" "$O"
d=
cleanup() {
  umount -R "$M" 2>/dev/null || true
  umount -R "$O" 2>/dev/null || true
  if [ -n "$d" ]; then
    partx -d "$d" 2>/dev/null || true
    losetup -d "$d" 2>/dev/null || true
  fi
}
trap cleanup EXIT
sectors() { # N -> "START SIZE" in sectors of partition N
  sfdisk -J "$img" | python3 -c "import json,sys; p=json.load(sys.stdin)['partitiontable']['partitions'][$1-1]; print(p['start'], p['size'])"
}
read -r s1 n1 <<< "$(sectors 1)"
read -r s2 n2 <<< "$(sectors 2)"
read -r s3 n3 <<< "$(sectors 3)"
read -r s4 n4 <<< "$(sectors 4)"
[ $(( s1 + n1 )) = "$s2" ] || { echo "e2e-layouts-uefi.sh: p1 and p2 are not back to back" >&2; exit 1; }

# The old tree, /boot included.
d=$(losetup -f --show "$img")
partx -a "$d"
mount -o ro "${d}p4" "$O"
mount -o ro "${d}p2" "$O/boot"
swap_uuid=$(blkid -s UUID -o value "${d}p3")
tar -C "$O" --numeric-owner --xattrs --acls -cf "$W/uefi-root.tar" .
umount "$O/boot" "$O"
partx -d "$d"
losetup -d "$d"
d=

# The new table over the same disk: the ESP over the old p1 + p2 (zeroed
# first), the swap as it was, the root where it was.
fallocate --punch-hole --offset $(( s1 * 512 )) --length $(( (n1 + n2) * 512 )) "$img"
fallocate --punch-hole --offset $(( s4 * 512 )) --length $(( n4 * 512 )) "$img"
sfdisk -q "$img" 2>/dev/null <<PT
label: gpt
start=$s1, size=$(( n1 + n2 )), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI System Partition"
start=$s3, size=$n3, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap
start=$s4, size=$n4, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
PT
root_uuid=$(cat /proc/sys/kernel/random/uuid)
volid=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ' | tr a-f A-F)
esp_uuid="${volid:0:4}-${volid:4:4}"
d=$(losetup -f --show "$img")
partx -a "$d"
l=$(basename "$d")
mkfs.xfs -q -f -m uuid="$root_uuid" -L root "${d}p3"
mkfs.vfat -F 32 -n EFI -i "$volid" "${d}p1" >/dev/null
[ "$(blkid -s UUID -o value "${d}p1")" = "$esp_uuid" ] || { echo "e2e-layouts-uefi.sh: the ESP's UUID is not $esp_uuid" >&2; exit 1; }

mount "${d}p3" "$M"
tar -C "$M" --numeric-owner --xattrs --acls -xf "$W/uefi-root.tar"
rm -f "$W/uefi-root.tar"
cat > "$M/etc/fstab" <<FSTAB
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
UUID=$root_uuid /               xfs     defaults        0       1
UUID=$esp_uuid  /boot/efi       vfat    umask=0077      0       1
UUID=$swap_uuid none            swap    sw              0       0
FSTAB
mkdir -p "$M/boot/efi"
echo xfs >> "$M/etc/initramfs-tools/modules"
mkdir -p "$M/tmp/e2e-debs"
cp "$W"/debs-uefi/*.deb "$M/tmp/e2e-debs/"
mount -t proc proc "$M/proc"
mount -t sysfs sys "$M/sys"
mount -t tmpfs tmpfs "$M/run"
mount -t tmpfs -o mode=0755 dev "$M/dev"
for n in null zero full random urandom tty; do cp -a "/dev/$n" "$M/dev/$n"; done
for n in "$l" "${l}p1" "${l}p2" "${l}p3"; do cp -a "/dev/$n" "$M/dev/$n"; done
mkdir -p "$M/dev/disk/by-uuid" "$M/dev/pts"
ln -s "../../${l}p3" "$M/dev/disk/by-uuid/$root_uuid"
ln -s "../../${l}p1" "$M/dev/disk/by-uuid/$esp_uuid"
ln -s "../../${l}p2" "$M/dev/disk/by-uuid/$swap_uuid"
ln -s /proc/self/fd "$M/dev/fd"
had_policy=0
[ -e "$M/usr/sbin/policy-rc.d" ] && had_policy=1
[ "$had_policy" = 1 ] || printf '#!/bin/sh\nexit 101\n' > "$M/usr/sbin/policy-rc.d"
chmod +x "$M/usr/sbin/policy-rc.d"
cat > "$M/tmp/load.cfg" <<CFG
search.fs_uuid $root_uuid root
set prefix=(\$root)'/boot/grub'
CFG
chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
  sh -ec '{ dpkg -r grub-pc && dpkg -i /tmp/e2e-debs/*.deb; } > /tmp/e2e-dpkg.log 2>&1 || { cat /tmp/e2e-dpkg.log; exit 1; }
          update-initramfs -u -k all > /dev/null 2>&1
          update-grub 2>/dev/null
          mkdir -p /boot/grub/x86_64-efi
          cp /usr/lib/grub/x86_64-efi/*.mod /usr/lib/grub/x86_64-efi/*.lst /boot/grub/x86_64-efi/
          grub-mkimage -O x86_64-efi -o /tmp/BOOTX64.EFI -c /tmp/load.cfg -p /boot/grub \
            part_gpt part_msdos xfs fat ext2 search search_fs_uuid normal'
[ "$had_policy" = 1 ] || rm -f "$M/usr/sbin/policy-rc.d"
cfg=$M/boot/grub/grub.cfg
if grep -q "root=/dev/loop" "$cfg"; then echo "e2e-layouts-uefi.sh: grub.cfg names a loop device" >&2; exit 1; fi
grep -q "root=UUID=$root_uuid" "$cfg" || { echo "e2e-layouts-uefi.sh: grub.cfg has no root=UUID=$root_uuid" >&2; exit 1; }
grep -q "linux.*/boot/vmlinuz-" "$cfg" || { echo "e2e-layouts-uefi.sh: grub.cfg loads no kernel from /boot" >&2; exit 1; }
! grep -q "^ii  grub-pc " <(chroot "$M" dpkg -l grub-pc 2>/dev/null) || { echo "e2e-layouts-uefi.sh: grub-pc still installed" >&2; exit 1; }
export MTOOLS_SKIP_CHECK=1
# (mtools says it "could not get geometry" of a partition device: harmless.)
mmd -i "${d}p1" ::/EFI ::/EFI/BOOT ::/EFI/debian 2>/dev/null
mcopy -i "${d}p1" "$M/tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI 2>/dev/null
mcopy -i "${d}p1" "$M/tmp/BOOTX64.EFI" ::/EFI/debian/grubx64.efi 2>/dev/null
rm -rf "$M/tmp/e2e-debs" "$M/tmp/e2e-dpkg.log" "$M/tmp/load.cfg" "$M/tmp/BOOTX64.EFI"
umount -R "$M"
xfs_repair -n "${d}p3" > /dev/null 2>&1 || { echo "e2e-layouts-uefi.sh: xfs_repair -n failed on the new root" >&2; exit 1; }
fsck.fat -n "${d}p1" > "$W/uefi-fsck.log" 2>&1 || { cat "$W/uefi-fsck.log" >&2; echo "e2e-layouts-uefi.sh: fsck.fat -n failed on the ESP" >&2; exit 1; }
mdir -i "${d}p1" -b ::/EFI/BOOT 2>/dev/null | grep -q BOOTX64.EFI
partx -d "$d"
losetup -d "$d"
d=
echo "e2e-layouts: UEFI guest: ESP (FAT32 $esp_uuid) at /boot/efi, / on xfs $root_uuid, grub-efi-amd64"
echo "$(( s1 * 512 )) $(( (n1 + n2) * 512 )) $(( s4 * 512 )) $(( n4 * 512 )) $esp_uuid $root_uuid"
