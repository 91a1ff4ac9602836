#!/usr/bin/env python3
"""Part of scripts/e2e-layouts.sh: checks the finalize --json report of the
LVM Debian guest (/ on LV vg-guest/root, the kernels step had work, every
cleaned filesystem checked) and prints the root LV's disk range; with
--segments (the lvm2seg guest) the root LV must be mapped as two pieces that
are not back to back, printed as START:LEN START:LEN.

    e2e-layouts-check.py REPORT.json [--segments]
"""
import json
import sys

g = json.load(open(sys.argv[1]))["guest"]
m = {x["mountpoint"]: x["volume"] for x in g["mounts"]}
assert m.get("/") == "LVM logical volume vg-guest/root", m
k = [p for p in g["profiles"] if p["name"] == "kernels"][0]
assert any(s.get("remove_packages") for s in k["steps"]), "the kernels step had nothing to do"
checks = sorted(v["check"] or "" for v in g["verified"])
assert checks == ["e2fsck -fn", "e2fsck -fn"], g["verified"]
v = [x for x in g["volumes"] if x["name"] == "LVM logical volume vg-guest/root"][0]
if sys.argv[2:] == ["--segments"]:
    p = v["mapping"]["segments"]["pieces"]
    assert len(p) == 2 and p[0]["disk_start"] + p[0]["len"] != p[1]["disk_start"], p
    print(" ".join(f"{x['disk_start']}:{x['len']}" for x in p))
else:
    print(v["mapping"]["loop"]["start"], v["mapping"]["loop"]["size"])
