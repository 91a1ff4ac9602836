#!/usr/bin/env python3
"""Edits the committed LVM2 text metadata of a PV inside a disk image, the
way no LVM tool would (for tests/layouts.rs: an LV kind LVM cannot create
without device-mapper, names with control characters LVM refuses).

    scripts/lvm-edit-meta.py DISK PV_OFFSET OLD NEW [OLD NEW ...]

Each OLD (with Python escapes: \\n, \\x1b) must occur in the text of every
metadata area of the PV at byte PV_OFFSET of DISK; it is replaced by NEW,
and the area's slot (size, text checksum) and header checksum are written
again, so the result is metadata LVM's own checks accept. The text must not
wrap around the area's circular buffer (fresh metadata does not).
"""
import struct
import sys
import zlib

INITIAL_CRC = 0xF597A6CF


def lvm_crc(data):
    # LVM's calc_crc: reflected CRC-32, seed INITIAL_CRC, no final xor.
    return zlib.crc32(data, INITIAL_CRC ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def unescape(s):
    return s.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")


def main():
    if len(sys.argv) < 5 or len(sys.argv) % 2 != 1:
        sys.exit(__doc__)
    disk, pv = sys.argv[1], int(sys.argv[2])
    pairs = [(unescape(a), unescape(b)) for a, b in zip(sys.argv[3::2], sys.argv[4::2])]
    with open(disk, "r+b") as f:
        f.seek(pv)
        head = f.read(2048)
        la = next((s * 512 for s in range(4) if head[s * 512:s * 512 + 8] == b"LABELONE"), None)
        if la is None:
            sys.exit(f"{disk}: no PV label at byte {pv}")
        p = la + struct.unpack_from("<I", head, la + 20)[0] + 32 + 8
        lists = []
        for _ in range(2):  # data areas, then metadata areas
            cur = []
            while True:
                o, sz = struct.unpack_from("<QQ", head, p)
                p += 16
                if o == 0 and sz == 0:
                    break
                cur.append((o, sz))
            lists.append(cur)
        if not lists[1]:
            sys.exit(f"{disk}: the PV has no metadata area")
        for mda, mda_size in lists[1]:
            f.seek(pv + mda)
            h = bytearray(f.read(512))
            off, size, _, flags = struct.unpack_from("<QQII", h, 40)
            if off + size > mda_size:
                sys.exit(f"{disk}: metadata wraps in the area at {mda}")
            f.seek(pv + mda + off)
            text = f.read(size)
            for old, new in pairs:
                if old not in text:
                    sys.exit(f"{disk}: {old!r} not in the metadata at {mda}")
                text = text.replace(old, new)
            if off + len(text) > mda_size:
                sys.exit(f"{disk}: the edited metadata does not fit the area at {mda}")
            f.seek(pv + mda + off)
            f.write(text)
            struct.pack_into("<QQII", h, 40, off, len(text), lvm_crc(text), flags)
            struct.pack_into("<I", h, 0, lvm_crc(bytes(h[4:])))
            f.seek(pv + mda)
            f.write(h)


if __name__ == "__main__":
    main()
