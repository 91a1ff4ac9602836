#!/usr/bin/env bash
# Packer for real: installs Debian's packer (1.6.x), builds
# examples/packer/golden.pkr.hcl with the qemu builder (TCG) on a copy of the
# Debian test image, whose shell-local post-processor runs
# scripts/packer-post-process.sh -> vmfinal finalize. Then checks the
# artifact (qemu-img check), its .sha256 (sha256sum -c) and the manifest
# entry, and boots the artifact to the marker.
#
#   scripts/e2e-packer.sh [--workdir DIR] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
workdir=/var/tmp
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --workdir) workdir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "e2e-packer.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! command -v packer >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q packer >/dev/null
fi
packer version
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
cargo build --release --locked -q
V=$repo/target/release/vmfinal
W=$(mktemp -d "$workdir/vmfinal-packer.XXXXXX")
[ "$keep" = 1 ] || trap 'rm -rf "$W"' EXIT

scripts/make-debian-image.sh "$W/base.raw"
# The base powers itself off after booting (communicator "none").
"$V" clean --format raw -q --profiles none --reclaim none --profile-file examples/packer/base-poweroff.yaml "$W/base.raw"
size=$(( $(stat -c %s "$W/base.raw") / 1048576 ))M

cd "$W"
t0=$(date +%s)
PACKER_LOG=0 packer build -color=false \
  -var "base_image=$W/base.raw" \
  -var "disk_size=$size" \
  -var "accelerator=tcg" \
  -var "vmfinal=$V" \
  -var "post_process=$repo/scripts/packer-post-process.sh" \
  -var "vmfinal_args=--profiles defaults --compression zstd --profile-file $repo/examples/packer/golden-extra.yaml" \
  "$repo/examples/packer/golden.pkr.hcl" | tee "$W/packer.log"
echo "e2e-packer: packer build took $(( $(date +%s) - t0 )) s"

art=$W/output-golden/golden.qcow2
[ -f "$art" ] || { echo "e2e-packer: no artifact $art" >&2; exit 1; }
qemu-img check "$art"
(cd "$W/output-golden" && sha256sum -c golden.qcow2.sha256)
python3 - "$W/output-golden/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
b = m["builds"][-1]
assert b["name"] == "golden", b
assert b["builder_type"] == "qemu", b
names = [f["name"] for f in b["files"]]
assert any(n.endswith("golden.qcow2") for n in names), names
assert any(n.endswith("golden.qcow2.sha256") for n in names), names
assert all(f["size"] > 0 for f in b["files"]), b["files"]
assert b["artifact_id"].endswith("golden.qcow2"), b
c = b["custom_data"]
assert c["vmfinal_command"] == "finalize" and c["freed_bytes"] > 0, c
print(f"e2e-packer: manifest ok: {b['name']}/{b['builder_type']}, {len(names)} files, freed {c['freed_bytes']} bytes, run uuid {b.get('packer_run_uuid')}")
PY
# The golden image boots, without the build's power-off flag.
m=$("$repo/scripts/boot-check.sh" "$art" --timeout 300)
echo "$m"
grep -q "kernels=1" <<< "$m"
echo "e2e-packer: all checks passed"
