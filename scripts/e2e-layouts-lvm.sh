# Part of scripts/e2e-layouts.sh, run inside its private mount and PID
# namespace: turns partition 4 (the root ext4) of the Debian image into an
# LVM2 PV of VG vg-guest with LVs root (ext4, 2200 MiB) and swap (128 MiB),
# installs lvm2 from WORKDIR/debs into the guest and points fstab and
# grub.cfg at /dev/mapper/vg--guest-root.
# With VMFINAL_E2E_LVM_LABEL=mbr the disk gets an msdos label instead of
# the GPT (as Debian's installer makes a BIOS guest): p1 /boot (ext4,
# bootable) and p2 the PV, at the same offsets as before; the GPT's BIOS
# boot and swap partitions' space zeroed and unpartitioned; GRUB i386-pc
# installed again by grub-install into the MBR and the gap before p1.
#
#   [VMFINAL_E2E_LVM_LABEL=gpt|mbr] e2e-layouts-lvm.sh IMAGE WORKDIR ROOT_OFF ROOT_SIZE BOOT_OFF BOOT_SIZE
set -euo pipefail
# Mounts only in a private mount namespace of its own.
if [ -z "${VMFINAL_E2E_NS:-}" ]; then
  exec env VMFINAL_E2E_NS=1 unshare --mount --pid --fork --kill-child --propagation private bash "$0" "$@"
fi
img=$1 W=$2 roff=$3 rsize=$4 boff=$5 bsize=$6
[ -n "$img" ] && [ -d "$W" ] || { echo "e2e-layouts-lvm.sh: bad arguments" >&2; exit 2; }
M=$W/m
r=$(losetup -f --show -o "$roff" --sizelimit "$rsize" "$img")
b=$(losetup -f --show -o "$boff" --sizelimit "$bsize" "$img")
lv=
disk=
cleanup() {
  if [ -n "$disk" ]; then
    umount -R "$M" 2>/dev/null || true
    partx -d "$disk" 2>/dev/null || true
    losetup -d "$disk" 2>/dev/null || true
  fi
  umount -R "$M" 2>/dev/null || true
  umount "$W/old" 2>/dev/null || true
  for d in $r $b $lv; do losetup -d "$d" 2>/dev/null || true; done
}
trap cleanup EXIT
old=$(blkid -s UUID -o value "$r")
mkdir -p "$W/old" "$M"
mount -o ro "$r" "$W/old"
tar -C "$W/old" --numeric-owner --xattrs --acls -cf "$W/root.tar" .
umount "$W/old"
wipefs -q -a "$r"
etc=$W/lvm-etc
mkdir -p "$etc"
cat > "$etc/lvm.conf" <<CONF
devices { filter = [ "a|^$r\$|", "r|.*|" ] obtain_device_list_from_udev = 0 external_device_info_source = "none" use_devicesfile = 0 }
backup { backup = 0 archive = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 event_activation = 0 }
CONF
lvm=(env LVM_SYSTEM_DIR="$etc" LVM_SUPPRESS_FD_WARNINGS=1)
"${lvm[@]}" pvcreate -q -y "$r" >/dev/null
"${lvm[@]}" vgcreate -q -s 4M vg-guest "$r" >/dev/null 2>&1
"${lvm[@]}" lvcreate --driverloaded n -an -Zn -q -L 2200M -n root vg-guest >/dev/null 2>&1
"${lvm[@]}" lvcreate --driverloaded n -an -Zn -q -L 128M -n swap vg-guest >/dev/null 2>&1
pe_start=$("${lvm[@]}" pvs --noheadings --units b --nosuffix -o pe_start "$r" | tr -d ' ')
first_pe() { "${lvm[@]}" lvs --noheadings -o seg_pe_ranges "vg-guest/$1" | tr -d ' ' | sed 's/.*://; s/-.*//'; }
rootoff=$(( roff + pe_start + $(first_pe root) * 4194304 ))
swapoff=$(( roff + pe_start + $(first_pe swap) * 4194304 ))
losetup -d "$r"
r=
s=$(losetup -f --show -o "$swapoff" --sizelimit $(( 128 << 20 )) "$img")
mkswap -q -L swap "$s" >/dev/null
losetup -d "$s"
uuid=$(cat /proc/sys/kernel/random/uuid)
# mke2fs writes into the image at the LV's offset itself (no loop device
# whose page cache a busy machine's loop churn could leave stale).
mkfs.ext4 -q -F -U "$uuid" -L root -E offset="$rootoff",nodiscard "$img" 2200M
for try in 1 2 3; do
  lv=$(losetup -f --show -o "$rootoff" --sizelimit $(( 2200 << 20 )) "$img")
  if mount "$lv" "$M"; then break; fi
  losetup -d "$lv"
  lv=
  [ "$try" != 3 ] || { echo "e2e-layouts-lvm.sh: cannot mount the root LV's ext4" >&2; exit 1; }
  sleep 2
