#!/usr/bin/env bash
# Runs one fuzz target for N executions (default 10 M) on a scratch corpus
# (work/TARGET) seeded from corpus/TARGET, using the binary `cargo fuzz build`
# made (so edits elsewhere do not rebuild it mid-run). The log's last lines
# give the count (stat::number_of_executed_units).
#   fuzz/run-long.sh TARGET [RUNS]
set -euo pipefail
cd "$(dirname "$0")"
t=$1; runs=${2:-10000000}
bin=target/x86_64-unknown-linux-gnu/release/$t
[ -x "$bin" ] || cargo +nightly fuzz build -O -s none "$t"
mkdir -p "work/$t" artifacts
exec nice -n 19 "$bin" "work/$t" "corpus/$t" -runs="$runs" -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="artifacts/$t-"
