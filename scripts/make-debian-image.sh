#!/usr/bin/env bash
# Builds a real, bootable Debian bookworm disk image (raw, sparse) with
# debootstrap, for the finalize and boot tests. Recipe: vm-fixtures/debian/
# (recipe.env: suite, mirrors, sizes, packages; extras.txt: synthetic caches,
# logs and histories in scripts/make-tree.py format; the boot marker unit).
#
#   scripts/make-debian-image.sh OUT.raw [--size 3G] [--cache DIR] [--no-cache]
#
# The image:
#   GPT: p1 BIOS boot (GRUB i386-pc core), p2 ext4 /boot, p3 swap, p4 ext4 /;
#   /etc/fstab by UUID=; GRUB (BIOS) on the serial console, root=UUID=;
#   two kernels (bookworm's versioned cloud kernel, and bookworm-backports'
#   linux-image-cloud-amd64, the newer one and GRUB's default);
#   openssh-server (host keys), a random machine-id, apt's lists and .debs
#   kept, pip/npm/yarn caches, logs (active, rotated, journal), histories,
#   /tmp and /var/tmp files; vmfinal-boot-marker (enabled) for
#   scripts/boot-check.sh.
#
# Caching, under DIR (default /var/tmp/vmfinal-cache):
#   debs/                  debootstrap's downloads
#   base-SUITE-KEY.tar.zst the debootstrapped root with kernels and packages
#                          (KEY: recipe.env + the base-stage code)
#   debian-SUITE-KEY.raw   the finished image (KEY: this script, the whole
#                          recipe directory, make-tree.py, the size), plus
#                          .summary; a hit is a sparse copy (seconds).
# --no-cache ignores (and does not write) both tarball and image.
#
# Needs root, debootstrap, sgdisk (gdisk), sfdisk (fdisk), e2fsprogs,
# util-linux, zstd, python3. Everything is built in a mktemp -d under
# /var/tmp. The kernel's partition parsing and udev are not needed: every
# partition gets its own loop device (--offset/--sizelimit) and the chroot
# gets a private tmpfs /dev with the nodes and /dev/disk/by-uuid links it
# needs. On exit (success or not) the trap unmounts what this script mounted
# (all below its work directory, in reverse order) and detaches only the
# loop devices it attached.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fx=$(cd "$here/../vm-fixtures/debian" && pwd)
usage="usage: make-debian-image.sh OUT.raw [--size 3G] [--cache DIR] [--no-cache]"
out=${1:?$usage}
shift
# shellcheck source=../vm-fixtures/debian/recipe.env
. "$fx/recipe.env"
size=$DISK_SIZE
cache=/var/tmp/vmfinal-cache
use_cache=1
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    --no-cache) use_cache=0; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "make-debian-image.sh: unknown option $1" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "make-debian-image.sh: run as root" >&2; exit 1; }
for t in debootstrap sgdisk sfdisk mkfs.ext4 mkswap losetup zstd python3 numfmt; do
  command -v "$t" >/dev/null || { echo "make-debian-image.sh: missing $t (scripts/install-deps.sh)" >&2; exit 1; }
done
disk_mib=$(( $(numfmt --from=iec "${size%B}") / 1048576 ))
min_mib=$(( BIOS_MIB + BOOT_MIB + SWAP_MIB + 1500 ))
[ "$disk_mib" -ge "$min_mib" ] || { echo "make-debian-image.sh: --size $size is too small (min ${min_mib}M)" >&2; exit 2; }
log() { echo "make-debian-image: [$(( $(date +%s) - t0 ))s] $*"; }
t0=$(date +%s)

