"""
Longest test first: the suite's Avocado plugin that orders a job's tests
by what each is expected to cost (``avocado.plugins.result_events``, whose
``pre_tests`` runs between resolving the tests and starting them).

Why: Avocado starts tests in the order it found them, alphabetical by file.
A twenty-second fault sweep or a real guest found late starts when the
other slots are already draining, and the job's last seconds run one test
on an idle machine (``scripts/job_times.py`` shows it as time with fewer
tests running than slots).  Started first, long tests overlap the many
short ones; it is the classic longest-processing-time rule, and it needs
only an estimate.

The estimate of a test is what it took the last time this machine ran it
(the newest of the recent jobs in the job results directory that has it);
a test never run here gets a prior from its tags (:data:`PRIORS`).  Ties
keep Avocado's order, so the order is stable.  ``--shuffle`` wins (the
runner shuffles after this), and ``vhost.order = given`` in an Avocado
config file keeps Avocado's order.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Iterable, List, Mapping

from avocado.core.plugin_interfaces import ResultEvents

__all__ = ["VhostOrder", "estimates", "order", "PRIORS", "HISTORY_JOBS"]

#: seconds a test of this tag takes, for a test with no history here
#: (measured on 2 CPUs, 4 tasks, Debian's QEMU 7.2: job_times.py by tag)
PRIORS: Mapping[str, float] = {
    "fault-sweep": 15.0, "guest": 6.0, "postcopy": 5.0, "fuzz": 2.0,
    "dpdk": 2.0, "reconnect": 2.0, "migration": 2.0, "inflight": 1.5}
#: the prior of a test without any of those tags
DEFAULT_PRIOR = 0.5
#: how many of the newest jobs to read the tests' times from
HISTORY_JOBS = 8


def test_key(name: str) -> str:
    """A test's name without where its file was found from and without
    Avocado's task number: ``test_x.py:Class.test_y`` (with its variant)."""
    return os.path.basename(name.split("-", 1)[1] if name[:1].isdigit()
                            and "-" in name else name)


def history(results_dir: str, jobs: int = HISTORY_JOBS) -> Dict[str, float]:
    """Each test's time in the newest of the last ``jobs`` jobs that ran it;
    unreadable jobs are skipped (a job still running has no results yet)."""
    found = sorted(glob.glob(os.path.join(results_dir, "job-*",
                                          "results.json")),
                   key=os.path.getmtime)[-jobs:]
    times: Dict[str, float] = {}
    for path in found:  # oldest first: newer jobs overwrite
        try:
            with open(path, encoding="utf-8") as src:
                tests = json.load(src).get("tests", [])
        except (OSError, ValueError):
            continue
        for test in tests:
            elapsed = test.get("time_elapsed")
            if isinstance(elapsed, (int, float)) and test.get("name"):
                times[test_key(str(test["name"]))] = float(elapsed)
    return times


def prior(tags: Iterable[str]) -> float:
    """The cost of a test never run here, from its tags."""
    return max((PRIORS[t] for t in tags if t in PRIORS),
               default=DEFAULT_PRIOR)


def estimates(runnables: List[Any], times: Mapping[str, float]
              ) -> List[float]:
    """Each runnable's expected seconds: its history, else its prior."""
    return [times.get(test_key(str(r.uri)), prior(r.tags or {}))
            for r in runnables]


def order(runnables: List[Any], times: Mapping[str, float]) -> List[Any]:
    """Longest expected first; ties in the given order."""
    costs = estimates(runnables, times)
    ranked = sorted(range(len(runnables)), key=lambda i: (-costs[i], i))
    return [runnables[i] for i in ranked]


class VhostOrder(ResultEvents):
    """Start the tests expected to take longest first."""

    name = "vhost-order"
    description = "avocado-vhost: start the longest tests first"

    def __init__(self, config: Any = None) -> None:
        """Avocado hands every result_events plugin the job's config; this
        one reads it from the job in :meth:`pre_tests` instead."""

    def pre_tests(self, job: Any) -> None:
        config = job.config
        if config.get("run.shuffle") or config.get("vhost.order") == "given":
            return
        results_dir = os.path.dirname(job.logdir)
        times = history(results_dir)
        for suite in job.test_suites:
            if suite.tests and all(hasattr(r, "uri") for r in suite.tests):
                suite.tests = order(list(suite.tests), times)

    def post_tests(self, job: Any) -> None:
        pass

    def start_test(self, result: Any, state: Any) -> None:
        pass

    def test_progress(self, progress: bool = False) -> None:
        pass

    def end_test(self, result: Any, state: Any) -> None:
        pass
