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
#   VMFINAL           the vmfinal command, split into words like a shell
#                     command, the binary last: "sudo vmfinal", "/opt/bin/vmfinal"
#                     [default: vmfinal on PATH]. Packer's PACKER_BUILD_NAME,
#                     PACKER_BUILDER_TYPE and PACKER_RUN_UUID reach the binary
#                     through env(1), so sudo's clean environment keeps them.
#   VMFINAL_KEEP_INPUT=1 keeps the builder's raw disk (default: removed after
#                     a successful finalize, it is a scratch copy)
#
# Writes OUTPUT, OUTPUT.sha256 (for `sha256sum -c`) and the manifest entry
# (builds[]: name, builder_type, files, artifact_id, packer_run_uuid,
# custom_data with vmfinal's before/after figures). Needs root (or
# VMFINAL="sudo vmfinal"). Relative paths are taken from the directory Packer
# runs in; the script itself may live anywhere (the .deb installs it as
# /usr/bin/vmfinal-packer-post-process).
set -euo pipefail
me=$(basename "$0")
img=${1:-${VMFINAL_IMAGE:-}}
[ -n "$img" ] || { echo "$me: no image: pass it or set VMFINAL_IMAGE" >&2; exit 2; }
[ -f "$img" ] || { echo "$me: $img: no such file (relative to $PWD)" >&2; exit 2; }
out=${2:-${VMFINAL_OUTPUT:-$(dirname "$img")/golden.qcow2}}
manifest=${VMFINAL_MANIFEST:-$(dirname "$out")/manifest.json}
# VMFINAL is a command with arguments ("sudo vmfinal"): split it into words.
read -r -a vmfinal <<< "${VMFINAL:-vmfinal}"
[ "${#vmfinal[@]}" -gt 0 ] || { echo "$me: VMFINAL is empty" >&2; exit 2; }
command -v "${vmfinal[0]}" >/dev/null || {
  echo "$me: ${vmfinal[0]}: command not found (install vmfinal, or set VMFINAL to its path)" >&2; exit 2; }
# Packer's variables for the manifest, handed to the binary itself (sudo
# would drop them from the environment).
pass=()
for v in PACKER_BUILD_NAME PACKER_BUILDER_TYPE PACKER_RUN_UUID; do
  [ -z "${!v:-}" ] || pass+=("$v=${!v}")
done
n=${#vmfinal[@]}
cmd=("${vmfinal[@]:0:n-1}" env "${pass[@]}" "${vmfinal[n-1]}")
# shellcheck disable=SC2086 # VMFINAL_ARGS is a list of options
"${cmd[@]}" finalize --format "${VMFINAL_FORMAT:-raw}" "$img" -o "$out" --force --checksum sha256 --manifest "$manifest" \
  ${VMFINAL_ARGS:---profiles defaults}
if [ "${VMFINAL_KEEP_INPUT:-0}" != 1 ]; then
  rm -f "$img"
fi
echo "$me: $out ($(du -h --apparent-size "$out" | cut -f1)), $out.sha256, $manifest"
