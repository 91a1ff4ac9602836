#!/usr/bin/env python3
"""Counts the bytes of non-zero 4 KiB blocks inside a filesystem's free space.

The free space comes from the filesystem's own tools on stdin:
  ext4: dumpe2fs output ("Free blocks: a-b, c, ...")
  xfs:  lines "AG <agno> <agblocks> recs[...] = [startblock,blockcount] ..." from xfs_db
  swap: "SWAP <header bytes> <size>"
Usage: fs-truth.py KIND IMAGE PART_OFFSET INDEX BLOCK_SIZE  -> prints a JSON object.
"""
import json, re, sys

kind, image, part_off, index, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ranges = []  # byte ranges relative to the partition
for line in sys.stdin:
    if kind == "ext4" and "Free blocks:" in line:
        for tok in line.split(":", 1)[1].split(","):
            tok = tok.strip()
            if not tok:
                continue
            a, _, b = tok.partition("-")
            a = int(a); b = int(b) if b else a
            ranges.append((a * bs, (b - a + 1) * bs))
    elif kind == "xfs" and line.startswith("AG "):
        parts = line.split(" ", 3)
        agno, agblocks = int(parts[1]), int(parts[2])
        for s, c in re.findall(r"\[(\d+),(\d+)\]", parts[3]):
            ranges.append(((agno * agblocks + int(s)) * bs, int(c) * bs))
    elif kind == "swap" and line.startswith("SWAP"):
        _, hdr, size = line.split()
        ranges.append((int(hdr), int(size) - int(hdr)))

free = sum(l for _, l in ranges)
dirty = 0
with open(image, "rb") as f:
    for start, length in ranges:
        f.seek(part_off + start)
        left = length
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            for i in range(0, len(chunk), 4096):
                if chunk[i:i + 4096].count(0) != len(chunk[i:i + 4096]):
                    dirty += len(chunk[i:i + 4096])
            left -= len(chunk)
print(json.dumps({"index": index, "kind": kind, "free_bytes": free, "free_not_zero_bytes": dirty}))
