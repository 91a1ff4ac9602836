#!/usr/bin/env python3
"""Makes a single-device btrfs image lie inside a data chunk: the largest
data extent's EXTENT_ITEM is shrunk to one sector and its block group
item's `used` lowered by the same amount, in every copy of the extent tree
leaf that holds them, with the leaf's CRC32c recomputed. The extent tree
then adds up (so `used` agrees) but calls the extent's tail free, while the
file's EXTENT_DATA item and the checksum tree still cover it.

    scripts/btrfs-extent-lie.py IMG

Only leaves of the extent tree (owner 2) that hold both items are edited;
the image must have no block group tree (btrfs-progs 6.2's default)."""
import struct
import sys

POLY = 0x82F63B78
TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ POLY if c & 1 else c >> 1
    TABLE.append(c)


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = TABLE[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def items(leaf):
    n = struct.unpack_from("<I", leaf, 96)[0]
    for i in range(n):
        at = 101 + i * 25
        oid, kind, off, doff, size = struct.unpack_from("<QBQII", leaf, at)
        yield at, oid, kind, off, 101 + doff, size


def main():
    img = sys.argv[1]
    with open(img, "r+b") as f:
        f.seek(0x10000)
        sb = f.read(4096)
        if sb[64:72] != b"_BHRfS_M":
            sys.exit("not btrfs")
        fsid = sb[32:48]
        sector, node = struct.unpack_from("<II", sb, 0x90)
        f.seek(0, 2)
        size = f.tell()
        edited = 0
        target = None
        for at in range(0x100000, size - node + 1, 4096):
            f.seek(at)
            leaf = bytearray(f.read(node))
            if leaf[32:48] != fsid or leaf[100] != 0:
                continue
            if struct.unpack_from("<Q", leaf, 88)[0] != 2:
                continue
            if struct.unpack_from("<I", leaf, 0)[0] != crc32c(leaf[32:]):
                continue
            its = list(items(leaf))
            groups = [
                (oid, off, d)
                for _, oid, kind, off, d, _ in its
                if kind == 192 and struct.unpack_from("<Q", leaf, d + 16)[0] & 7 == 1
            ]
            best = None
            for a, oid, kind, off, _, _ in its:
                if kind != 168 or off <= sector:
                    continue
                for g, glen, d in groups:
                    if g <= oid < g + glen and (best is None or off > best[2]):
                        best = (a, oid, off, d)
            if best is None:
                continue
            a, oid, off, d = best
            if target not in (None, (oid, off)):
                continue
            target = (oid, off)
            struct.pack_into("<Q", leaf, a + 9, sector)
            used = struct.unpack_from("<Q", leaf, d)[0]
            struct.pack_into("<Q", leaf, d, used - (off - sector))
            struct.pack_into("<I", leaf, 0, crc32c(leaf[32:]))
            f.seek(at)
            f.write(leaf)
            edited += 1
        if not edited:
            sys.exit("no extent tree leaf holds a data extent and its block group")
    print(f"extent {target[0]} (+{target[1]}) shrunk to {sector} bytes in {edited} leaves")


main()
