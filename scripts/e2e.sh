#!/usr/bin/env bash
# End to end on a real Debian guest (run by .ci/run):
#   1. build the Debian image (scripts/make-debian-image.sh);
#   2. boot-check the original (two kernels, its machine-id);
#   3. vmfinal finalize --profiles defaults to qcow2 (zstd) and to .zst
#      (and --dry-run first: it must list exactly the actions the run takes);
#   4. check the cleaned guest (scripts/check-finalized.sh: dpkg --audit,
#      apt-get check, one kernel, no .deb, empty machine-id, no host keys,
#      freed bytes vs df within 1%, e2fsck -fn on every filesystem);
#      analyze --guest on the original (scripts/check-guest-report.sh);
#   5. boot-check the qcow2 directly and the expanded .zst: new machine-id,
#      fresh ssh host keys, ssh active, one kernel;
#   6. print sizes and times.
#
#   scripts/e2e.sh [--workdir DIR] [--keep]
# Needs root; KVM not required (TCG). Three TCG boots of 45-75 s each dominate;
# on a fresh machine the image build adds about 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=/var/tmp
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --workdir) workdir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "e2e.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! command -v cargo >/dev/null; then . "$HOME/.cargo/env" 2>/dev/null || true; fi
cargo build --release --locked -q
V=$PWD/target/release/vmfinal
W=$(mktemp -d "$workdir/vmfinal-e2e.XXXXXX")
[ "$keep" = 1 ] || trap 'rm -rf "$W"' EXIT
t() { date +%s.%N; }
el() { python3 -c "print(f'{$2 - $1:.1f}')"; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< "$2"; }

echo "== 1. Debian image"
t0=$(t); scripts/make-debian-image.sh "$W/debian.raw"; t_build=$(el "$t0" "$(t)")

echo "== 2. boot the original"
m0=$(scripts/boot-check.sh "$W/debian.raw" --timeout 300)
echo "$m0"
[ "$(field kernels "$m0")" = 2 ] || { echo "e2e: the original should have 2 kernels" >&2; exit 1; }
id0=$(field machine-id "$m0")

echo "== 3. finalize"
"$V" finalize --format raw --profiles defaults --dry-run --json "$W/debian.raw" > "$W/dry.json"
t0=$(t)
"$V" finalize --format raw --profiles defaults --compression zstd --json -o "$W/final.qcow2" "$W/debian.raw" > "$W/final.json"
t_qcow=$(el "$t0" "$(t)")
t0=$(t)
"$V" finalize --format raw --profiles defaults -q -o "$W/final.zst" "$W/debian.raw"
t_zst=$(el "$t0" "$(t)")
qemu-img check "$W/final.qcow2" >/dev/null
python3 - "$W/dry.json" "$W/final.json" <<'PY'
import json, sys
def plan(f):
    r = json.load(open(f))
    return [(p["name"], a["op"], a["path"]) for p in r["guest"]["profiles"] for s in p["steps"] for a in s["actions"]]
d, r = plan(sys.argv[1]), plan(sys.argv[2])
assert d == r, f"dry run and real run differ: {set(d) ^ set(r)}"
print(f"e2e: --dry-run listed the same {len(d)} actions the run carried out")
PY
zstd -tq "$W/final.zst"

echo "== 4. the cleaned guest"
"$V" expand --format qcow2 -q -o "$W/final.raw" "$W/final.qcow2"
scripts/check-finalized.sh "$W/final.raw" --original "$W/debian.raw" --report "$W/final.json"
rm -f "$W/final.raw"
# analyze --guest on the original: packages vs dpkg-query, directories vs du,
# per-profile plans vs finalize's, the HTML page in Chromium (issue 15).
scripts/check-guest-report.sh "$W/debian.raw" "$W/report" "$W/final.json"

echo "== 5. boot the results"
for art in qcow2 zst; do
  img="$W/final.$art"
  if [ "$art" = zst ]; then "$V" expand --format zst -q -o "$W/from-zst.raw" "$img"; img="$W/from-zst.raw"; fi
  m=$(scripts/boot-check.sh "$img" --timeout 300)
  echo "$m"
  id=$(field machine-id "$m")
  [ -n "$id" ] && [ "$id" != "$id0" ] || { echo "e2e: $art: machine-id not regenerated ($id)" >&2; exit 1; }
  [ "$(field hostkeys-fresh "$m")" = yes ] || { echo "e2e: $art: ssh host keys not regenerated" >&2; exit 1; }
  [ "$(field ssh "$m")" = active ] || { echo "e2e: $art: ssh not active" >&2; exit 1; }
  [ "$(field kernels "$m")" = 1 ] || { echo "e2e: $art: not one kernel" >&2; exit 1; }
  echo "e2e: $art boots: new machine-id $id, fresh host keys, ssh active, one kernel"
done

echo "== 6. sizes and times"
python3 - "$W" "$t_build" "$t_qcow" "$t_zst" <<'PY'
import json, os, sys
w, tb, tq, tz = sys.argv[1], *sys.argv[2:]
r = json.load(open(f"{w}/final.json"))
g = r["guest"]
alloc = lambda p: os.stat(p).st_blocks * 512
print(f"image built in {tb} s; original {alloc(w + '/debian.raw') / 2**20:.0f} MiB allocated")
print(f"profiles freed {g['freed_bytes'] / 2**20:.1f} MiB (filesystems: {g['measured_freed_bytes'] / 2**20:.1f} MiB)")
print(f"final.qcow2 (zstd) {os.path.getsize(w + '/final.qcow2') / 2**20:.1f} MiB in {tq} s; final.zst {os.path.getsize(w + '/final.zst') / 2**20:.1f} MiB in {tz} s")
print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items()))
PY
echo "e2e: all checks passed"
