#!/usr/bin/env python3
# Used to find where compaction waits (README, Benchmarks): blocked time per
# thread is what a pipeline stall costs; runnable time is other load on the host.
# offcpu.py CMD...: runs CMD and samples /proc/PID/task/*/schedstat every
# 20 ms; per thread name: on-CPU s, runnable-but-waiting s (contention), and
# blocked s (lifetime - the two: waiting on I/O, locks, channels).
import os, subprocess, sys, time, collections
p = subprocess.Popen(sys.argv[1:])
seen = {}
t0 = time.monotonic()
while p.poll() is None:
    now = time.monotonic()
    try:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            try:
                run, wait, _ = map(int, open(f"/proc/{p.pid}/task/{tid}/schedstat").read().split())
                comm = open(f"/proc/{p.pid}/task/{tid}/comm").read().strip()
            except OSError:
                continue
            s = seen.setdefault(tid, [comm, now, now, 0, 0])
            s[0], s[2], s[3], s[4] = comm, now, run, wait
    except OSError:
        pass
    time.sleep(0.02)
wall = time.monotonic() - t0
agg = collections.OrderedDict()
for tid, (comm, first, last, run, wait) in seen.items():
    a = agg.setdefault(f'{comm}[{len(agg)}]' if len(sys.argv) > 0 else comm, [0, 0.0, 0.0, 0.0])
    life = last - first
    a[0] += 1; a[1] += run / 1e9; a[2] += wait / 1e9; a[3] += max(0.0, life - run / 1e9 - wait / 1e9)
print(f"wall {wall:.2f} s, exit {p.returncode}", file=sys.stderr)
print(f"{'thread':18} {'n':>3} {'on-cpu s':>9} {'runnable s':>11} {'blocked s':>10}", file=sys.stderr)
for c, (n, r, w, b) in agg.items():
    print(f"{c:18} {n:3} {r:9.2f} {w:11.2f} {b:10.2f}", file=sys.stderr)
