#!/usr/bin/env bash
# Builds the sample images and runs vmfinal's main jobs on them:
#   1. compact the sample disk (vm-fixtures/sample.env) to qcow2 (zstd) and to
#      .zst, stream it to stdout, then check and info;
#   2. finalize --dry-run and finalize a small Debian-like guest
#      (vm-fixtures/debian-mini) into a golden qcow2.
#   scripts/demo.sh [WORKDIR]     (default: a new /var/tmp/vmfinal-demo.XXXXXX)
# Needs root (apt for the system packages, loop devices for finalize) and
# cargo. Leaves about 1 GiB in WORKDIR (measured: 937 MiB; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root: it installs packages with apt, and finalize mounts the guest" >&2
  exit 1
fi
[ "${SKIP_DEPS:-}" = 1 ] || scripts/install-deps.sh
# cargo as scripts/test.sh finds it: on PATH, else rustup's ~/.cargo/env.
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
if ! command -v cargo >/dev/null; then
  echo "demo.sh: cargo not found (not on PATH, and no $HOME/.cargo/env): install a Rust toolchain, $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) or newer, with rustup, then run demo.sh again" >&2
  exit 1
fi
. vm-fixtures/sample.env
cargo build --release --locked --quiet
vm=target/release/vmfinal
work=${1:-$(mktemp -d /var/tmp/vmfinal-demo.XXXXXX)}
mkdir -p "$work"

echo "== compact"
scripts/make-bench-image.sh "$work/sample.raw" "$DATA_MIB"
$vm compact --format raw --force "$work/sample.raw" -o "$work/sample.qcow2" --compression zstd
$vm compact --format raw --force "$work/sample.raw" -o "$work/sample.zst"
$vm check --format qcow2 "$work/sample.qcow2"
$vm info --format qcow2 "$work/sample.qcow2"
qemu-img check "$work/sample.qcow2"
# A stream on stdout is byte for byte the .zst file.
$vm compact -q --format raw "$work/sample.raw" -o - | cmp - "$work/sample.zst"
echo "compact -o - | cmp: the stream equals $work/sample.zst"

echo "== finalize"
scripts/make-guest-image.sh vm-fixtures/debian-mini/tree.txt "$work/guest.raw"
$vm finalize --format raw "$work/guest.raw" --dry-run
$vm finalize --format raw --force "$work/guest.raw" -o "$work/golden.qcow2" --compression zstd
qemu-img check "$work/golden.qcow2"
echo "demo outputs are in $work ($(du -sh "$work" | cut -f1) on disk); remove it with: rm -r $work"
