#!/usr/bin/env bash
# Builds a Debian bookworm chroot holding libguestfs-tools (virt-sysprep,
# virt-sparsify) for scripts/bench-pipeline.sh. libguestfs 1.48 needs
# bookworm's qemu 7.2, which must not replace the host's qemu 10 from
# bookworm-backports: so it lives in a chroot under /var/tmp, never on the
# host. Its appliance is built by supermin from the chroot's own kernel.
#
#   scripts/make-guestfs-chroot.sh [DIR]    (default /var/tmp/vmfinal-cache/guestfs-chroot)
#
# Idempotent: an existing, complete chroot (DIR/.complete) is reused.
set -euo pipefail
dir=${1:-/var/tmp/vmfinal-cache/guestfs-chroot}
[ -f "$dir/.complete" ] && { echo "$dir"; exit 0; }
rm -rf "$dir"
mkdir -p "$(dirname "$dir")" /var/tmp/vmfinal-cache/debs
debootstrap --variant=minbase --cache-dir=/var/tmp/vmfinal-cache/debs bookworm "$dir" http://deb.debian.org/debian \
  > "$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; exit 1; }
unshare --mount --pid --fork --kill-child --propagation private sh -ec '
  d=$1
  mount -t proc proc "$d/proc"; mount -t sysfs sys "$d/sys"; mount --bind /dev "$d/dev"
  chroot "$d" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -ec "apt-get update -qq && apt-get install -y -qq --no-install-recommends libguestfs-tools linux-image-amd64 qemu-system-x86 >/dev/null && apt-get clean"
' sh "$dir" >> "$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; exit 1; }
touch "$dir/.complete"
echo "$dir"
