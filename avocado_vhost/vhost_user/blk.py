"""
A virtio-blk data path with in-flight I/O tracking: the device that lets a
test cut a back-end while requests are outstanding.

:class:`BlkDevice` serves read, write, flush and get-id requests of a split
virtqueue against a :class:`Disk` that outlives the back-end (the test
hands the same disk to the back-end that replaces a dead one, as a real
back-end reopens its image).  It completes requests in the order the test
chooses: :attr:`BlkDevice.hold` keeps some requests taken but unfinished,
which is how a back-end with I/O in flight looks when it dies.

With INFLIGHT_SHMFD negotiated it records every request in the in-flight
area (:mod:`.inflight`) as the spec says, and a ring that starts on an
area holding requests resubmits exactly those, in the order they were
taken, before it takes anything new.  Stopping a ring with GET_VRING_BASE
completes what was held first (spec: "By default, the back-end must
complete all inflight I/O requests for the specified vring before
stopping it"); losing the connection does not -- a dead back-end finishes
nothing.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Callable, Dict, List, Optional, Sequence,
                    Union,
                    Tuple)

from ..virtio.features import VirtioFeature
from ..virtio.ring import DESC_F_NEXT, DESC_F_WRITE
from .error import MalformedMessage, WaitTimeout
from .inflight import (Fetched, InflightQueue, PackedInflightQueue,
                       resubmission_base)
from .message import ProtocolFeature
from .device import HostedDevice
from .virtq import Chain, PackedRing, RingError, SplitRing

if TYPE_CHECKING:
    from .device import DeviceHost
    from .state import DeviceState, Vring

__all__ = ["BlkDevice", "BlkRequest", "Disk", "SECTOR", "T_IN", "T_OUT",
           "T_FLUSH", "T_GET_ID", "S_OK", "S_IOERR", "S_UNSUPP"]

SECTOR = 512
#: virtio-blk request types and status values (virtio 1.2, 5.2.6)
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
#: the request header the driver puts first: type, reserved, sector
HEADER = struct.Struct("<IIQ")
#: what GET_ID answers (20 bytes, NUL-padded)
DEVICE_ID = b"avocado-vhost-blk".ljust(20, b"\0")


class Disk:
    """The device's storage: sparse 512-byte sectors, shared by the
    back-ends that serve it one after another.

    :param sectors: capacity, in sectors.
    """

    def __init__(self, sectors: int):
        self.sectors = sectors
        self._data: Dict[int, bytes] = {}
        #: sector -> how many times a request wrote it
        self.writes: Dict[int, int] = {}
        self._lock = threading.Lock()

    def read(self, sector: int, count: int) -> bytes:
        with self._lock:
            return b"".join(self._data.get(s, bytes(SECTOR))
                            for s in range(sector, sector + count))

    def write(self, sector: int, data: bytes) -> None:
        with self._lock:
            for i in range(len(data) // SECTOR):
                self._data[sector + i] = data[i * SECTOR:(i + 1) * SECTOR]
                self.writes[sector + i] = self.writes.get(sector + i, 0) + 1


@dataclass(frozen=True)
class BlkRequest:
    """A request as the device took it off the ring."""

    ring: int
    head: int
    type: int
    sector: int
    #: bytes of data the driver offers (write) or wants (read)
    length: int
    #: what a write carries (read once, when the request is parsed)
    data: bytes = b""


@dataclass(frozen=True)
class Ticket:
    """How a taken request goes back: its head (split) or buffer id
    (packed), the ring slots its chain took, and its in-flight head entry
    (packed, when tracked)."""

    head: int
    count: int = 1
    entry: Optional[int] = None


def fetched_descriptors(chain: Chain, buf_id: int) -> List[Fetched]:
    """A packed chain's descriptors as fetched, for the in-flight area:
    device-readable first, then device-writable, each but the last with
    NEXT (a blk request is never indirect here: INDIRECT_DESC is not
    offered)."""
    parts = ([(n, a, 0) for a, n in chain.readable]
             + [(n, a, DESC_F_WRITE) for a, n in chain.writable])
    return [(buf_id, flags | (DESC_F_NEXT if i < len(parts) - 1 else 0),
             length, addr) for i, (length, addr, flags) in enumerate(parts)]


def chain_of(descs: Sequence[Fetched]) -> Chain:
    """The chain that ``descs`` (from the in-flight area) describe."""
    readable = [(addr, n) for _, f, n, addr in descs if not f & DESC_F_WRITE]
    writable = [(addr, n) for _, f, n, addr in descs if f & DESC_F_WRITE]
    return Chain(descs[-1][0], readable, writable)


#: a started ring, of either layout
BlkRing = Union[SplitRing, PackedRing]


class BlkDevice(HostedDevice):
    """The virtio-blk data path of one back-end; runs in its thread.

    :param disk: the storage (shared with a successor back-end).
    :param hold: requests for which it answers True are taken but not
        served until :meth:`release` or the ring stops with GET_VRING_BASE.
    :param resubmit: negative control: False ignores the in-flight area
        on start and resumes from SET_VRING_BASE alone, as a back-end
        without tracking does.
    :param finish_on_stop: negative control: False answers GET_VRING_BASE
        with held requests unfinished (and forgotten).
    """

    def __init__(self, disk: Disk,
                 hold: Optional[Callable[[BlkRequest], bool]] = None,
                 resubmit: bool = True, finish_on_stop: bool = True):
        self.disk = disk
        self.hold = hold
        self.resubmit = resubmit
        self.finish_on_stop = finish_on_stop
        self.host: Optional["DeviceHost"] = None
        self.rings: Dict[int, BlkRing] = {}
        #: ring index -> requests taken and not served, in order taken
        self.held: Dict[int, List[Tuple[BlkRequest, Chain, Ticket]]] = {}
        #: every request taken off a ring (resubmissions too)
        self.fetched: List[BlkRequest] = []
        #: the heads each ring resubmitted from the in-flight area
        self.resubmitted: Dict[int, List[int]] = {}
        self.completed = 0
        self.stalls: Sequence[object] = ()
        self.cond = threading.Condition()
        self.broken: Dict[int, str] = {}

    # --- the Device interface (the back-end's lock held) -----------------
    def _inflight(self, ring: "Vring"
                  ) -> Optional[Union[InflightQueue, PackedInflightQueue]]:
        state = self._state()
        if (state.inflight is None or not state.protocol_negotiated(
                ProtocolFeature.INFLIGHT_SHMFD)):
            return None
        return state.inflight.queue(ring.index)

    def ring_started(self, ring: "Vring") -> None:
        host = self._host()
        resubmit: List[Tuple[Chain, Ticket]] = []
        try:
            if ring.addr is None:
                raise RingError("started without SET_VRING_ADDR")
            split = self._ring(ring, ring.base)
            tracked = self._inflight(ring)
            if tracked is not None and self.resubmit:
                if tracked.version == 0:
                    tracked.initialise()  # a fresh area (spec: version 0)
                resubmit = self._recover(split, tracked)
        except (LookupError, RingError, MalformedMessage) as exc:
            host.record_error(f"ring {ring.index}: {exc}")
            return
        self.rings[ring.index] = split
        ring.cursor = split
        self.resubmitted[ring.index] = [t.head for _, t in resubmit]
        self._arm_logging(ring, split)
        for chain, ticket in resubmit:
            self._serve(ring, split, chain, ticket)
        self.process(ring)

    def _ring(self, ring: "Vring", base: int,
              used_idx: Optional[int] = None) -> BlkRing:
        """``ring`` started at ``base``, in the layout negotiated."""
        if self._state().feature_acked(VirtioFeature.RING_PACKED):
            return self._packed_ring(ring, base)
        return self._split_ring(ring, base, used_idx)

    def _recover(self, split: BlkRing,
                 tracked: Union[InflightQueue, PackedInflightQueue]
                 ) -> List[Tuple[Chain, Ticket]]:
        """The requests the in-flight area says are in flight, with the
        ring moved to where they leave it (spec, "When reconnecting")."""
        if isinstance(split, SplitRing):
            if not isinstance(tracked, InflightQueue):
                raise MalformedMessage("in-flight area laid out for packed "
                                       "rings, the ring is split")
            heads = tracked.recover(split.used_idx)
            split.next_avail = resubmission_base(split.used_idx, heads)
            return [(split.chain_at(head), Ticket(head)) for head in heads]
        if not isinstance(tracked, PackedInflightQueue):
            raise MalformedMessage("in-flight area laid out for split "
                                   "rings, the ring is packed")
        used, wrap, chains = tracked.recover(split.published)
        # A packed ring resumes where the area says, not at the base the
        # front-end gives (QEMU has no used position of a back-end that
        # died): every slot from the used position on belongs to a chain
        # in flight.
        split.used_pos, split.used_wrap = used, wrap
        split.avail_pos, split.avail_wrap = used, wrap
        split.skip(sum(len(descs) for _, descs in chains))
        return [(chain_of(descs), Ticket(descs[-1][0], len(descs), head))
                for head, descs in chains]

    def memory_changed(self) -> None:
        for index, split in list(self.rings.items()):
            ring = self._state().vrings[index]
            try:
                self.rings[index] = ring.cursor = self._ring(
                    ring, split.next_avail, split.used_idx
                    if isinstance(split, SplitRing) else None)
            except (LookupError, RingError) as exc:
                del self.rings[index]
                ring.base, ring.cursor = split.next_avail, None
                self._host().record_error(f"ring {index} after a memory "
                                          f"table change: {exc}")

    def quiesce(self, ring: "Vring") -> None:
        """GET_VRING_BASE is about to stop ``ring``: finish what is held,
        unless GET_VRING_BASE_INFLIGHT lets the back-end leave it recorded
        in the in-flight area instead."""
        if not self.finish_on_stop or self._state().protocol_negotiated(
                ProtocolFeature.GET_VRING_BASE_INFLIGHT):
            return
        self.release(ring.index)

    def ring_stopped(self, ring: "Vring") -> None:
        split = self.rings.pop(ring.index, None)
        if split is not None:
            ring.base = split.next_avail
        ring.cursor = None
        self.held.pop(ring.index, None)  # a dead back-end finishes nothing
        self.broken.pop(ring.index, None)

    def reset(self) -> None:
        for ring in self._state().vrings.values():
            ring.cursor = None
        self.rings.clear()
        self.held.clear()
        self.broken.clear()

    def check_stalls(self, now: float) -> None:
        """Held requests are the test's choice, not a stall."""

    def process_all(self) -> None:
        for index in list(self.rings):
            ring = self._state().vrings.get(index)
            if ring is not None:
                self.process(ring)

    def process(self, ring: "Vring") -> None:
        """Take every available request; serve it, or hold it."""
        split = self.rings.get(ring.index)
        if split is None or not ring.started or ring.index in self.broken:
            return
        self._arm_logging(ring, split)
        try:
            while True:
                taken = self._take(ring, split)
                if taken is None:
                    if not (isinstance(split, SplitRing)
                            and split.publish_avail_event()):
                        break
                    continue
                self._serve(ring, split, *taken)
        except (RingError, LookupError, ValueError,
                MalformedMessage) as exc:
            self.broken[ring.index] = str(exc)
            self._host().record_error(f"ring {ring.index} broken, not "
                                      f"processed until reset: {exc}")
        if split.should_notify():
            self._host().signal(ring)

    # --- requests ----------------------------------------------------------
    def _take(self, ring: "Vring", split: BlkRing
              ) -> Optional[Tuple[Chain, Ticket]]:
        """The next available request, recorded in flight, or None."""
        tracked = self._inflight(ring)
        if isinstance(split, SplitRing):
            chain = split.pop()
            if chain is None:
                return None
            if isinstance(tracked, InflightQueue):
                tracked.fetched(chain.head)
            return chain, Ticket(chain.head)
        item = split.pop()
        if item is None:
            return None
        chain, buf_id, count = item
        entry = None
        if isinstance(tracked, PackedInflightQueue):
            descs = fetched_descriptors(chain, buf_id)
            if len(descs) != count:
                raise RingError(f"buffer {buf_id}: an indirect chain, which "
                                "this device did not offer")
            entry = tracked.fetched(descs)
        return chain, Ticket(buf_id, count, entry)

    def _serve(self, ring: "Vring", split: BlkRing, chain: Chain,
               ticket: Ticket) -> None:
        request = self._parse(ring.index, split, chain)
        with self.cond:
            self.fetched.append(request)
            self.cond.notify_all()
        if self.hold is not None and self.hold(request):
            self.held.setdefault(ring.index, []).append(
                (request, chain, ticket))
            return
        self._complete(ring, split, request, chain, ticket)

    def _parse(self, index: int, split: BlkRing,
               chain: Chain) -> BlkRequest:
        readable = split.read(chain.readable)
        if len(readable) < HEADER.size or not chain.writable:
            raise RingError(f"request at descriptor {chain.head}: no "
                            "16-byte header or no status byte")
        kind, _, sector = HEADER.unpack_from(readable)
        if kind == T_OUT:
            data = readable[HEADER.size:]
            return BlkRequest(index, chain.head, kind, sector, len(data),
                              data)
        return BlkRequest(index, chain.head, kind, sector,
                          sum(n for _, n in chain.writable) - 1)

    def _complete(self, ring: "Vring", split: BlkRing,
                  request: BlkRequest, chain: Chain, ticket: Ticket) -> None:
        status, data = self._execute(request)
        # the data from the start of the device-writable part, the status
        # in its very last byte (virtio-blk), wherever the data ended
        written = split.fill(chain.writable, data)
        addr, length = chain.writable[-1]
        split.fill([(addr + length - 1, 1)], bytes([status]))
        written += 1
        tracked = self._inflight(ring)
        if isinstance(split, SplitRing):
            if isinstance(tracked, InflightQueue):
                tracked.completing(ticket.head)
            split.push(ticket.head, written)
            if isinstance(tracked, InflightQueue):
                tracked.completed([ticket.head], split.used_idx)
        else:
            entry = ticket.entry  # None: the request was not recorded
            if isinstance(tracked, PackedInflightQueue) and entry is not None:
                tracked.completing(entry)
            split.push(ticket.head, written, ticket.count)
            if isinstance(tracked, PackedInflightQueue) and entry is not None:
                tracked.completed([entry], split.used_pos, split.used_wrap)
        with self.cond:
            self.completed += 1
            self.cond.notify_all()

    def _execute(self, request: BlkRequest) -> Tuple[int, bytes]:
        """The status and the data to return for ``request``."""
        if request.type in (T_IN, T_OUT):
            if request.length % SECTOR:
                return S_IOERR, b""
            count = request.length // SECTOR
            if request.sector + count > self.disk.sectors:
                return S_IOERR, b""
            if request.type == T_IN:
                return S_OK, self.disk.read(request.sector, count)
            self.disk.write(request.sector, request.data)
            return S_OK, b""
        if request.type == T_FLUSH:
            return S_OK, b""
        if request.type == T_GET_ID:
            return S_OK, DEVICE_ID[:request.length]
        return S_UNSUPP, b""

    def release(self, index: Optional[int] = None) -> None:
        """Serve the held requests (of ring ``index``, or all), in the
        order they were taken (call with the back-end's lock held)."""
        for ring_index in ([index] if index is not None
                           else list(self.held)):
            held = self.held.pop(ring_index, [])
            split = self.rings.get(ring_index)
            ring = self._state().vrings.get(ring_index)
            if split is None or ring is None:
                continue
            self._arm_logging(ring, split)
            for request, chain, ticket in held:
                self._complete(ring, split, request, chain, ticket)
            if held and split.should_notify():
                self._host().signal(ring)

    # --- waits (the test's thread) -----------------------------------------
    def _wait(self, done: Callable[[], bool], what: str,
              timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(done, timeout):
                raise WaitTimeout(
                    f"waited {timeout}s for {what}: {len(self.fetched)} "
                    f"taken, {self.completed} completed, "
                    f"{sum(map(len, self.held.values()))} held")

    def wait_fetched(self, count: int, timeout: float) -> None:
        """Until ``count`` requests were taken off the rings in all."""
        self._wait(lambda: len(self.fetched) >= count,
                   f"{count} blk requests taken", timeout)

    def wait_completed(self, count: int, timeout: float) -> None:
        """Until ``count`` requests were completed in all (their used
        entries are published by then)."""
        self._wait(lambda: self.completed >= count,
                   f"{count} blk requests completed", timeout)
