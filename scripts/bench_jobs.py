#!/usr/bin/env python3
"""
How the suite's wall time grows with tests and with parallel tasks.

    .venv/bin/python scripts/bench_jobs.py [--rounds N] [--tasks 1,2,4]
        [--profiles smoke,quick,protocol,main,all]
        [--orders longest-first,given]
        [--baseline CHECKOUT]

Runs each chosen profile with each task count (and each order Avocado can
start the tests in) once per round, the cases alternated within each round
so that a machine that slows down slows them all; prints per case the
median wall time, its ratio to the first task count (and the first order)
of the same profile measured in the same run, the number of tests and
seconds per test.  The profiles, from two tests to all of them:

``smoke``     two tests (what ``scripts/bench-check`` runs to see that this
              still runs);
``quick``     the tests tagged ``quick``, one or a few per capability, as
              README.rst names it for the edit-compile-test loop;
``protocol``  every test without the real guest, DPDK and the fault sweeps;
``main``      the whole of ``tests/functional`` (the main job);
``all``       ``tests/functional`` and ``tests/kit`` (the conformance kit's
              own tests, and its scenarios, which CANCEL without a back-end).

``--baseline`` names another checkout of the suite, set up with its own
``./setup.sh`` (say, ``git worktree add /tmp/before <commit>``): each of
its profiles runs too, alternated with this checkout's, in Avocado's order
and its own settings, so that "before" and "after" are measured in the
same run (a profile naming a directory the baseline lacks is skipped
there).

The orders: ``longest-first`` (the suite's plugin,
``avocado_vhost/runner/avocado_order.py``) and ``given`` (Avocado's own,
alphabetical).  Every job must end without ERROR or FAIL (a failing job is
not a measurement).  Its results go to a temporary directory, so a
benchmark neither reads nor leaves the history the longest-first order
learns from -- each job of it orders by the tags' priors alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
PROFILES = {
    "smoke": ["--filter-by-tags=smoke"],
    "quick": ["--filter-by-tags=quick"],
    "protocol": ["--filter-by-tags=-guest,-dpdk,-fault-sweep",
                 "--filter-by-tags-include-empty"],
    "main": [],
    "all": ["tests/kit"],
}
ORDERS = ("longest-first", "given")


def job(profile: str, tasks: int, order: str, root: str = ROOT
        ) -> Tuple[float, int]:
    """One job of the checkout at ``root``: (wall seconds, tests).  A
    baseline runs in its own order (it may not know the setting)."""
    with tempfile.TemporaryDirectory(prefix="avh-jobs-") as results:
        config: List[str] = []
        if root == ROOT:
            config = ["--config", os.path.join(results, "order.conf")]
            with open(config[1], "w", encoding="utf-8") as out:
                out.write(f"[vhost]\norder = {order}\n")
        start = time.monotonic()
        proc = subprocess.run(
            [os.path.join(root, ".venv/bin/avocado"), *config,
             "run", "--job-results-dir", results, "--max-parallel-tasks",
             str(tasks), os.path.join(root, "tests/functional"),
             *[os.path.join(root, arg) if arg.startswith("tests/") else arg
               for arg in PROFILES[profile]]],
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
    parser.add_argument("--profiles", default="quick",
                        help=f"comma-separated, of {', '.join(PROFILES)}")
    parser.add_argument("--orders", default="longest-first",
                        help=f"comma-separated, of {', '.join(ORDERS)}")
    parser.add_argument("--baseline", default=None,
                        help="another checkout, set up, to compare with")
    args = parser.parse_args()
    counts = [int(t) for t in args.tasks.split(",")]
    profiles = args.profiles.split(",")
    orders = args.orders.split(",")
    for name in profiles:
        if name not in PROFILES:
            parser.error(f"no profile {name!r}")
    for name in orders:
        if name not in ORDERS:
            parser.error(f"no order {name!r}")
    if args.baseline:
        orders.append("baseline")

    def runs_there(profile: str, how: str) -> bool:
        """A baseline older than a profile's directories skips it."""
        return how != "baseline" or all(
            os.path.exists(os.path.join(args.baseline, arg))
            for arg in PROFILES[profile] if arg.startswith("tests/"))

    cases = [(p, t, o) for p in profiles for t in counts for o in orders
             if runs_there(p, o)]
    samples = Samples()
    tests: Dict[str, int] = {}
    for number, order in rounds(args.rounds, cases):
        for profile, tasks, how in order:
            if how == "baseline":
                wall, count = job(profile, tasks, how, args.baseline)
                tests[f"{profile} baseline"] = count
            else:
                wall, tests[profile] = job(profile, tasks, how)
            samples.add(f"{profile} {tasks} {how}", wall)
        print(samples.progress(number, "{:.1f} s"), flush=True)
    print(f"\n{os.cpu_count()} CPUs, median of {args.rounds}:")
    lines: List[str] = []
    for profile in profiles:
        base = f"{profile} {counts[0]} {orders[0]}"
        for tasks in counts:
            for how in orders:
                case = f"{profile} {tasks} {how}"
                if case not in samples:
                    continue
                med = samples.median(case)
                count = tests[f"{profile} baseline" if how == "baseline"
                             else profile]
                lines.append(
                    f"  {profile:8} {count:4d} tests  {tasks} "
                    f"task(s)  {how:13} {med:6.1f} s  "
                    f"({samples.ratio(case, base):.2f}x of {counts[0]} "
                    f"task(s) {orders[0]}; "
                    f"{med / count:.2f} s per test)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
