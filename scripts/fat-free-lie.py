#!/usr/bin/env python3
"""Makes a FAT12/16/32 image lie: the clusters of one file (found with
mtools' mshowfat) are marked free in every FAT copy, so the FATs still
agree with each other while the directory entry points into free space.

    scripts/fat-free-lie.py IMG ::/PATH [--keep-first]

--keep-first leaves the first cluster as an end-of-chain marker (the chain
is cut short instead of starting in free space). Needs mtools."""
import re
import struct
import subprocess
import sys


def main():
    img, path = sys.argv[1], sys.argv[2]
    keep_first = "--keep-first" in sys.argv[3:]
    out = subprocess.run(
        ["mshowfat", "-i", img, path],
        check=True,
        capture_output=True,
        text=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    clusters = []
    for a, b in re.findall(r"(\d+)(?:-(\d+))?", out.split(path, 1)[1]):
        clusters += range(int(a), int(b or a) + 1)
    if not clusters:
        sys.exit(f"no clusters for {path}: {out!r}")
    with open(img, "r+b") as f:
        bs = f.read(512)
        bps, spc, reserved, nfats = struct.unpack_from("<HBHB", bs, 11)
        root = struct.unpack_from("<H", bs, 17)[0]
        total = struct.unpack_from("<H", bs, 19)[0] or struct.unpack_from("<I", bs, 32)[0]
        fatsz = struct.unpack_from("<H", bs, 22)[0] or struct.unpack_from("<I", bs, 36)[0]
        data = reserved + nfats * fatsz + (root * 32 + bps - 1) // bps
        n = (total - data) // spc
        kind = 12 if n < 4085 else 16 if n < 65525 else 32
        eoc = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}[kind]
        for k in range(nfats):
            base = (reserved + k * fatsz) * bps
            for i, c in enumerate(clusters):
                v = eoc if keep_first and i == 0 else 0
                if kind == 32:
                    f.seek(base + 4 * c)
                    old = struct.unpack("<I", f.read(4))[0]
                    f.seek(base + 4 * c)
                    f.write(struct.pack("<I", (old & 0xF0000000) | v))
                elif kind == 16:
                    f.seek(base + 2 * c)
                    f.write(struct.pack("<H", v))
                else:
                    at = base + c * 3 // 2
                    f.seek(at)
                    w = struct.unpack("<H", f.read(2))[0]
                    w = (w & 0x000F) | (v << 4) if c % 2 else (w & 0xF000) | v
                    f.seek(at)
                    f.write(struct.pack("<H", w))
        # FAT32 FSInfo's free count is only a hint; leave it.
    print(f"{path}: {len(clusters)} clusters marked free in {nfats} FATs")


main()
