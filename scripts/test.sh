#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then the unit
# and integration tests (release build: the tests compress real images), then
# formatting and lints. Needs root (loop devices, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_DEPS:-}" = 1 ] || scripts/install-deps.sh
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
cargo build --release --locked
cargo test --release --locked -- --test-threads=2
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings
echo "scripts/test.sh: all checks passed"
