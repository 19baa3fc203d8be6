"""
Where one test's time goes, by phase: QEMU's launch (to QMP ready), the
test-side driver's set-up and the back-end's rings starting, a guest's boot to its ready marker and its link,
a migration, tear-down, and what is left: the check itself.

Each phase is timed where it happens (``with phase("guest-boot"):``), in
the test's own process (Avocado runs one test per process; a module-level
clock is that test's clock).  Phases nest -- QEMU's launch inside a
guest's start, QEMU's shutdown inside tear-down -- and each second is
charged to the innermost phase, so the phases and the check add up to the
test's time.  The harness writes the sums to ``phases.json`` beside the
test's log; ``scripts/job_times.py`` adds them up over a job.  Nothing here
asserts on time: the suite's speed is measured by its benchmarks.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import ContextManager, Dict, Iterator, List

__all__ = ["phase", "PhaseClock", "CLOCK", "CHECK"]

#: the name of the time no phase claimed: the test's own work
CHECK = "check"


class PhaseClock:
    """Exclusive time per phase name since :meth:`reset`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.spent: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}
        # time claimed by phases nested in each open phase
        self._nested: List[float] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            inner = self._nested.pop()
            self.spent[name] = self.spent.get(name, 0.0) + elapsed - inner
            self.counts[name] = self.counts.get(name, 0) + 1
            if self._nested:
                self._nested[-1] += elapsed

    def summary(self) -> Dict[str, object]:
        """The test's time so far, and its split by phase (``check``: the
        rest)."""
        total = time.monotonic() - self.started
        spent = dict(self.spent)
        spent[CHECK] = max(0.0, total - sum(self.spent.values()))
        return {"total": round(total, 4),
                "phases": {k: round(v, 4) for k, v in spent.items()},
                "counts": dict(self.counts)}

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.summary(), out, indent=1)


#: the clock of the test this process runs
CLOCK = PhaseClock()


def phase(name: str) -> ContextManager[None]:
    """Charge what runs inside to phase ``name`` of this test."""
    return CLOCK.phase(name)
