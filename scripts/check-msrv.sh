#!/usr/bin/env bash
# Checks that Cargo.toml's rust-version is true: `cargo check --locked
# --all-targets` with exactly that toolchain (rustup installs it, minimal
# profile), in a target directory of its own. .ci/run calls it.
#
#   scripts/check-msrv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "check-msrv: no rust-version in Cargo.toml" >&2; exit 1; }
# A machine that cannot fetch another toolchain (no rustup, or no network to
# its server) skips the check with a note: that is the machine, not the code.
if ! command -v rustup >/dev/null; then
  echo "check-msrv: skipped: no rustup here to install Rust $msrv" >&2
  exit 0
fi
if ! rustup toolchain list | grep -q "^$msrv-"; then
  if ! timeout 600 rustup toolchain install "$msrv" --profile minimal; then
    echo "check-msrv: skipped: Rust $msrv cannot be installed on this machine" >&2
    exit 0
  fi
fi
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/msrv} nice cargo "+$msrv" check --locked --all-targets -q
echo "check-msrv: builds with Rust $msrv (rust-version), Cargo.lock as committed"
