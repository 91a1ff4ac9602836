#!/usr/bin/env bash
# Runs `vmfinal finalize` from a Packer shell-local post-processor.
#
# shell-local gives a script no artifact path, only PACKER_BUILD_NAME,
# PACKER_BUILDER_TYPE and the environment_vars of the template, so the
# image comes from an argument or a variable:
#
#   scripts/packer-post-process.sh [IMAGE [OUTPUT]]
#
#   VMFINAL_IMAGE     the builder's disk (e.g. output-golden/disk.raw), if no IMAGE
#   VMFINAL_OUTPUT    the artifact [default: IMAGE's directory/golden.qcow2]
#   VMFINAL_MANIFEST  append a Packer-manifest-shaped entry here
#                     [default: OUTPUT's directory/manifest.json]
#   VMFINAL_FORMAT    the builder disk's format: raw (default) or qcow2; passed
#                     as --format, never guessed from the disk's content
#   VMFINAL_ARGS      more finalize options [default: --profiles defaults]
#   VMFINAL           the vmfinal binary [default: vmfinal on PATH]
#   VMFINAL_KEEP_INPUT=1 keeps the builder's raw disk (default: removed after
#                     a successful finalize, it is a scratch copy)
#
# Writes OUTPUT, OUTPUT.sha256 (for `sha256sum -c`) and the manifest entry
# (builds[]: name, builder_type, files, artifact_id, packer_run_uuid,
# custom_data with vmfinal's before/after figures). Needs root.
set -euo pipefail
img=${1:-${VMFINAL_IMAGE:-}}
[ -n "$img" ] || { echo "packer-post-process: no image: pass it or set VMFINAL_IMAGE" >&2; exit 2; }
[ -f "$img" ] || { echo "packer-post-process: $img: no such file" >&2; exit 2; }
out=${2:-${VMFINAL_OUTPUT:-$(dirname "$img")/golden.qcow2}}
manifest=${VMFINAL_MANIFEST:-$(dirname "$out")/manifest.json}
vmfinal=${VMFINAL:-vmfinal}
# shellcheck disable=SC2086 # VMFINAL_ARGS is a list of options
"$vmfinal" finalize --format "${VMFINAL_FORMAT:-raw}" "$img" -o "$out" --force --checksum sha256 --manifest "$manifest" \
  ${VMFINAL_ARGS:---profiles defaults}
if [ "${VMFINAL_KEEP_INPUT:-0}" != 1 ]; then
  rm -f "$img"
fi
echo "packer-post-process: $out ($(du -h --apparent-size "$out" | cut -f1)), $out.sha256, $manifest"
