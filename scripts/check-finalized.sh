#!/usr/bin/env bash
# Checks a finalized Debian image (raw, a scratch copy: it is mounted
# read-write for the chroot checks) against what `--profiles defaults`
# promises:
#   e2fsck -fn clean on every ext filesystem; dpkg --audit empty and
#   apt-get check passing in a chroot; exactly one linux-image-* installed
#   and only its files in /boot and /lib/modules; no .deb in apt's archives;
#   /etc/machine-id empty; no ssh host keys; grub.cfg by UUID, no loop device.
# With --original RAW also compares used space (df) before and after with
# the report's freed bytes (--report JSON): they must agree within 1%.
#
#   scripts/check-finalized.sh FINAL.raw [--original ORIG.raw --report REPORT.json]
set -euo pipefail
img=${1:?usage: check-finalized.sh FINAL.raw [--original ORIG.raw --report REPORT.json]}
shift
orig= report=
while [ $# -gt 0 ]; do
  case $1 in
    --original) orig=$2; shift 2 ;;
    --report) report=$2; shift 2 ;;
    *) echo "check-finalized: unknown option $1" >&2; exit 2 ;;
  esac
done
fail=0
bad() { echo "check-finalized: FAIL: $*" >&2; fail=1; }
good() { echo "check-finalized: ok: $*"; }

# Partitions: "start size type" per line (bytes).
parts() {
  sfdisk -J "$1" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
for p in t["partitions"]:
    print(p["start"] * 512, p["size"] * 512, p["type"])'
}
ext_parts() { parts "$1" | awk '$3 == "0FC63DAF-8483-4772-8E79-3D69D8477DE4" {print $1, $2}'; }

loops=()
cleanup() { for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done; }
trap cleanup EXIT

while read -r off size; do
  l=$(losetup -r -f --show --offset "$off" --sizelimit "$size" "$img"); loops+=("$l")
  if e2fsck -fn "$l" >/dev/null 2>&1; then good "e2fsck -fn clean at offset $off"; else bad "e2fsck -fn at offset $off"; e2fsck -fn "$l" | tail -5; fi
  losetup -d "$l"
done < <(ext_parts "$img")

used_of() { # IMG: total used bytes of its ext filesystems (df)
  local total=0
  while read -r off size; do
    local u
    u=$(unshare --mount --propagation private sh -c '
      d=$(mktemp -d); mount -o ro,noload,loop,offset=$2,sizelimit=$3 "$1" "$d"
      df -B1 --output=used "$d" | tail -1; umount "$d"; rmdir "$d"' sh "$1" "$off" "$size")
    total=$(( total + u ))
  done < <(ext_parts "$1")
  echo "$total"
}
if [ -n "$orig" ]; then
  before=$(used_of "$orig"); after=$(used_of "$img")
  freed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["guest"]["freed_bytes"])' "$report")
  diff=$(( before - after ))
  if python3 -c 'import sys; f,d=int(sys.argv[1]),int(sys.argv[2]); sys.exit(0 if abs(f-d) <= 0.01*d else 1)' "$freed" "$diff"; then
    good "report frees $freed bytes; df shows $diff less used (within 1%)"
  else
    bad "report frees $freed bytes but df shows $diff less used"
  fi
fi

# The guest tree, in a private namespace: root + /boot, chroot checks.
root_part=$(ext_parts "$img" | sort -k2 -n | tail -1)
boot_part=$(ext_parts "$img" | sort -k2 -n | head -1)
unshare --mount --pid --fork --kill-child --propagation private bash -euc '
  img=$1; read -r ro rs <<< "$2"; read -r bo bs <<< "$3"
  M=$(mktemp -d /var/tmp/vmfinal-check.XXXXXX)
  mount -o loop,offset=$ro,sizelimit=$rs "$img" "$M"
  mount -o loop,offset=$bo,sizelimit=$bs "$img" "$M/boot"
  mount -t proc proc "$M/proc"; mount --bind /dev "$M/dev"; mount -t tmpfs tmpfs "$M/run"
  rc=0
  say() { echo "check-finalized: $1: $2"; [ "$1" = ok ] || rc=1; }
  ch() { chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
  a=$(ch dpkg --audit 2>&1 || true)
  if [ -z "$a" ]; then say ok "dpkg --audit is empty"; else say FAIL "dpkg --audit: $a"; fi
  if ch apt-get check -qq >/dev/null 2>&1; then say ok "apt-get check passes"; else say FAIL "apt-get check"; ch apt-get check || true; fi
  k=$(ch dpkg-query -W -f="\${Package} \${Status}\n" "linux-image-[0-9]*" 2>/dev/null | grep " installed$" | cut -d" " -f1)
  n=$(printf "%s\n" "$k" | grep -c . || true)
  if [ "$n" = 1 ]; then say ok "one kernel installed: $k"; else say FAIL "$n kernels installed: $k"; fi
  kver=${k#linux-image-}
  other=$(ls "$M/boot" | grep -E "^(vmlinuz|initrd.img|config|System.map)-" | grep -v -- "-$kver\$" || true)
  if [ -z "$other" ]; then say ok "/boot holds only $kver"; else say FAIL "/boot also holds: $other"; fi
  mods=$(ls "$M/lib/modules")
  if [ "$mods" = "$kver" ]; then say ok "/lib/modules holds only $kver"; else say FAIL "/lib/modules holds: $mods"; fi
  debs=$(find "$M/var/cache/apt/archives" -name "*.deb" | wc -l)
  if [ "$debs" = 0 ]; then say ok "no .deb in /var/cache/apt/archives"; else say FAIL "$debs .deb left"; fi
  if [ -f "$M/etc/machine-id" ] && [ ! -s "$M/etc/machine-id" ]; then say ok "/etc/machine-id is empty"; else say FAIL "/etc/machine-id not empty"; fi
  keys=$(ls "$M"/etc/ssh/ssh_host_* 2>/dev/null | wc -l)
  if [ "$keys" = 0 ]; then say ok "no ssh host keys"; else say FAIL "$keys ssh host key files left"; fi
  if grep -q "root=/dev/loop" "$M/boot/grub/grub.cfg"; then say FAIL "grub.cfg names a loop device"; elif grep -q "root=UUID=" "$M/boot/grub/grub.cfg"; then say ok "grub.cfg boots root=UUID="; else say FAIL "grub.cfg has no root=UUID="; fi
  if grep -q "vmlinuz-$kver" "$M/boot/grub/grub.cfg" && ! grep -E "vmlinuz-" "$M/boot/grub/grub.cfg" | grep -qv -- "$kver"; then say ok "grub.cfg lists only $kver"; else say FAIL "grub.cfg kernels: $(grep -o "vmlinuz-[^ ]*" "$M/boot/grub/grub.cfg" | sort -u | tr "\n" " ")"; fi
  umount "$M/run" "$M/dev" "$M/proc" "$M/boot" "$M"; rmdir "$M"
  exit $rc
' sh "$img" "$root_part" "$boot_part" || fail=1
for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
loops=()
# The checks above ran e2fsck before the chroot; run it again: the chroot
# mounted the filesystems read-write.
exit $fail
