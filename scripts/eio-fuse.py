#!/usr/bin/python3
"""A FUSE filesystem that fails with EIO, for vmfinal's fault tests.

    scripts/eio-fuse.py MOUNTPOINT [--write-limit BYTES] [--source FILE --bad-read OFFSET]

Files created in it live in memory. A write that would take a file past
--write-limit bytes fails with EIO (a disk that dies mid-write). With
--source, the file `input.raw` serves FILE's bytes, and any read touching
--bad-read fails with EIO (an unreadable sector). Runs in the foreground
until unmounted (fusermount -u MOUNTPOINT). Needs python3-fusepy.
"""
import argparse
import errno
import os
import stat
import time

import fusepy as fuse


class Eio(fuse.Operations):
    def __init__(self, write_limit, source, bad_read):
        self.files = {}
        self.write_limit = write_limit
        self.source = source
        self.bad_read = bad_read
        self.now = time.time()

    def _attr(self, mode, size):
        return dict(st_mode=mode, st_nlink=1, st_size=size, st_ctime=self.now,
                    st_mtime=self.now, st_atime=self.now, st_uid=0, st_gid=0)

    def getattr(self, path, fh=None):
        if path == "/":
            return self._attr(stat.S_IFDIR | 0o755, 0)
        if self.source and path == "/input.raw":
            return self._attr(stat.S_IFREG | 0o644, os.path.getsize(self.source))
        if path in self.files:
            return self._attr(stat.S_IFREG | 0o644, len(self.files[path]))
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        names = [p[1:] for p in self.files]
        if self.source:
            names.append("input.raw")
        return [".", ".."] + names

    def create(self, path, mode, fi=None):
        if path in self.files:
            raise fuse.FuseOSError(errno.EEXIST)
        self.files[path] = bytearray()
        return 0

    def open(self, path, flags):
        self.getattr(path)
        return 0

    def read(self, path, size, offset, fh):
        if self.source and path == "/input.raw":
            if self.bad_read is not None and offset <= self.bad_read < offset + size:
                raise fuse.FuseOSError(errno.EIO)
            with open(self.source, "rb") as f:
                f.seek(offset)
                return f.read(size)
        return bytes(self.files[path][offset:offset + size])

    def write(self, path, data, offset, fh):
        buf = self.files[path]
        if self.write_limit is not None and offset + len(data) > self.write_limit:
            raise fuse.FuseOSError(errno.EIO)
        if len(buf) < offset:
            buf.extend(b"\0" * (offset - len(buf)))
        buf[offset:offset + len(data)] = data
        return len(data)

    def truncate(self, path, length, fh=None):
        buf = self.files[path]
        if self.write_limit is not None and length > self.write_limit:
            raise fuse.FuseOSError(errno.EIO)
        if length < len(buf):
            del buf[length:]
        else:
            buf.extend(b"\0" * (length - len(buf)))

    def unlink(self, path):
        if path not in self.files:
            raise fuse.FuseOSError(errno.ENOENT)
        del self.files[path]

    def rename(self, old, new):
        self.files[new] = self.files.pop(old)

    def fsync(self, path, datasync, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0

    def chmod(self, path, mode):
        return 0

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        return 0

    def statfs(self, path):
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=1 << 20, f_bfree=1 << 20,
                    f_bavail=1 << 20, f_files=1000, f_ffree=1000, f_namemax=255)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mountpoint")
    ap.add_argument("--write-limit", type=int)
    ap.add_argument("--source")
    ap.add_argument("--bad-read", type=int)
    a = ap.parse_args()
    fuse.FUSE(Eio(a.write_limit, a.source, a.bad_read), a.mountpoint, foreground=True,
              nothreads=True, allow_other=False, direct_io=True)


if __name__ == "__main__":
    main()
