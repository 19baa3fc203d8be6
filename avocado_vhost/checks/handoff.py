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

import struct
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Set

from avocado_vhost.vhost_user import RingEvent, VhostUserBackend
from avocado_vhost.vhost_user.memory import AddressError
from avocado_vhost.vhost_user.state import Vring
from avocado_vhost.virtio import VirtioFeature

__all__ = ["RingHandoffMonitor", "RingEventRecord"]


@dataclass(frozen=True)
class RingEventRecord:
    time: float
    side: str
    ring: int
    event: RingEvent
    base: Optional[int]
    #: the split ring's used idx in guest memory at that moment (None:
    #: packed, behind a vIOMMU, or not mapped)
    used_idx: Optional[int] = None

    def __str__(self) -> str:
        base = "" if self.base is None else f" base={self.base}"
        used = "" if self.used_idx is None else f" used.idx={self.used_idx}"
        return (f"{self.time:8.4f} {self.side} ring {self.ring} "
                f"{self.event.value}{base}{used}")


def used_idx_in_memory(backend: VhostUserBackend, ring: Vring
                       ) -> Optional[int]:
    """The split ring's used idx as guest memory holds it now -- what the
    driver sees -- or None where it cannot be read that simply (a packed
    ring, addresses behind a vIOMMU, a ring not mapped)."""
    state = backend.state
    if ring.addr is None or state.behind_iommu or state.feature_acked(
            VirtioFeature.RING_PACKED):
        return None
    try:
        gpa = state.memory.uva_to_gpa(ring.addr.used)
        return int(struct.unpack("<H", state.memory.read(gpa + 2, 2))[0])
    except AddressError:
        return None


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
        # the back-end's own thread: its memory table cannot change now
        used = used_idx_in_memory(backend, ring)
        with self._lock:
            record = RingEventRecord(time.monotonic() - self._t0, side,
                                     ring.index, event, base, used)
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
        used_left: Dict[int, Optional[int]] = {}
        for e in events:
            if e.side == "source" and e.event is RingEvent.STOPPED and \
                    e.base is not None:
                reported[e.ring] = e.base
                used_left[e.ring] = e.used_idx
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
            left = used_left.get(e.ring)
            if left is not None and e.used_idx is not None and \
                    left != e.used_idx:
                found.append(
                    f"ring {e.ring}'s used idx was {left} in the source's "
                    f"memory when it stopped, {e.used_idx} in the "
                    "destination's when it started: the source's last "
                    "used-ring writes did not migrate (the dirty log)")
        return found

    def check(self) -> None:
        """:raise AssertionError: with the timeline, if a rule broke."""
        problems = self.problems()
        if problems:
            raise AssertionError(
                "ring handoff broken:\n  - " + "\n  - ".join(problems)
                + "\ntimeline:\n" + self.timeline())
