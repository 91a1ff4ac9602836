#!/usr/bin/env python3
"""Moves the last MOVE extents of a one-segment linear LV to the first free
extents of its PV, as `pvmove` of those extents would leave it, in a disk
image and without LVM: the bytes are copied, their old place punched to
zeros, and the metadata rewritten with two segments by lvm-edit-meta.py
(checksums fixed, so LVM itself accepts the result). For the e2e guest whose
root LV is in two scattered segments (e2e-layouts-lvm2seg.sh).

    scripts/lvm-move-extents.py DISK PV_OFFSET LV MOVE

Prints the LV's new map. The PV's metadata area is the usual one at PV byte
4096; the LV must be one segment on pv0 starting at LV extent 0.
"""
import os
import re
import subprocess
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    img, pv, lv, move = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    with open(img, "rb") as f:
        f.seek(pv + 4096)
        h = f.read(512)
        off, size = int.from_bytes(h[40:48], "little"), int.from_bytes(h[48:56], "little")
        f.seek(pv + 4096 + off)
        text = f.read(size).decode()
    num = lambda key: int(re.search(key + r" = (\d+)", text).group(1))
    pe_start, es, pe_count = num("pe_start") * 512, num("extent_size") * 512, num("pe_count")
    area = r'extent_count = (\d+)\n\ntype = "striped"\nstripe_count = 1\n\nstripes = \[\n"pv0", (\d+)\n\]'
    seg = re.search(r"\n" + re.escape(lv) + r" \{.*?(segment_count = 1\n\nsegment1 \{\nstart_extent = 0\n" + area + r"\n\})", text, re.S)
    if not seg:
        sys.exit(f"{img}: LV {lv} is not one linear segment on pv0")
    old, n, at = seg.group(1), int(seg.group(2)), int(seg.group(3))
    free = max(int(pe) + int(cnt) for cnt, pe in re.findall(area, text))
    keep = n - move
    if not 0 < keep < n or free + move > pe_count:
        sys.exit(f"{img}: cannot move {move} of {lv}'s {n} extents to PE {free} of {pe_count}")
    part = lambda i, start, count, pe: (
        f'segment{i} {{\nstart_extent = {start}\nextent_count = {count}\n\ntype = "striped"\n'
        f'stripe_count = 1\n\nstripes = [\n"pv0", {pe}\n]\n}}')
    new = "segment_count = 2\n\n" + part(1, 0, keep, at) + "\n" + part(2, keep, move, free)
    src, dst, length = pv + pe_start + (at + keep) * es, pv + pe_start + free * es, move * es
    with open(img, "r+b") as f:
        done = 0
        while done < length:
            f.seek(src + done)
            b = f.read(min(4 << 20, length - done))
            f.seek(dst + done)
            f.write(b)
            done += len(b)
        f.flush()
        os.fsync(f.fileno())
    subprocess.run(["fallocate", "--punch-hole", "--offset", str(src), "--length", str(length), img], check=True)
    esc = lambda s: s.replace("\\", "\\\\").replace("\n", "\\n")
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, os.path.join(here, "lvm-edit-meta.py"), img, str(pv), esc(old), esc(new)], check=True)
    print(f"LV {lv}: extents 0-{keep - 1} at PE {at}, {keep}-{n - 1} at PE {free}")


if __name__ == "__main__":
    main()
