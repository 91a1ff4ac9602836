#!/usr/bin/env bash
# Checks `vmfinal analyze --guest` on a real guest image against tools we did
# not write (the e2e run calls it on the debootstrapped Debian image):
#   - the dpkg package list against dpkg-query --admindir on a read-only mount;
#   - every directory of the report's tree (depth 3) against du -s -B1 / du -sb;
#   - with FINAL.json (a `finalize --json` of the same image and profiles): the
#     per-profile plans equal finalize's, and each profile's planned savings (net
#     of what its writes allocate) are within 1% of what that one finalize run
#     measured around the profile (syncfs + statvfs), as is the total; the
#     after-cleaning estimate within 5% of finalize's qcow2 artifact;
#   - the --html page in headless Chromium (empty network namespace): no console
#     message; the screenshot is written to OUTDIR/report.png.
#
#   scripts/check-guest-report.sh IMG.raw OUTDIR [FINAL.json]
# Needs root. Mounts only in its own private mount namespace, read-only.
set -euo pipefail
img=${1:?usage: check-guest-report.sh IMG.raw OUTDIR [FINAL.json]}
out=${2:?usage: check-guest-report.sh IMG.raw OUTDIR [FINAL.json]}
final=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
V=${VMFINAL:-$here/../target/release/vmfinal}
mkdir -p "$out"
"$V" analyze --format raw --guest --json --depth 3 --top 100000 "$img" > "$out/analyze.json"
"$V" analyze --format raw --guest --html "$out/report.html" "$img" > "$out/analyze.txt"
sfdisk -J "$img" > "$out/table.json"
unshare --mount --propagation private python3 - "$img" "$out" "$final" <<'PY'
import json, os, subprocess, sys, tempfile
img, out, final = sys.argv[1], sys.argv[2], sys.argv[3]
v = json.load(open(f"{out}/analyze.json"))
g = v["guest"]
parts = {int(p["node"].rsplit(img, 1)[-1]): p for p in json.load(open(f"{out}/table.json"))["partitiontable"]["partitions"]}
root = tempfile.mkdtemp(prefix="vmfinal-report-")
for m in sorted(g["mounts"], key=lambda m: m["mountpoint"].count("/") if m["mountpoint"] != "/" else 0):
    p = parts[m["partition"]]
    opts = "ro,loop,offset=%d,sizelimit=%d" % (p["start"] * 512, p["size"] * 512)
    opts += ",noload" if m["fstype"] == "ext4" else ",norecovery" if m["fstype"] == "xfs" else ""
    subprocess.run(["mount", "-o", opts, img, root + m["mountpoint"]], check=True)
fail = []
# Packages.
q = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                    "-f=${db:Status-Status} ${Installed-Size} ${Package}\n"],
                   check=True, capture_output=True, text=True).stdout
want = sorted(((int(s or 0) * 1024, n) for st, s, n in (l.split(" ") for l in q.splitlines())
               if st not in ("not-installed", "config-files")), key=lambda x: (-x[0], x[1]))
db = [d for d in g["packages"] if d["manager"] == "dpkg"]
got = [(p["installed_bytes"], p["name"]) for p in db[0]["packages"]] if db else []
if got != want:
    fail.append(f"packages differ: {len(got)} reported, {len(want)} from dpkg-query")
print(f"packages: {len(got)} from the dpkg status, dpkg-query lists {len(want)}: {'equal' if got == want else 'DIFFERENT'}")
# Directories.
def nodes(n):
    yield n
    for c in n.get("children", []):
        yield from nodes(c)
def du(path, flag):
    return int(subprocess.run(["du", "-s", flag, path], check=True, capture_output=True, text=True).stdout.split()[0])
worst = [0.0, 0.0, ""]
count = 0
for n in nodes(g["tree"]):
    h = root + n["path"]
    for i, (key, flag) in enumerate((("allocated_bytes", "-B1"), ("apparent_bytes", "-b"))):
        d = du(h, flag)
        e = abs(n[key] - d) / max(d, 1)
        if e > worst[i]:
            worst[i] = e
            worst[2] = n["path"]
        if e > 0.01:
            fail.append(f"{n['path']}: {key} {n[key]}, du {flag} says {d}")
    count += 1
print(f"directories: {count} to depth {g['depth']}; worst difference against du: "
      f"{worst[0] * 100:.4f}% allocated, {worst[1] * 100:.4f}% apparent")
subprocess.run(["umount", "-R", root], check=True)
os.rmdir(root)
# Per-profile plans against finalize: its plan, and what it measured around
# each profile (one run).
if final:
    f = json.load(open(final))
    fp = {p["name"]: p for p in f["guest"]["profiles"]}
    print(f"  {'profile':<14} {'analyze plans':>14} {'finalize freed':>15}  difference")
    for p in g["profiles"]:
        name, b = p["name"], p["freed_bytes"]
        q = fp.get(name)
        if q is None or q["freed_bytes"] != b:
            fail.append(f"profile {name}: analyze plans {b} B, finalize planned {q and q['freed_bytes']} B")
            continue
        m = q["measured_freed_bytes"]
        if not p["applicable"]:
            continue
        if m is None:
            fail.append(f"profile {name}: finalize measured nothing")
            continue
        e = abs(b - m) / max(abs(b), 1)
        w = f" (writes take {p['allocated_bytes']} B)" if p["allocated_bytes"] else ""
        print(f"  {name:<14} {b:>12} B {m:>13} B  {e * 100:.3f}%{w}")
        if e > 0.01:
            fail.append(f"profile {name}: analyze plans {b} B, finalize freed {m} B")
    meas = f["guest"]["measured_freed_bytes"]
    e = abs(g["freed_bytes"] - meas) / max(abs(meas), 1)
    print(f"profiles: analyze plans {g['freed_bytes']} B in all, finalize freed {meas} B (statvfs): {e * 100:.3f}%")
    if e > 0.01:
        fail.append(f"planned {g['freed_bytes']} B, finalize freed {meas} B")
    # The after-cleaning estimate (a fresh sample of what stays) against the
    # qcow2 artifact finalize wrote, within 5%.
    out_ = f.get("artifact", {}).get("output", {})
    c = out_.get("compression")
    if out_.get("format") == "qcow2" and c in ("zlib", "zstd"):
        est = v["estimate_after_cleaning"]
        guess, real = est[f"qcow2_{c}_bytes"], out_["bytes"]
        e = (guess - real) / max(real, 1)
        print(f"estimate after cleaning ({est['method']}): qcow2 {c} {guess} B, finalize wrote {real} B: {e * 100:+.2f}%")
        if abs(e) > 0.05:
            fail.append(f"estimated {guess} B after cleaning, the artifact is {real} B")
if fail:
    print("check-guest-report: " + "; ".join(fail[:5]), file=sys.stderr)
    sys.exit(1)
PY
if command -v chromium >/dev/null; then
  timeout 120 unshare --net chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --disable-background-networking --disable-component-update --disable-sync --disable-extensions \
    --no-first-run --enable-logging=stderr --v=0 --log-level=0 --window-size=1200,900 \
    --user-data-dir="$out/chromium" --screenshot="$out/report.png" "file://$(realpath "$out/report.html")" \
    > /dev/null 2> "$out/chromium.log"
  rm -rf "$out/chromium"
  if grep -q ':CONSOLE' "$out/chromium.log"; then
    grep ':CONSOLE' "$out/chromium.log" >&2
    echo "check-guest-report: console messages in the HTML report" >&2
    exit 1
  fi
  echo "html: $(stat -c %s "$out/report.html") bytes, no console message in Chromium; screenshot $out/report.png"
fi
