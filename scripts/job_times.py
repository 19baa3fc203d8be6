#!/usr/bin/env python3
"""
Where an Avocado job's time went: read from its ``results.json`` (the
latest job by default), never from a timed run of its own.

    .venv/bin/python scripts/job_times.py [JOB_DIR] [--top N]

It prints the job's wall time; the sum of the tests' times and how busy
that kept the job's parallel slots (the sum over wall x the most tests seen
running at once); the time spent with fewer tests running than slots
(cores left idle, above all at the end, when a long test started last);
the time per tag (guest, dpdk, migration, ...); the time per phase (QEMU's
launch, driver set-up, guest boot, link, migration, tear-down, the check
itself: what each test wrote to its ``phases.json``); the slowest tests.  It
is the measure behind issue 24 (the suite's own cost): run it after
``avocado run tests/functional`` to see what to cut first.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple


def latest_job() -> str:
    jobs = sorted(glob.glob(os.path.expanduser(
        "~/avocado/job-results/job-*/results.json")), key=os.path.getmtime)
    if not jobs:
        raise SystemExit("no Avocado job under ~/avocado/job-results")
    return os.path.dirname(jobs[-1])


def concurrency(spans: List[Tuple[float, float]]
                ) -> Tuple[int, Dict[int, float]]:
    """The most spans open at once, and the time spent with k open."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    open_now, peak, at = 0, 0, events[0][0] if events else 0.0
    spent: Dict[int, float] = defaultdict(float)
    for when, step in events:
        spent[open_now] += when - at
        at = when
        open_now += step
        peak = max(peak, open_now)
    return peak, dict(spent)


def phase_lines(tests: List[Dict[str, Any]], total: float) -> List[str]:
    """The job's test time split by phase, from each test's
    ``phases.json`` (``avocado_vhost/plumbing/phases.py``); what Avocado's runner
    spent inside a test's time (its process, logging) is the rest."""
    spent: Dict[str, float] = defaultdict(float)
    counted = 0
    for t in tests:
        try:
            with open(os.path.join(t.get("logdir") or "", "phases.json"),
                      encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        counted += 1
        for name, seconds in record["phases"].items():
            spent[name] += seconds
    if not counted:
        return []
    spent["avocado's runner"] = max(0.0, total - sum(spent.values()))
    lines = [f"by phase ({counted} of {len(tests)} tests recorded them; "
             "seconds, share of test time):"]
    lines += [f"  {name:18} {sec:7.1f} {100 * sec / max(total, 1e-9):4.0f}%"
              for name, sec in sorted(spent.items(), key=lambda kv: -kv[1])]
    return lines


def report(results: Dict[str, Any], top: int) -> str:
    tests = results["tests"]
    spans = [(t["time_start"], t["time_end"]) for t in tests]
    wall = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans \
        else 0.0
    total = sum(t["time_elapsed"] for t in tests)
    peak, spent = concurrency(spans)
    lines = [f"job {results['job_id'][:8]}: {len(tests)} tests, wall time "
             f"(first start to last end) {wall:.1f} s",
             f"test time summed: {total:.1f} s over {peak} slot(s): "
             f"{100 * total / max(wall * peak, 1e-9):.0f}% busy"]
    lines += [f"  {k} running: {spent.get(k, 0.0):6.1f} s"
              for k in range(peak + 1) if spent.get(k, 0.0) >= 0.05]
    lines.append(f"slot time outside every test (Avocado starting the next "
                 f"test's process, or nothing left to start): "
                 f"{max(0.0, wall * peak - total):.1f} s")
    by_tag: Dict[str, List[float]] = defaultdict(list)
    for t in tests:
        for tag in (t.get("tags") or {}):
            if tag not in ("arch", "vhost-user"):
                by_tag[tag].append(t["time_elapsed"])
    lines.append("by tag (tests, seconds):")
    lines += [f"  {tag:16} {len(v):3} {sum(v):7.1f}" for tag, v in
              sorted(by_tag.items(), key=lambda kv: -sum(kv[1]))]
    lines += phase_lines(tests, total)
    lines.append(f"slowest {top}:")
    lines += [f"  {t['time_elapsed']:6.1f} s  {t['status']:6} {t['name']}"
              for t in sorted(tests, key=lambda t: -t["time_elapsed"])[:top]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("job", nargs="?", help="job directory (latest)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    with open(os.path.join(args.job or latest_job(), "results.json"),
              encoding="utf-8") as f:
        print(report(json.load(f), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
