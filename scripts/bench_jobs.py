#!/usr/bin/env python3
"""
How the suite's wall time grows with parallel tasks and with tests.

    .venv/bin/python scripts/bench_jobs.py [--rounds N] [--tasks 1,2,4]
        [--profile quick|main|smoke]

Runs the chosen profile (``quick``: the protocol tests, without the real
guest, DPDK and the fault sweep, as README.rst names it; ``main``: the
whole of ``tests/functional``) once per task count per round, the counts
alternated within each round so that a machine that slows down slows them
all; prints the median wall time per count, its ratio to one task
measured in the same run, the number of tests, and seconds per test.
Every job must pass (a failing job is not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
PROFILES = {
    "quick": ["--filter-by-tags=-guest,-dpdk,-fault-sweep",
              "--filter-by-tags-include-empty"],
    "main": [],
    # two tests: what scripts/bench-check runs to see that this still runs
    "smoke": ["--filter-by-tags=smoke"],
}


def job(profile: str, tasks: int) -> Tuple[float, int]:
    """One job: (wall seconds, number of tests)."""
    with tempfile.TemporaryDirectory(prefix="avh-jobs-") as results:
        start = time.monotonic()
        proc = subprocess.run(
            [os.path.join(ROOT, ".venv/bin/avocado"), "run",
             "--job-results-dir", results, "--max-parallel-tasks",
             str(tasks), os.path.join(ROOT, "tests/functional"),
             *PROFILES[profile]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800,
            check=False)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit(f"{profile} job with {tasks} task(s) failed:\n"
                     f"{proc.stdout.decode()[-3000:]}")
        with open(os.path.join(results, "latest", "results.json"),
                  encoding="utf-8") as src:
            count = len(json.load(src)["tests"])
    return wall, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", default="1,2,4")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        default="quick")
    args = parser.parse_args()
    counts = [int(t) for t in args.tasks.split(",")]
    samples = Samples()
    tests = 0
    for number, order in rounds(args.rounds, counts):
        for tasks in order:
            wall, tests = job(args.profile, tasks)
            samples.add(f"{tasks} task(s)", wall)
        print(samples.progress(number, "{:.1f} s"), flush=True)
    base = f"{counts[0]} task(s)"
    print(f"\n{args.profile} profile, {tests} tests, {os.cpu_count()} CPUs,"
          f" median of {args.rounds}:")
    for tasks in counts:
        med = samples.median(f"{tasks} task(s)")
        print(f"  {tasks} task(s): {med:6.1f} s  "
              f"({samples.ratio(f'{tasks} task(s)', base):.2f}x of {base}; "
              f"{med / tests:.2f} s per test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
