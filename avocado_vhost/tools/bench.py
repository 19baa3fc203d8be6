"""
What every benchmark script in ``scripts/`` shares: the order of its
measurements and the figures it reports.

A benchmark here never states a bare time or rate.  It measures its cases
in rounds, each round in another order (a machine that slows down, warms
up or runs something else meanwhile then slows every case alike), and
reports medians (one disturbed run does not move them) and ratios against
a baseline measured in the same run (a figure from another day or another
machine says nothing).  ``rounds`` gives the order, ``Samples`` keeps the
measurements and derives the figures::

    samples = Samples()
    for number, order in rounds(args.rounds, ["direct", "proxy"]):
        for case in order:
            samples.add(case, measure(case))
        print(samples.progress(number), flush=True)
    print(f"ratio {samples.ratio('proxy', 'direct'):.2f}x")
"""

from __future__ import annotations

import statistics
from typing import Dict, Iterator, List, Sequence, Tuple, TypeVar

T = TypeVar("T")


def rounds(count: int, cases: Sequence[T]) -> Iterator[Tuple[int, List[T]]]:
    """``(round number, the cases in this round's order)`` for ``count``
    rounds: the order rotates by one each round, so that no case always
    runs first (or right after the same other one)."""
    cases = list(cases)
    for number in range(count):
        shift = number % len(cases) if cases else 0
        yield number, cases[shift:] + cases[:shift]


class Samples:
    """Measurements by case name, in the order they were taken."""

    def __init__(self) -> None:
        self.values: Dict[str, List[float]] = {}

    def add(self, case: str, value: float) -> float:
        """Record one measurement of ``case``; returns it, for printing."""
        self.values.setdefault(case, []).append(value)
        return value

    def __contains__(self, case: object) -> bool:
        return case in self.values

    def count(self, case: str) -> int:
        """How many measurements of ``case`` there are."""
        return len(self.values.get(case, []))

    def median(self, case: str) -> float:
        """The median of ``case``'s measurements.

        :raise KeyError: ``case`` was never measured (a misspelt case is
            not a zero).
        """
        if not self.values.get(case):
            raise KeyError(f"no measurement of {case!r}; measured: "
                           f"{', '.join(self.values) or 'nothing'}")
        return statistics.median(self.values[case])

    def ratio(self, case: str, baseline: str) -> float:
        """``case``'s median over ``baseline``'s, both from this run."""
        base = self.median(baseline)
        if base == 0:
            raise ZeroDivisionError(f"the baseline {baseline!r} measured 0")
        return self.median(case) / base

    def difference(self, case: str, baseline: str) -> float:
        """``case``'s median minus ``baseline``'s: for a cost on top of
        the baseline, as a failure's cost over a pass."""
        return self.median(case) - self.median(baseline)

    def progress(self, number: int, fmt: str = "{:.2f}") -> str:
        """One line after round ``number`` (from 0): each case's latest
        measurement, so that a long benchmark shows it is alive and a
        disturbed round can be seen."""
        return f"round {number + 1}: " + ", ".join(
            f"{case} {fmt.format(values[-1])}"
            for case, values in self.values.items() if values)