done
tar -C "$M" --numeric-owner --xattrs --acls -xf "$W/root.tar"
rm -f "$W/root.tar"
awk '!/^#/ && $2 == "/" { print "/dev/mapper/vg--guest-root / ext4 errors=remount-ro 0 1"; next }
     !/^#/ && $3 == "swap" { print "/dev/vg-guest/swap none swap sw 0 0"; next }
     { print }' "$M/etc/fstab" > "$M/etc/fstab.new"
mv "$M/etc/fstab.new" "$M/etc/fstab"
mount "$b" "$M/boot"
mkdir -p "$M/tmp/e2e-debs"
cp "$W"/debs/*.deb "$M/tmp/e2e-debs/"
mount -t proc proc "$M/proc"
mount -t sysfs sys "$M/sys"
mount -t tmpfs tmpfs "$M/run"
mount -t tmpfs -o mode=0755 dev "$M/dev"
for n in null zero full random urandom tty; do cp -a "/dev/$n" "$M/dev/$n"; done
had_policy=0
[ -e "$M/usr/sbin/policy-rc.d" ] && had_policy=1
[ "$had_policy" = 1 ] || printf '#!/bin/sh\nexit 101\n' > "$M/usr/sbin/policy-rc.d"
chmod +x "$M/usr/sbin/policy-rc.d"
chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
  sh -ec 'dpkg -i /tmp/e2e-debs/*.deb > /tmp/e2e-dpkg.log 2>&1 || { cat /tmp/e2e-dpkg.log; exit 1; }
          update-initramfs -u -k all > /dev/null 2>&1'
rm -rf "$M/tmp/e2e-debs" "$M/tmp/e2e-dpkg.log"
[ "$had_policy" = 1 ] || rm -f "$M/usr/sbin/policy-rc.d"
sed -i "s|root=UUID=$old|root=/dev/mapper/vg--guest-root|g; s|$old|$uuid|g" "$M/boot/grub/grub.cfg"
grep -q "root=/dev/mapper/vg--guest-root" "$M/boot/grub/grub.cfg"

# --- MBR (VMFINAL_E2E_LVM_LABEL=mbr): the msdos label and GRUB in the MBR.
label=${VMFINAL_E2E_LVM_LABEL:-gpt}
if [ "$label" = mbr ]; then
  umount "$M/boot"
  # Between 1 MiB and /boot (the BIOS boot partition's GRUB core) and
  # between /boot and the PV (the old swap partition): unpartitioned, zero.
  fallocate --punch-hole --offset 1048576 --length $(( boff - 1048576 )) "$img"
  fallocate --punch-hole --offset $(( boff + bsize )) --length $(( roff - boff - bsize )) "$img"
  # Both GPT headers and the protective MBR.
  wipefs -q -a -f "$img"
  sfdisk -q "$img" <<PT
label: dos
start=$(( boff / 512 )), size=$(( bsize / 512 )), type=83, bootable
start=$(( roff / 512 )), size=$(( rsize / 512 )), type=8e
PT
  [ "$(sfdisk -J "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["label"])')" = dos ]
  disk=$(losetup -f --show "$img")
  partx -a "$disk"
  dn=$(basename "$disk")
  mount "${disk}p1" "$M/boot"
  for n in "$dn" "${dn}p1" "${dn}p2"; do cp -a "/dev/$n" "$M/dev/$n"; done
  chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    grub-install --target=i386-pc "/dev/$dn" > "$W/grub-install.log" 2>&1 \
    || { cat "$W/grub-install.log" >&2; echo "e2e-layouts-lvm.sh: grub-install into the MBR failed" >&2; exit 1; }
  # grub.cfg was made for the GPT: the partition module and search hints.
  sed -i 's/part_gpt/part_msdos/g; s/,gpt2/,msdos1/g' "$M/boot/grub/grub.cfg"
  grep -q part_msdos "$M/boot/grub/grub.cfg"
  ! grep -q gpt "$M/boot/grub/grub.cfg" || { echo "e2e-layouts-lvm.sh: grub.cfg still names the GPT" >&2; exit 1; }
  umount "$M/boot"
  partx -d "$disk"
  losetup -d "$disk"
  disk=
  # GRUB's boot code in the MBR, its core right after it.
  dd if="$img" bs=512 count=1 status=none | grep -aq GRUB
fi
# --- end of the MBR block
umount -R "$M"
e2fsck -fn "$lv" > /dev/null 2>&1 || { echo "e2e-layouts-lvm.sh: e2fsck failed on the root LV" >&2; exit 1; }
if [ "$label" = mbr ]; then
  echo "e2e-layouts: msdos label: p1 /boot (ext4), p2 the PV; GRUB i386-pc in the MBR"
fi
echo "e2e-layouts: the partition at byte $roff is a PV of vg-guest: LV root (ext4 $uuid) at disk byte $rootoff, LV swap at $swapoff"
