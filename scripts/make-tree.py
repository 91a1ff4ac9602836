#!/usr/bin/env python3
"""Builds a synthetic guest file tree from a recipe (vm-fixtures/*/tree.txt).

    scripts/make-tree.py RECIPE OUTDIR

Recipe lines (paths are guest paths; '#' starts a comment):
    dir  PATH [MODE]                 a directory (parents made as needed)
    file PATH SIZE [random|zero|text]  SIZE like 4096, 100K, 2M; default random
    text PATH CONTENT...             the rest of the line; '\\n' is a newline
    link PATH TARGET                 a symlink (TARGET kept verbatim)
    mode PATH MODE                   chmod (octal)
    cc   PATH SOURCE                 SOURCE (C, relative to the recipe) built
                                     statically with gcc: a guest program
    copy PATH SOURCE                 SOURCE (relative to the recipe) copied in
    clone PATH GUESTPATH             a second file with GUESTPATH's content
    hardlink PATH GUESTPATH          a hard link to GUESTPATH
    rpmdb DIR NAME-VER-REL:SIZE...   DIR/rpmdb.sqlite, a real rpm database
                                     (rpmbuild + rpm --justdb) of packages
                                     whose one file is SIZE bytes; or
          NAME-VER-REL.ARCH=P1,P2[;Tag:value...]  a package owning the
                                     tree's files P1, P2 (none: a meta
                                     package), with extra spec lines such as
                                     Provides:/Requires: (~ for a space)
    include RECIPE                   another recipe, relative to this one
Random content is seeded by the path, so the same recipe gives the same bytes.
"""
import os
import random
import shutil
import subprocess
import sys


def size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def build(recipe, out):
    base = os.path.dirname(os.path.abspath(recipe))
    for n, line in enumerate(open(recipe), 1):
        line = line.rstrip("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 2)
        kind = parts[0]
        if kind == "include":
            build(os.path.join(base, parts[1]), out)
            continue
        if len(parts) < 2 or not parts[1].startswith("/"):
            sys.exit(f"{recipe}:{n}: expected KIND /PATH ...")
        path = out + parts[1]
        arg = parts[2] if len(parts) > 2 else ""
        if kind == "dir":
            os.makedirs(path, exist_ok=True)
            if arg:
                os.chmod(path, int(arg, 8))
            continue
        if kind == "mode":
            os.chmod(path, int(arg, 8), follow_symlinks=False)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "copy":
            shutil.copyfile(os.path.join(base, arg), path)
            continue
        if kind == "clone":
            shutil.copyfile(out + arg, path)
            continue
        if kind == "hardlink":
            if os.path.lexists(path):
                os.remove(path)
            os.link(out + arg, path)
            continue
        if kind == "rpmdb":
            rpmdb(path, arg.split(), out)
            continue
        if kind == "cc":
            src = os.path.join(base, arg)
            subprocess.run(["gcc", "-static", "-O1", "-w", "-o", path, src], check=True)
            continue
        if kind == "file":
            a = arg.split()
            nbytes = size(a[0])
            how = a[1] if len(a) > 1 else "random"
            rng = random.Random(parts[1])
            with open(path, "wb") as f:
                if how == "zero":
                    f.write(bytes(nbytes))
                elif how == "text":
                    words = [b"lorem", b"ipsum", b"dolor", b"sit", b"amet", b"\n"]
                    buf = bytearray()
                    while len(buf) < nbytes:
                        buf += rng.choice(words) + b" "
                    f.write(bytes(buf[:nbytes]))
                else:
                    f.write(rng.randbytes(nbytes))
        elif kind == "text":
            with open(path, "w") as f:
                f.write(arg.replace("\\n", "\n"))
        elif kind == "link":
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
            os.symlink(arg, path)
        else:
            sys.exit(f"{recipe}:{n}: unknown kind {kind}")


SPEC = """Name: {name}
Version: {ver}
Release: {rel}
Summary: vmfinal fixture package
License: MIT
BuildArch: noarch
%description
vmfinal fixture package
%install
mkdir -p %{{buildroot}}/usr/share/{name}
head -c {size} /dev/zero > %{{buildroot}}/usr/share/{name}/data
%files
/usr/share/{name}/data
"""


OWNED = """Name: {name}
Version: {ver}
Release: {rel}
Summary: vmfinal fixture package
License: MIT
BuildArch: {arch}
{extra}
%global __os_install_post %{{nil}}
%global debug_package %{{nil}}
%global _build_id_links none
%description
vmfinal fixture package
"""


def rpmdb(dbdir, pkgs, root):
    """A real rpmdb.sqlite in dbdir, made by rpm itself."""
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        db = os.path.join(t, "db")
        os.makedirs(db)
        defs = ["--define", "_db_backend sqlite", "--dbpath", db]
        subprocess.run(["rpm", *defs, "--initdb"], check=True)
        for n, p in enumerate(pkgs):
            if "=" in p.split(";", 1)[0]:
                head, *extra = p.split(";")
                nvra, files = head.split("=", 1)
                name, ver, rel = nvra.rsplit("-", 2)
                rel, arch = rel.rsplit(".", 1)
                files = [f for f in files.split(",") if f]
                body = OWNED.format(name=name, ver=ver, rel=rel, arch=arch,
                                    extra="\n".join(e.replace("~", " ") for e in extra))
                body += "%install\n"
                for f in files:
                    body += f"mkdir -p %{{buildroot}}{os.path.dirname(f)}\n"
                    body += f"cp -a {root}{f} %{{buildroot}}{f}\n"
                body += "%files\n" + "".join(f + "\n" for f in files)
            else:
                nvr, sz = p.rsplit(":", 1)
                name, ver, rel = nvr.rsplit("-", 2)
                body = SPEC.format(name=name, ver=ver, rel=rel, size=size(sz))
            spec = os.path.join(t, f"{n}-{name}.spec")
            with open(spec, "w") as f:
                f.write(body)
            subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", "_topdir " + t + "/top",
                            "--define", "_binary_payload w.ufdio", spec], check=True,
                           stdout=subprocess.DEVNULL)
        rpms = [os.path.join(r, f) for r, _, fs in os.walk(t + "/top/RPMS") for f in fs]
        subprocess.run(["rpm", *defs, "-i", "--justdb", "--nodeps", "--noscripts", *sorted(rpms)],
                       check=True, stderr=subprocess.DEVNULL)
        # Checkpoint the write-ahead log into the database file.
        subprocess.run(["rpm", *defs, "-qa"], check=True, stdout=subprocess.DEVNULL)
        os.makedirs(dbdir, exist_ok=True)
        shutil.copyfile(os.path.join(db, "rpmdb.sqlite"), os.path.join(dbdir, "rpmdb.sqlite"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    os.makedirs(sys.argv[2], exist_ok=True)
    build(sys.argv[1], sys.argv[2])
