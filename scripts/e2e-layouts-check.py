#!/usr/bin/env python3
"""Part of scripts/e2e-layouts.sh: checks the finalize --json report of the
LVM Debian guest (/ on LV vg-guest/root, the kernels step had work, every
cleaned filesystem checked) and prints the root LV's disk range.

    e2e-layouts-check.py REPORT.json
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
print(v["mapping"]["loop"]["start"], v["mapping"]["loop"]["size"])
