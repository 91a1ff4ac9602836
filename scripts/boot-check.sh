#!/usr/bin/env bash
# Boots IMAGE through its own boot loader under qemu-system-x86_64 with a
# serial console, waits for the line vmfinal-boot-marker prints, and exits 0
# only when it arrives within the time limit. The image is opened with
# snapshot=on: the boot changes nothing on disk.
#
#   scripts/boot-check.sh IMAGE [--timeout SECONDS] [--kvm] [--uefi] [--expect REGEX] [--log FILE]
#
# TCG by default: guests hang under this host's nested KVM. --kvm where KVM works.
# --uefi: OVMF (Debian's ovmf: OVMF_CODE.fd read-only, a fresh copy of
# OVMF_VARS.fd) on a q35 machine instead of SeaBIOS on the default one.
set -euo pipefail
img=${1:?usage: boot-check.sh IMAGE [--timeout S] [--kvm] [--uefi] [--expect REGEX] [--log FILE]}
shift
timeout=300
accel=tcg
expect='VMFINAL-BOOT-OK'
log=
uefi=0
ovmf=/usr/share/OVMF
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) timeout=$2; shift 2 ;;
    --kvm) accel=kvm; shift ;;
    --uefi) uefi=1; shift ;;
    --expect) expect=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    *) echo "boot-check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -r "$img" ] || { echo "boot-check.sh: cannot read $img" >&2; exit 2; }
fmt=$(qemu-img info --output=json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
tmp=$(mktemp -d /var/tmp/vmfinal-boot.XXXXXX)
[ -n "$log" ] || log="$tmp/serial.log"
: > "$log"
machine=(-machine "accel=$accel")
if [ "$uefi" = 1 ]; then
  [ -r "$ovmf/OVMF_CODE.fd" ] && [ -r "$ovmf/OVMF_VARS.fd" ] || { echo "boot-check.sh: no OVMF in $ovmf (Debian package ovmf)" >&2; rm -rf "$tmp"; exit 2; }
  cp "$ovmf/OVMF_VARS.fd" "$tmp/vars.fd"
  machine=(-machine "q35,accel=$accel"
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf/OVMF_CODE.fd"
    -drive "if=pflash,format=raw,unit=1,file=$tmp/vars.fd")
fi
qemu-system-x86_64 "${machine[@]}" -m 1024 -smp 2 -display none -no-reboot \
  -drive "file=$img,format=$fmt,if=virtio,snapshot=on" -nic none \
  -serial "file:$log" -monitor none -pidfile "$tmp/qemu.pid" 2> "$tmp/qemu.err" &
qpid=$!
cleanup() {
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
start=$(date +%s)
while :; do
  if line=$(grep -a -m1 "$expect" "$log" 2>/dev/null); then
    echo "boot-check: marker after $(( $(date +%s) - start )) s: $(printf '%s' "$line" | tr -d '\r')"
    exit 0
  fi
  if ! kill -0 "$qpid" 2>/dev/null; then
    echo "boot-check: qemu exited before the marker; last console lines:" >&2
    cat "$tmp/qemu.err" >&2
    tail -n 30 "$log" | tr -d '\r' >&2
    exit 1
  fi
  if [ $(( $(date +%s) - start )) -ge "$timeout" ]; then
    echo "boot-check: no marker within $timeout s; last console lines:" >&2
    tail -n 30 "$log" | tr -d '\r' >&2
    exit 1
  fi
  sleep 2
done
