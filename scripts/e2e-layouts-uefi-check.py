#!/usr/bin/env python3
"""Part of scripts/e2e-layouts.sh: checks the finalize --json report of the
UEFI Debian guest (/ on xfs, the kernels step had work, the xfs checked
with xfs_repair -n; the ESP at /boot/efi mounted as vfat where the host
kernel has vfat, else not mounted with the one --skip-unmountable warning,
in the report).

    e2e-layouts-uefi-check.py REPORT.json STDERR VFAT(0|1) ESP_UUID
"""
import json
import sys

g = json.load(open(sys.argv[1]))["guest"]
err = open(sys.argv[2]).read()
vfat = sys.argv[3] == "1"
euuid = sys.argv[4]
m = {x["mountpoint"]: x for x in g["mounts"]}
assert m["/"]["fstype"] == "xfs", g["mounts"]
k = [p for p in g["profiles"] if p["name"] == "kernels"][0]
assert any(s.get("remove_packages") for s in k["steps"]), "the kernels step had nothing to do"
checks = {v["fstype"]: v["check"] for v in g["verified"]}
assert checks.get("xfs") == "xfs_repair -n", g["verified"]
w = [x for x in g["warnings"] if "/boot/efi" in x]
if vfat:
    assert m["/boot/efi"]["fstype"] == "vfat", g["mounts"]
    assert not w, g["warnings"]
else:
    assert "/boot/efi" not in m, g["mounts"]
    assert len(w) == 1, g["warnings"]
    assert f"UUID={euuid}" in w[0], w[0]
    assert w[0].endswith("not mounted (--skip-unmountable)"), w[0]
    # With --json the warnings are in the report only (stderr stays empty).
    assert "/boot/efi" in err or not err.strip(), err
    print("e2e-layouts: uefi: warned:", w[0])
print(
    "e2e-layouts: uefi: / on xfs; old kernel purged; verified:",
    ", ".join(f"{v['volume']} {v['check']}" for v in g["verified"]),
)