# The finished image, cached.
key=$( { cat "$0" "$here/make-tree.py"; for f in "$fx"/*; do echo "== $f"; cat "$f"; done; echo "$disk_mib"; } | sha256sum | cut -c1-16)
cached="$cache/debian-$SUITE-$key.raw"
if [ "$use_cache" = 1 ] && [ -f "$cached" ] && [ -f "$cached.summary" ]; then
  mkdir -p "$(dirname "$out")"
  cp --sparse=always "$cached" "$out.tmp.$$" && mv "$out.tmp.$$" "$out"
  log "$out: copy of the cached $cached"
  cat "$cached.summary"
  exit 0
fi
mkdir -p "$cache/debs"

work=$(mktemp -d /var/tmp/vmfinal-debian.XXXXXX)
loops=()
cleanup() {
  local rc=$? mp l left
  set +e
  trap - EXIT INT TERM HUP
  # Everything mounted below $work is ours (the root, /boot, the chroot's
  # proc/sys/dev/pts/run, anything debootstrap left): newest first.
  for mp in $(awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | tac); do
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || echo "make-debian-image: cannot unmount $mp" >&2
  done
  for (( i=${#loops[@]}-1; i>=0; i-- )); do
    l=${loops[i]}
    losetup -d "$l" 2>/dev/null || echo "make-debian-image: cannot detach $l" >&2
  done
  if [ "$rc" != 0 ]; then
    mkdir -p "$work.logs" && cp "$work"/*.log "$work.logs/" 2>/dev/null
  fi
  left=$(awk -v w="$work/" 'index($5, w) == 1' /proc/self/mountinfo)
  if [ -z "$left" ]; then
    rm -rf --one-file-system "$work"
  else
    echo "make-debian-image: mounts left below $work; not removing it" >&2
  fi
  [ "$rc" = 0 ] || echo "make-debian-image: FAILED (exit $rc); logs in $work.logs" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

M="$work/mnt"        # the image's root filesystem, /boot mounted inside
img="$work/disk.raw"
mkdir -p "$M"

# --- The disk: GPT, one loop device per partition plus the whole disk. ---
truncate -s "${disk_mib}M" "$img"
sgdisk -a 2048 \
  -n "1:2048:+${BIOS_MIB}M" -t 1:EF02 -c 1:bios \
  -n "2:0:+${BOOT_MIB}M" -t 2:8300 -c 2:boot \
  -n "3:0:+${SWAP_MIB}M" -t 3:8200 -c 3:swap \
  -n 4:0:0 -t 4:8300 -c 4:root "$img" >/dev/null
read -r -a geom < <(sfdisk -J "$img" | python3 -c '
import json, sys
ps = json.load(sys.stdin)["partitiontable"]["partitions"]
print(" ".join("%d %d" % (p["start"], p["size"]) for p in ps))')
[ "${#geom[@]}" = 8 ] || { echo "make-debian-image: unexpected partition table" >&2; exit 1; }
attach() { # VAR [losetup options]: attach $img, remember the device
  local var=$1 dev; shift
  dev=$(losetup -f --show "$@" "$img")
  loops+=("$dev")
  printf -v "$var" '%s' "$dev"
}
part() { # VAR N: attach partition N
  attach "$1" --offset $(( geom[2*($2-1)] * 512 )) --sizelimit $(( geom[2*($2-1)+1] * 512 ))
}
attach disk_loop
part boot_loop 2
part swap_loop 3
part root_loop 4
boot_uuid=$(cat /proc/sys/kernel/random/uuid)
swap_uuid=$(cat /proc/sys/kernel/random/uuid)
root_uuid=$(cat /proc/sys/kernel/random/uuid)
mkfs.ext4 -q -F -U "$boot_uuid" -L boot "$boot_loop"
mkswap -U "$swap_uuid" -L swap "$swap_loop" >/dev/null
mkfs.ext4 -q -F -U "$root_uuid" -L root "$root_loop"
mount "$root_loop" "$M"
mkdir "$M/boot"
mount "$boot_loop" "$M/boot"
log "disk $disk_mib MiB: $disk_loop (boot $boot_loop, swap $swap_loop, root $root_loop)"

# --- The chroot environment: fresh proc/sysfs, a private tmpfs /dev. ---
devnums() { printf '%d %d' "0x$(stat -c %t "$1")" "0x$(stat -c %T "$1")"; }
chroot_up() {
  mount -t proc proc "$M/proc"
  mount -t sysfs sysfs "$M/sys"
  mount -t tmpfs -o mode=0755,size=8m vmfinal-dev "$M/dev"
  local d=$M/dev n
  mknod -m 666 "$d/null" c 1 3; mknod -m 666 "$d/zero" c 1 5
  mknod -m 666 "$d/full" c 1 7; mknod -m 666 "$d/random" c 1 8
  mknod -m 666 "$d/urandom" c 1 9; mknod -m 666 "$d/tty" c 5 0
  mknod -m 600 "$d/console" c 5 1
  ln -s /proc/self/fd "$d/fd"; ln -s /proc/self/fd/0 "$d/stdin"
  ln -s /proc/self/fd/1 "$d/stdout"; ln -s /proc/self/fd/2 "$d/stderr"
  mkdir -m 1777 "$d/shm"
  mkdir "$d/pts"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 vmfinal-devpts "$d/pts"
  ln -s pts/ptmx "$d/ptmx"
  # The loop devices under neutral names, never as /dev/loopN (grub-mkconfig's
  # 10_linux skips a root on /dev/loop[0-9]) nor like partitions (vda2:
  # grub then asks the loop device for a disk geometry it lacks). The host's
  # loop names, which grub finds in /proc/self/mountinfo, link to them.
  local n v
  for n in disk:"$disk_loop" boot:"$boot_loop" swap:"$swap_loop" root:"$root_loop"; do
    v=${n%%:*}; n=${n#*:}
    # shellcheck disable=SC2046
    mknod -m 660 "$d/vmf$v" b $(devnums "$n")
    ln -s "vmf$v" "$d/${n#/dev/}"
  done
  mkdir -p "$d/disk/by-uuid"
  ln -s ../../vmfboot "$d/disk/by-uuid/$boot_uuid"
  ln -s ../../vmfswap "$d/disk/by-uuid/$swap_uuid"
  ln -s ../../vmfroot "$d/disk/by-uuid/$root_uuid"
  mount -t tmpfs -o mode=0755,size=64m vmfinal-run "$M/run"
}
chroot_down() {
  local mp
  for mp in run dev/pts dev sys proc; do
    if mountpoint -q "$M/$mp"; then umount "$M/$mp"; fi
  done
}
inchroot() {
  chroot "$M" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}
quiet() { # LOGNAME CMD...: run, output to $work/LOGNAME.log, its tail on failure
  local name=$1; shift
  "$@" >> "$work/$name.log" 2>&1 || { echo "make-debian-image: failed: $*" >&2; tail -n 25 "$work/$name.log" >&2; return 1; }
}

# --- Base stage: debootstrap, apt sources, kernels, packages, caches. ---
# Its code and recipe.env make the key of the cached tarball.
base_stage() {
  quiet debootstrap debootstrap --variant=minbase --include="$INCLUDE" \
    --components="$COMPONENTS" --cache-dir="$cache/debs" "$SUITE" "$M" "$MIRROR"
  chroot_up
  printf '#!/bin/sh\nexit 101\n' > "$M/usr/sbin/policy-rc.d"
  chmod 755 "$M/usr/sbin/policy-rc.d"
  cat > "$M/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE $COMPONENTS
deb $MIRROR $SUITE-updates $COMPONENTS
deb $SECURITY_MIRROR $SUITE-security $COMPONENTS
deb $MIRROR $SUITE-backports $COMPONENTS
SRC
  cat > "$M/etc/apt/apt.conf.d/90vmfinal" <<'APT'
APT::Keep-Downloaded-Packages "true";
APT::Install-Recommends "false";
APT
  rm -f "$M/etc/apt/apt.conf.d/docker-clean"
  echo 'RESUME=none' > "$M/etc/initramfs-tools/conf.d/resume"
  echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | inchroot debconf-set-selections
  quiet apt inchroot apt-get update
  quiet apt inchroot apt-get -y dist-upgrade
  local old
  old=$(inchroot apt-cache depends "$OLD_KERNEL_META" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$old" ] || { echo "make-debian-image: no versioned package behind $OLD_KERNEL_META" >&2; return 1; }
  log "kernels: $old, $NEW_KERNEL_META from $NEW_KERNEL_SUITE"
  quiet apt inchroot apt-get install -y "$old"
  quiet apt inchroot apt-get install -y -t "$NEW_KERNEL_SUITE" "$NEW_KERNEL_META"
  # shellcheck disable=SC2086
  quiet apt inchroot apt-get install -y --download-only $DOWNLOAD_ONLY
  log "pip cache: $PIP_DOWNLOAD; wheel $PIP_WHEEL"
  # shellcheck disable=SC2086
  quiet pip inchroot pip3 download --no-input --retries 0 --timeout 15 -d /tmp/pip-download $PIP_DOWNLOAD ||
    echo "make-debian-image: warning: pip download failed; synthetic pip cache only" >&2
  # shellcheck disable=SC2086
  quiet pip inchroot pip3 wheel --no-input --retries 0 --timeout 15 --no-deps --no-binary :all: -w /var/tmp/pip-wheels $PIP_WHEEL ||
    echo "make-debian-image: warning: pip wheel failed; synthetic pip wheels only" >&2
  rm -f "$M/usr/sbin/policy-rc.d"
  chroot_down
}
base_key=$( { cat "$fx/recipe.env"; declare -f base_stage; } | sha256sum | cut -c1-16)
base_tar="$cache/base-$SUITE-$base_key.tar.zst"
if [ "$use_cache" = 1 ] && [ -f "$base_tar" ]; then
  log "base root from $base_tar"
  tar -C "$M" --numeric-owner --xattrs --xattrs-include='*' --acls -I zstd -xf "$base_tar"
else
  log "debootstrap $SUITE ($MIRROR)"
  base_stage
  if [ "$use_cache" = 1 ]; then
    log "caching the base root as $base_tar"
    tar -C "$M" --numeric-owner --xattrs --xattrs-include='*' --acls --exclude=./lost+found --exclude=./boot/lost+found \
      -I 'zstd -T0 -3' -cf "$base_tar.tmp.$$" . && mv "$base_tar.tmp.$$" "$base_tar"
  fi
fi

# --- Per-image configuration. ---
log "configuring"
chroot_up
mid=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "$mid" > "$M/etc/machine-id"
mkdir -p "$M/var/lib/dbus"
ln -sfn /etc/machine-id "$M/var/lib/dbus/machine-id"
echo "$HOSTNAME" > "$M/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$HOSTNAME" > "$M/etc/hosts"
cat > "$M/etc/fstab" <<FSTAB
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$boot_uuid /boot ext4 defaults 0 2
UUID=$swap_uuid none swap sw 0 0
FSTAB
inchroot sh -c 'id builder >/dev/null 2>&1 || useradd -m -s /bin/bash builder'
echo 'root:vmfinal' | inchroot chpasswd
install -m 0755 "$fx/vmfinal-boot-marker.sh" "$M/usr/local/sbin/vmfinal-boot-marker"
install -m 0644 "$fx/vmfinal-boot-marker.service" "$M/etc/systemd/system/vmfinal-boot-marker.service"
inchroot systemctl enable vmfinal-boot-marker.service ssh.service >/dev/null 2>&1
[ -L "$M/etc/systemd/system/multi-user.target.wants/vmfinal-boot-marker.service" ] || {
  echo "make-debian-image: vmfinal-boot-marker.service not enabled" >&2; exit 1; }

# Caches, logs, histories: the synthetic extras, then real-looking ones.
sed "s/JOURNAL_ID/$mid/g" "$fx/extras.txt" > "$work/extras.txt"
python3 "$here/make-tree.py" "$work/extras.txt" "$M"
cat > "$M/root/.bash_history" <<'HIST'
apt-get update
apt-get -y dist-upgrade
apt-get install -y -t bookworm-backports linux-image-cloud-amd64
pip3 download -d /tmp/pip-download six idna certifi
systemctl status ssh
journalctl -b --no-pager | tail
df -h / /boot
cat /etc/fstab
update-grub
HIST
printf 'ls -la\nsudo -i\nexit\n' >> "$M/home/builder/.bash_history"
chown -R --reference="$M/home/builder/.profile" "$M/home/builder" 2>/dev/null || true
chmod 700 "$M/root/.cache" "$M/root/.npm" 2>/dev/null || true
chmod 600 "$M/root/.bash_history"
# Rotated logs: real gzip of real logs.
gzip -9c "$M/var/log/dpkg.log" > "$M/var/log/dpkg.log.2.gz"
gzip -9c "$M/var/log/apt/history.log" > "$M/var/log/apt/history.log.1.gz"
gzip -9c "$M/var/log/syslog.1" > "$M/var/log/syslog.2.gz"
head -c 300000 "$M/var/log/syslog.1" > "$M/var/log/syslog"
chmod 2755 "$M/var/log/journal" 2>/dev/null || true
printf 'scratch\n' > "$M/tmp/build-notes.txt"
printf 'lock\n' > "$M/var/tmp/apt-dpkg-install.lock"

# --- GRUB: core.img from grub-mkimage (it finds /boot by its UUID), set
# up by grub-bios-setup in the BIOS boot partition; grub.cfg by update-grub.
log "GRUB"
cat > "$M/etc/default/grub" <<'GRUB'
# Written by vmfinal's scripts/make-debian-image.sh.
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
mkdir -p "$M/boot/grub/i386-pc"
cp "$M"/usr/lib/grub/i386-pc/*.mod "$M"/usr/lib/grub/i386-pc/*.lst "$M"/usr/lib/grub/i386-pc/boot.img "$M/boot/grub/i386-pc/"
cat > "$M/boot/grub/i386-pc/load.cfg" <<LOAD
search.fs_uuid $boot_uuid root
set prefix=(\$root)'/grub'
LOAD
quiet grub inchroot grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -c /boot/grub/i386-pc/load.cfg \
  -p /grub biosdisk part_gpt ext2 search_fs_uuid
quiet grub inchroot grub-bios-setup -d /boot/grub/i386-pc /dev/vmfdisk
quiet grub inchroot update-grub
cfg="$M/boot/grub/grub.cfg"
# grub-probe sees each partition as a disk of its own (hostdisk//dev/vmfboot):
# drop those hints; the search --fs-uuid lines find the partitions at boot.
sed -i -e "/^[[:space:]]*set root='hostdisk\/\/dev\//d" -e "s/ --hint='hostdisk\/\/dev\/[^']*'//g" "$cfg"
if grep -q '/dev/loop' "$cfg"; then echo "make-debian-image: $cfg names a loop device" >&2; grep -n /dev/loop "$cfg" >&2; exit 1; fi
grep -q "root=UUID=$root_uuid" "$cfg" || {
  echo "make-debian-image: no root=UUID=$root_uuid in $cfg:" >&2; grep -n -E '^\s*(linux|search|set root)' "$cfg" >&2; exit 1; }

# --- Summary, then unmount and detach. ---
kernels=$(inchroot dpkg-query -W -f='${Package} ${Status}\n' 'linux-image-[0-9]*' | awk '/install ok installed/ {print $1}' | tr '\n' ' ')
default=$(awk '$1 == "linux" {sub("^/boot/|^/", "", $2); print $2; exit}' "$cfg")
chroot_down
rm -f "$M/etc/resolv.conf"
printf 'nameserver 10.0.2.3\n' > "$M/etc/resolv.conf"
fstrim "$M/boot" >/dev/null 2>&1 || true
fstrim "$M" >/dev/null 2>&1 || true
debs=$(find "$M/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | wc -l)
lists=$(find "$M/var/lib/apt/lists" -maxdepth 1 -type f -name '*_Packages*' | wc -l)
{
  echo "make-debian-image summary ($SUITE, $disk_mib MiB GPT disk):"
  df -B1 --output=used,size,target "$M" "$M/boot" | awk -v m="$M" 'NR > 1 {t = $3; sub("^" m, "", t); if (t == "") t = "/"; printf "  %-6s ext4 used %s bytes of %s\n", t, $1, $2}'
  echo "  swap   $(( geom[5] * 512 )) bytes, UUID=$swap_uuid"
  echo "  UUIDs: / $root_uuid, /boot $boot_uuid"
  echo "  kernels: $kernels"
  echo "  GRUB default: $default"
  echo "  apt: $debs .debs in /var/cache/apt/archives, $lists Packages lists"
  echo "  machine-id: $mid"
} > "$work/summary"
sync
umount "$M/boot"
umount "$M"
for (( i=${#loops[@]}-1; i>=0; i-- )); do losetup -d "${loops[i]}"; done
loops=()

mkdir -p "$(dirname "$out")"
if [ "$use_cache" = 1 ]; then
  cp --sparse=always "$img" "$cached.tmp.$$" && mv "$cached.tmp.$$" "$cached"
  cp "$work/summary" "$cached.summary"
fi
mv "$img" "$out" 2>/dev/null || cp --sparse=always "$img" "$out"
log "$out: $(du -k "$out" | cut -f1) KiB allocated of $disk_mib MiB"
cat "$work/summary"
