"""
Watching ring ownership pass from a migration source to its destination.

During live migration the source back-end owns the rings until QEMU stops
them with GET_VRING_BASE; the destination back-end may start them only
afterwards, from the position the source reported.  Two back-ends driving
one ring at once would corrupt the guest's queues.

:class:`RingHandoffMonitor` subscribes to both back-ends' ring events and
judges the rule at every start and stop, as it happens, instead of polling:
a start on one side while the other side still has a started ring is
recorded with the moment and the state of both sides.  It keeps its own
view of which rings run, under its own lock, so it never needs either
back-end's lock (the two threads cannot deadlock through it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Set

from .vhost_user import RingEvent, VhostUserBackend
from .vhost_user.state import Vring

__all__ = ["RingHandoffMonitor", "RingEventRecord"]


@dataclass(frozen=True)
class RingEventRecord:
    time: float
    side: str
    ring: int
    event: RingEvent
    base: Optional[int]

    def __str__(self) -> str:
        base = "" if self.base is None else f" base={self.base}"
        return (f"{self.time:8.4f} {self.side} ring {self.ring} "
                f"{self.event.value}{base}")


class RingHandoffMonitor:
    """Check that no ring runs on both sides, and where the handoff resumes.

    :param source: the migration source's back-end.
    :param destination: the destination's back-end.
    """

    def __init__(self, source: VhostUserBackend,
                 destination: VhostUserBackend):
        self.sides = {id(source): "source", id(destination): "destination"}
        self._lock = threading.Lock()
        self._running: Dict[str, Set[int]] = {"source": set(),
                                              "destination": set()}
        with source.lock():
            self._running["source"] = set(source.state.started_rings())
        with destination.lock():
            self._running["destination"] = set(
                destination.state.started_rings())
        self.events: List[RingEventRecord] = []
        self.overlaps: List[str] = []
        self._t0 = time.monotonic()
        source.ring_listeners.append(self._on_event)
        destination.ring_listeners.append(self._on_event)

    def _on_event(self, backend: VhostUserBackend, ring: Vring,
                  event: RingEvent) -> None:
        if event not in (RingEvent.STARTED, RingEvent.STOPPED):
            return
        side = self.sides[id(backend)]
        other = "destination" if side == "source" else "source"
        base = (ring.reported_base if event is RingEvent.STOPPED
                else ring.base)
        with self._lock:
            record = RingEventRecord(time.monotonic() - self._t0, side,
                                     ring.index, event, base)
            self.events.append(record)
            if event is RingEvent.STARTED:
                self._running[side].add(ring.index)
                if self._running[other]:
                    self.overlaps.append(
                        f"{record}: the {other} still runs rings "
                        f"{sorted(self._running[other])}")
            else:
                self._running[side].discard(ring.index)

    def timeline(self) -> str:
        with self._lock:
            return "\n".join(str(e) for e in self.events)

    def problems(self) -> List[str]:
        """Every broken handoff rule, as text (empty when all is well)."""
        with self._lock:
            events = list(self.events)
            found = list(self.overlaps)
        reported: Dict[int, int] = {}
        for e in events:
            if e.side == "source" and e.event is RingEvent.STOPPED and \
                    e.base is not None:
                reported[e.ring] = e.base
        for e in events:
            if e.side != "destination" or e.event is not RingEvent.STARTED:
                continue
            if e.ring not in reported:
                found.append(f"destination started ring {e.ring} but the "
                             "source never reported its base")
            elif reported[e.ring] != e.base:
                found.append(f"destination resumed ring {e.ring} at "
                             f"{e.base}, the source reported "
                             f"{reported[e.ring]}")
        return found

    def check(self) -> None:
        """:raise AssertionError: with the timeline, if a rule broke."""
        problems = self.problems()
        if problems:
            raise AssertionError(
                "ring handoff broken:\n  - " + "\n  - ".join(problems)
                + "\ntimeline:\n" + self.timeline())
