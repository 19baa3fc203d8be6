"""
A virtio-net data path for the back-end: frames through real rings.

Ring ``2q`` is queue pair ``q``'s receive queue, ring ``2q+1`` its transmit
queue.  Transmitted frames go to a :class:`Port`'s ``sent`` list (with the
back-end that took them); frames for the guest wait on the port's ``wire``
until a started, enabled receive ring has a buffer for them.  Two back-ends
may share one port, like two ends of a migration plugged into the same
switch port: a frame is then delivered by whichever back-end owns the ring,
exactly once.

The ring states of the spec are followed: a stopped ring is never touched;
a started but disabled ring is processed without side effects (transmitted
frames are dropped, nothing is received).  While VHOST_F_LOG_ALL is on,
every guest page the device writes is marked in the dirty log.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Callable, Deque, Dict, List, NamedTuple,
                    Optional, Tuple, Union)

from ..virtio.features import VirtioFeature
from ..virtio.net import NET_HDR_LEN, net_header
from .device import HostedDevice
from .iotlb import IotlbMiss
from .virtq import PackedRing, RingError, SplitRing

if TYPE_CHECKING:
    from .device import DeviceHost
    from .state import DeviceState, Vring

__all__ = ["Port", "SentFrame", "NetDevice", "Stall", "NET_HDR_LEN",
           "PORT_CAPACITY"]



class SentFrame(NamedTuple):
    """A frame the guest transmitted, and who took it off the ring (a
    tuple: one is made per frame, at up to a million a second)."""

    data: bytes
    backend: str
    ring: int


#: Frames a port keeps of what was transmitted, and lets wait on the wire
#: through :meth:`Port.offer`: a driver sending a million frames a second
#: must not grow the test's memory without bound.
PORT_CAPACITY = 65536


@dataclass
class Port:
    """Where frames enter and leave; shareable between back-ends.

    Both queues are bounded by ``capacity``: ``sent`` keeps the latest
    ``capacity`` to ``2 * capacity`` frames (older ones are counted in
    ``forgotten``, ``sent_total`` counts them all), and :meth:`offer`
    refuses frames beyond ``capacity`` waiting on the wire (counted in
    ``refused``).  A test that appends to ``wire`` itself bounds it itself.
    """

    wire: Deque[bytes] = field(default_factory=deque)
    sent: List[SentFrame] = field(default_factory=list)
    #: Frames written into guest receive buffers, per back-end name.
    received: Dict[str, int] = field(default_factory=dict)
    #: Frames a disabled transmit ring consumed without sending them.
    dropped: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    capacity: int = PORT_CAPACITY
    #: Frames transmitted in all, including those no longer in ``sent``.
    sent_total: int = 0
    #: Transmitted frames dropped from ``sent`` to keep it bounded.
    forgotten: int = 0
    #: Frames :meth:`offer` turned away because the wire was full.
    refused: int = 0
    #: Called with each batch of transmitted frames (``cond`` held, in the
    #: back-end's thread): a peer on the wire that answers (ARP, ICMP).
    on_sent: List[Callable[[List["SentFrame"]], None]] = field(
        default_factory=list)

    def record_sent(self, frames: List[SentFrame]) -> None:
        """Add transmitted frames (``cond`` held); forget the oldest half
        when ``sent`` holds twice the capacity (amortised O(1))."""
        self.sent.extend(frames)
        self.sent_total += len(frames)
        for hook in self.on_sent:
            hook(frames)
        if len(self.sent) > 2 * self.capacity:
            excess = len(self.sent) - self.capacity
            del self.sent[:excess]
            self.forgotten += excess

    def offer(self, frames: List[bytes]) -> int:
        """Put frames on the wire while there is room; returns how many
        were taken (the rest are counted in ``refused``)."""
        with self.cond:
            room = max(0, self.capacity - len(self.wire))
            self.wire.extend(frames[:room])
            self.refused += max(0, len(frames) - room)
            self.cond.notify_all()
            return min(room, len(frames))

    def _wait(self, done: Callable[[], bool], what: str, timeout: float,
              seen: Callable[[], object]) -> None:
        with self.cond:
            if not self.cond.wait_for(done, timeout):
                raise TimeoutError(f"waited {timeout}s for {what}, got "
                                   f"{seen()}; {len(self.wire)} frames still "
                                   "on the wire")

    def wait_sent(self, count: int, timeout: float) -> None:
        """Until ``count`` frames were transmitted in all."""
        self._wait(lambda: self.sent_total >= count,
                   f"{count} transmitted frames", timeout,
                   lambda: self.sent_total)

    def wait_dropped(self, count: int, timeout: float) -> None:
        """Until disabled rings dropped ``count`` frames in all."""
        self._wait(lambda: self.dropped >= count, f"{count} dropped frames",
                   timeout, lambda: self.dropped)

    def wait_received(self, count: int, timeout: float) -> None:
        """Until ``count`` frames were written into guest buffers in all."""
        self._wait(lambda: sum(self.received.values()) >= count,
                   f"{count} frames delivered to the guest", timeout,
                   lambda: dict(self.received))


@dataclass(frozen=True)
class Stall:
    """A started ring with work posted that made no progress for a while:
    a lost notification, or a driver or device that stopped following the
    ring."""

    ring: int
    seconds: float
    indexes: str

    def __str__(self) -> str:
        return (f"ring {self.ring} made no progress for {self.seconds:.1f}s "
                f"with work posted ({self.indexes})")


#: the header of a received frame: no offloads, one buffer
_RX_HEADER = net_header(1)
#: frames taken off the wire per lock round trip
_RX_BATCH = 64

#: passes over one ring per kick while the driver keeps adding entries
#: under EVENT_IDX (bounded: a busy driver cannot hold the thread)
_EVENT_IDX_ROUNDS = 8


class NetDevice(HostedDevice):
    """The data path of one back-end; runs in the back-end's thread.

    :param port: where frames come from and go to.
    """

    def __init__(self, port: Optional[Port] = None):
        self.port = port or Port()
        #: the back-end hosting this device (its narrow interface)
        self.host: Optional["DeviceHost"] = None
        self.rings: Dict[int, Union[SplitRing, PackedRing]] = {}
        #: ring index -> why the ring is broken (until restart or reset)
        self.broken: Dict[int, str] = {}
        #: How many transmit chains may still be taken (None: no limit); a
        #: test leaves some in the ring on purpose with it.
        self.tx_budget: Optional[int] = None
        #: Negative control: write guest memory without marking the log.
        self.skip_logging = False
        self.descriptors = 0
        self._on_write: Dict[int, Callable[[int, int, bool], None]] = {}
        #: How long a ring with work posted may make no progress before it
        #: is recorded in ``stalls``.
        self.stall_after = 2.0
        self.stalls: List[Stall] = []
        #: ring index -> (position, monotonic time it was first seen there
        #: with work posted)
        self._still: Dict[int, Tuple[int, float]] = {}
        #: ring index -> (position, used index) of a started ring that
        #: waits for an IOTLB update to be located (behind a vIOMMU)
        self.unmapped: Dict[int, Tuple[int, Optional[int]]] = {}

    # --- called by the back-end (its lock held) --------------------------
    def ring_started(self, ring: "Vring") -> None:
        backend = self._host()
        if ring.addr is None:
            backend.record_error(f"ring {ring.index} started without "
                                  "SET_VRING_ADDR")
            return
        if self._locate(ring, ring.base, None):
            self.process(ring)

    def _locate(self, ring: "Vring", next_avail: int,
                used_idx: Optional[int]) -> bool:
        """Build ``ring``'s running ring at its position; whether it runs.
        Behind a vIOMMU an area may need a translation first: the ring
        then waits in :attr:`unmapped` for the update."""
        self.unmapped.pop(ring.index, None)
        try:
            self.rings[ring.index] = ring.cursor = self._split(
                ring, next_avail, used_idx)
            return True
        except IotlbMiss as miss:
            self.unmapped[ring.index] = (next_avail, used_idx)
            ring.base, ring.cursor = next_avail, None
            self._host().iotlb_miss(miss.iova, miss.write)
        except (LookupError, RingError) as exc:
            ring.base, ring.cursor = next_avail, None
            self._host().record_error(f"ring {ring.index}: {exc}")
        return False

    def _split(self, ring: "Vring", next_avail: int,
               used_idx: Optional[int]) -> Union[SplitRing, PackedRing]:
        """The ring object for ``ring``: split, or packed when
        VIRTIO_F_RING_PACKED is negotiated (then ``next_avail`` is the
        packed base)."""
        state = self._state()
        def on_write(gpa: int, length: int, is_used: bool,
                     r: "Vring" = ring) -> None:
            self._logged(r, gpa, length, is_used)
        self._on_write[ring.index] = on_write
        if state.feature_acked(VirtioFeature.RING_PACKED):
            return self._packed_ring(ring, next_avail)
        return self._split_ring(ring, next_avail, used_idx)

    def memory_changed(self) -> None:
        """The memory table (or the IOTLB) changed under started rings:
        locate them again, keeping their positions.  Behind a vIOMMU the
        change may be the update a ring waits for: the rings move on
        (without one, a memory table is no reason to touch the rings --
        during postcopy it may not be touched before QEMU's ack)."""
        places = dict(self.unmapped)
        for index, split in self.rings.items():
            places[index] = (split.next_avail, split.used_idx
                             if isinstance(split, SplitRing) else None)
        self.rings.clear()
        for index, (next_avail, used_idx) in sorted(places.items()):
            ring = self._state().vrings[index]
            if ring.started and self._locate(ring, next_avail, used_idx) \
                    and self._state().behind_iommu:
                self.process(ring)

    def quiesce(self, ring: "Vring") -> None:
        """Nothing to finish: a frame is taken and completed at once."""

    def ring_stopped(self, ring: "Vring") -> None:
        waiting = self.unmapped.pop(ring.index, None)
        if waiting is not None:
            ring.base = waiting[0]
        self.broken.pop(ring.index, None)
        self._still.pop(ring.index, None)
        split = self.rings.pop(ring.index, None)
        if split is not None:
            ring.base = split.next_avail
        ring.cursor = None

    def reset(self) -> None:
        for ring in self._state().vrings.values():
            ring.cursor = None
        self.rings.clear()
        self.unmapped.clear()
        self.broken.clear()
        self._still.clear()

    def process(self, ring: "Vring") -> None:
        """Handle a kick (or a start): move what can be moved.

        A ring whose driver broke the ring rules is marked broken: the error
        is recorded once, and the ring is not touched again until it is
        restarted or the device reset (virtio: the device may then need a
        reset; it must not act on garbage).
        """
        split = self.rings.get(ring.index)
        if split is None or not ring.started or ring.index in self.broken:
            return
        # Logging cannot change during one call (the back-end's lock is
        # held): decide once whether writes need reporting.
        split.on_write = (self._on_write[ring.index]
                          if self._logging() else None)
        try:
            self._recheck_files()
            for _ in range(_EVENT_IDX_ROUNDS):
                if ring.index % 2:
                    self._transmit(ring, split)
                else:
                    self._receive(ring, split)
                # EVENT_IDX: say where to kick next; entries that arrived
                # meanwhile (the driver may not kick for them) are taken now
                if not (isinstance(split, SplitRing)
                        and split.publish_avail_event()):
                    break
        except IotlbMiss as miss:
            # the ring stays where the untranslated buffer is; the update
            # (memory_changed) moves it on
            self._host().iotlb_miss(miss.iova, miss.write)
        except (RingError, LookupError, ValueError) as exc:
            # ValueError: a mapping closed under the ring (never expected:
            # memory_changed() relocates rings; a ring must not kill the
            # thread if it happens anyway)
            self.broken[ring.index] = str(exc)
            self._host().record_error(f"ring {ring.index} broken, not "
                                       f"processed until reset: {exc}")
        if split.should_notify():
            self._host().signal(ring)

    def check_stalls(self, now: float) -> None:
        """Record rings that have had work posted, and made no progress,
        for ``stall_after`` seconds (once per position).

        Work is an available entry on a transmit ring with budget left, or
        a receive buffer while frames wait on the wire; stopped, disabled
        and broken rings are not watched.
        """
        for index, split in self.rings.items():
            ring = self._state().vrings.get(index)
            busy = (ring is not None and ring.started and ring.enabled
                    and index not in self.broken
                    and (self.tx_budget != 0 if index % 2
                         else bool(self.port.wire))
                    and split.has_available())
            if not busy:
                self._still.pop(index, None)
                continue
            position = split.next_avail
            seen = self._still.get(index)
            if seen is None or seen[0] != position:
                self._still[index] = (position, now)
            elif now - seen[1] >= self.stall_after:
                self.stalls.append(Stall(index, now - seen[1],
                                         split.indexes()))
                # once per position: reported again only after progress
                self._still[index] = (position, float("inf"))

    def process_all(self) -> None:
        """Retry every started ring (new frames on the wire, more budget)."""
        for index in list(self.rings):
            ring = self._state().vrings.get(index)
            if ring is not None:
                self.process(ring)

    # --- the data path -----------------------------------------------------
    def _transmit(self, ring: "Vring",
                  split: Union[SplitRing, PackedRing]) -> None:
        name = self.host.name if self.host else "?"
        taken: List[bytes] = []
        try:
            split.consume(taken, self.tx_budget, skip=NET_HDR_LEN)
        finally:
            # What was taken before a bad chain ended the batch is still
            # accounted for (the exception propagates after this).
            if self.tx_budget is not None:
                self.tx_budget -= len(taken)
            self.descriptors += len(taken)
            if taken:
                with self.port.cond:  # once per batch, not per frame
                    if ring.enabled:
                        self.port.record_sent(
                            [SentFrame(f, name, ring.index) for f in taken])
                    else:  # started but disabled: dropped, no side effect
                        self.port.dropped += len(taken)
                    self.port.cond.notify_all()

    def _receive(self, ring: "Vring",
                 split: Union[SplitRing, PackedRing]) -> None:
        """Frames from the wire into the guest's receive buffers.

        Frames are taken off the wire a batch at a time (one lock round
        trip per batch, not per frame) and what found no buffer goes back
        to the front, so a frame is delivered exactly once, in order, even
        with two back-ends on one port.
        """
        if not ring.enabled:
            return
        name = self.host.name if self.host else "?"
        wire = self.port.wire
        while True:
            with self.port.cond:
                batch = [wire.popleft()
                         for _ in range(min(len(wire), _RX_BATCH))]
            if not batch:
                return
            done = 0
            try:
                done = self._fill(ring, split, batch)
            except IotlbMiss as miss:
                done = miss.delivered
                raise
            finally:
                with self.port.cond:
                    wire.extendleft(reversed(batch[done:]))
                    if done:
                        self.port.received[name] = (
                            self.port.received.get(name, 0) + done)
                        self.port.cond.notify_all()
            if done < len(batch):
                return  # the rest waits for buffers

    def _fill(self, ring: "Vring", split: Union[SplitRing, PackedRing],
              batch: List[bytes]) -> int:
        """Write frames of ``batch`` into buffers while there are buffers;
        returns how many were delivered."""
        if isinstance(split, SplitRing):
            problems: List[str] = []
            try:
                done, used = split.deliver(batch, _RX_HEADER, problems)
                self.descriptors += used
            finally:
                for problem in problems:
                    self._host().record_error(f"ring {ring.index}: "
                                               f"{problem}")
            return done
        done = 0
        while done < len(batch):
            if isinstance(split, PackedRing):
                mark = split.mark()
                item = split.pop()
                if item is None:
                    break
                chain, buf_id, count = item

                def complete(length: int) -> None:
                    split.push(buf_id, length, count)
            else:
                popped = split.pop()
                if popped is None:
                    break
                chain = popped

                def complete(length: int) -> None:
                    split.push(popped.head, length)
            self.descriptors += chain.descriptors
            data = _RX_HEADER + batch[done]
            room = sum(n for _, n in chain.writable)
            if room < len(data):
                complete(0)  # the frame tries the next buffer
                self._host().record_error(
                    f"ring {ring.index}: receive buffer of {room} bytes for "
                    f"a {len(data)}-byte frame")
                continue
            try:
                written = split.fill(chain.writable, data)
            except IotlbMiss as miss:
                if isinstance(split, PackedRing):
                    split.rewind(mark)  # the buffer is taken again later
                miss.delivered = done
                raise
            complete(written)
            done += 1
        return done

    def _recheck_files(self) -> None:
        """Files that could not be sealed against shrinking are measured
        again before each pass (an access past a file's end is a SIGBUS
        that would kill the test process)."""
        state = self._state()
        state.memory.recheck()
        if state.log is not None:
            state.log.recheck()

    def _logging(self) -> bool:
        state = self._state()
        return (state.log is not None and not self.skip_logging
                and state.feature_acked(VirtioFeature.LOG_ALL))

    def _logged(self, ring: "Vring", gpa: int, length: int,
                is_used: bool) -> None:
        """Mark what the device just wrote (logging is on)."""
        self._mark_written(ring, self.rings.get(ring.index), gpa, length,
                           is_used)
