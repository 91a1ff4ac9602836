#!/usr/bin/env bash
# A short run of every fuzz target in fuzz/Cargo.toml (13; default 60 s
# each, so about 13 minutes plus the build), as .ci/run does:
# builds them with cargo-fuzz on the nightly toolchain (installing
# cargo-fuzz if missing), seeds each from fuzz/corpus/TARGET (committed;
# fuzz/make-corpus.sh rebuilds it from real images) and fails on the first
# crash, leak or timeout. Scratch corpora go to fuzz/work/ (ignored by git).
#
#   scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz-smoke: no nightly toolchain (rustup toolchain install nightly)" >&2; exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^vmfinal-fuzz$')
(cd fuzz && cargo +nightly fuzz build -O)
for t in $targets; do
  mkdir -p "fuzz/work/$t" fuzz/artifacts
  rm -f fuzz/artifacts/"$t"-*
  echo "== fuzz $t (${secs}s)"
  fuzz/target/x86_64-unknown-linux-gnu/release/"$t" "fuzz/work/$t" "fuzz/corpus/$t" \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t-" 2>&1 | grep -E 'stat::number_of_executed_units|SUMMARY|ERROR|panicked|Done' || true
  # libFuzzer writes an artifact for every crash, leak or timeout.
  if ls fuzz/artifacts/"$t"-* >/dev/null 2>&1; then
    echo "fuzz-smoke: $t found a failing input: $(ls fuzz/artifacts/"$t"-*)" >&2; exit 1
  fi
done
echo "fuzz-smoke: all targets ran ${secs}s without a crash"
