#!/bin/sh
# Installed into test images as /usr/local/sbin/vmfinal-boot-marker. Prints one
# line on the serial console that scripts/boot-check.sh waits for: that
# systemd reached multi-user, whether ssh is active with host keys newer than
# this boot, the machine-id, and the installed kernels.
boot=$(date -d "$(uptime -s)" +%s)
ssh_state=$(systemctl is-active ssh 2>/dev/null || true)
fresh=yes
found=0
for k in /etc/ssh/ssh_host_*_key; do
  [ -e "$k" ] || continue
  found=1
  [ "$(stat -c %Y "$k")" -ge "$boot" ] || fresh=no
done
[ "$found" = 1 ] || fresh=none
kernels=$(dpkg-query -W -f='${Package}=${Status}\n' 'linux-image-[0-9]*' 2>/dev/null | grep -c 'install ok installed')
state=$(systemctl is-system-running 2>/dev/null || true)
line="VMFINAL-BOOT-OK multi-user=reached system=$state ssh=$ssh_state hostkeys-fresh=$fresh machine-id=$(cat /etc/machine-id) kernels=$kernels"
echo "$line" > /dev/ttyS0
echo "$line" > /dev/console 2>/dev/null || true
# Packer's qemu builder with communicator "none" waits for the guest to power
# itself off; the kernel command line asks for it.
if grep -qw vmfinal.poweroff /proc/cmdline || [ -e /etc/vmfinal-poweroff-after-marker ]; then
  systemctl --no-block poweroff
fi
