#!/usr/bin/env bash
# Builds the sample image from vm-fixtures/sample.env and runs vmfinal's main
# job on it: compact to qcow2 (zstd) and to .zst, then check and info.
#   scripts/demo.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_DEPS:-}" = 1 ] || scripts/install-deps.sh
. vm-fixtures/sample.env
cargo build --release --quiet
vm=target/release/vmfinal
work=${1:-$(mktemp -d /var/tmp/vmfinal-demo.XXXXXX)}
mkdir -p "$work"
scripts/make-bench-image.sh "$work/sample.raw" "$DATA_MIB"
$vm compact --format raw --force "$work/sample.raw" -o "$work/sample.qcow2" --compression zstd
$vm compact --format raw --force "$work/sample.raw" -o "$work/sample.zst"
$vm check --format qcow2 "$work/sample.qcow2"
$vm info --format qcow2 "$work/sample.qcow2"
qemu-img check "$work/sample.qcow2"
echo "demo outputs are in $work"
