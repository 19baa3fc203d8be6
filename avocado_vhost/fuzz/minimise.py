"""
Cutting a failing run down to a short reproducer.

Zeller's delta debugging (ddmin): try dropping halves, then quarters, ...
of the steps, keeping any cut that still fails the same way; then try
dropping steps one at a time.  Every try replays from a freshly started
back-end, so the budget is counted in replays and in seconds.
"""

from __future__ import annotations

import time
from typing import Callable, List, Sequence, TypeVar

__all__ = ["ddmin"]

T = TypeVar("T")


def ddmin(items: Sequence[T], fails: Callable[[List[T]], bool],
          max_tries: int = 300, max_seconds: float = 180.0) -> List[T]:
    """The shortest sublist found (order kept) for which ``fails`` holds;
    ``items`` itself must fail.  Stops early when the budget is spent,
    returning the best so far."""
    best = list(items)
    deadline = time.monotonic() + max_seconds
    tries = 0

    def spent() -> bool:
        return tries >= max_tries or time.monotonic() >= deadline

    chunks = 2
    while len(best) >= 2 and not spent():
        size = max(1, len(best) // chunks)
        cut = False
        for start in range(0, len(best), size):
            if spent():
                break
            candidate = best[:start] + best[start + size:]
            tries += 1
            if candidate and fails(candidate):
                best, chunks, cut = candidate, max(chunks - 1, 2), True
                break
        if not cut:
            if size == 1:
                break
            chunks = min(len(best), chunks * 2)
    return best
