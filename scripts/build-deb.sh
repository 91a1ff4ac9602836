#!/usr/bin/env bash
# Builds the Debian package: the release binary, then its man pages
# (vmfinal __man) and shell completions (vmfinal completions) generated from
# the same clap definitions, then `cargo deb --no-build`. Installs cargo-deb
# with `cargo install --locked` if it is missing.
#   scripts/build-deb.sh            -> prints the .deb's path on the last line
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-deb
fi
cargo build --release --locked --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
vm=$target/release/vmfinal
assets=$target/release/assets
rm -rf "$assets"
mkdir -p "$assets/completions"
"$vm" __man "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1   # Debian policy: compressed man pages
"$vm" completions bash > "$assets/completions/vmfinal.bash"
"$vm" completions zsh > "$assets/completions/_vmfinal"
"$vm" completions fish > "$assets/completions/vmfinal.fish"
cargo deb --no-build --locked --quiet >/dev/null
ls -t "$target"/debian/vmfinal_*.deb | head -1
