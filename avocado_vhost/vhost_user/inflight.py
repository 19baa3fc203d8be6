"""
In-flight I/O tracking (INFLIGHT_SHMFD): the shared area that outlives a
back-end.

A back-end that completes requests out of order cannot restart from the
ring alone: after a crash the front-end resumes it at the used index
(QEMU's ``virtio_queue_restore_last_avail_idx``), which names neither the
requests completed out of order (resubmitting from there doubles them) nor
those still behind the first gap (lost).  So the back-end keeps, in memory
it shares with the front-end, which heads it took and has not completed;
the front-end keeps that memory across the back-end's death and hands it
to the next back-end (SET_INFLIGHT_FD), which resubmits exactly those.

The layout is the spec's ("Inflight I/O tracking", split virtqueue): one
region per queue, a 16-byte header and one 16-byte ``DescStateSplit`` per
descriptor.  Everything read back from the area is the front-end's word
and a previous back-end's, and is checked before it is believed: a head
beyond the ring, a batch list that loops, more heads in flight than the
ring holds are :class:`.error.MalformedMessage`.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Dict, List, Optional, Sequence, Tuple

from .error import MalformedMessage
from .memory import check_extent, seal_shrink
from .message import InflightDescription

__all__ = ["InflightArea", "InflightQueue", "region_size", "VERSION",
           "resubmission_base"]

#: QueueRegionSplit's header: features, version, desc_num,
#: last_batch_head, used_idx
_HEADER = struct.Struct("<QHHHH")
#: DescStateSplit: inflight, 5 bytes padding, next, counter
_DESC = struct.Struct("<B5xHQ")
#: the region version this back-end writes (0: never initialised)
VERSION = 1
#: each queue's region starts on a cache line, as libvhost-user lays it out
_ALIGN = 64


def region_size(queue_size: int) -> int:
    """Bytes of one queue's region for a ring of ``queue_size``."""
    raw = _HEADER.size + _DESC.size * queue_size
    return (raw + _ALIGN - 1) // _ALIGN * _ALIGN


class InflightQueue:
    """One queue's region of the area, read and written in place."""

    def __init__(self, mapping: mmap.mmap, offset: int, queue_size: int):
        self._map = mapping
        self._off = offset
        self.queue_size = queue_size
        #: the next request's place in fetch order ("global counter")
        self.counter = 1

    def _header(self) -> Tuple[int, int, int, int, int]:
        features, version, num, last, used = _HEADER.unpack_from(
            self._map, self._off)
        return features, version, num, last, used

    def _desc_at(self, head: int) -> int:
        return self._off + _HEADER.size + _DESC.size * head

    @property
    def version(self) -> int:
        return self._header()[1]

    @property
    def used_idx(self) -> int:
        return self._header()[4]

    def initialise(self, zero: bool = True) -> None:
        """A fresh region: version 1, no request in flight.

        :param zero: clear the descriptor states first (a region handed
            over uninitialised may hold anything); a new memfd is zero
            already, and touching all of it would cost the front-end's
            asking size in memory.
        """
        if zero:
            self._map[self._off:self._off + region_size(self.queue_size)] = \
                bytes(region_size(self.queue_size))
        _HEADER.pack_into(self._map, self._off, 0, VERSION, self.queue_size,
                          0, 0)

    def _check_head(self, head: int, what: str) -> None:
        if head >= self.queue_size:
            raise MalformedMessage(f"in-flight area: {what} names descriptor "
                                   f"{head}, beyond the ring's "
                                   f"{self.queue_size}")

    def fetched(self, head: int) -> None:
        """The back-end took ``head`` off the available ring (spec: counter
        first, then the inflight flag)."""
        self._check_head(head, "a fetched head")
        at = self._desc_at(head)
        struct.pack_into("<Q", self._map, at + 8, self.counter)
        self.counter += 1
        self._map[at] = 1

    def completing(self, head: int) -> None:
        """``head`` is about to go onto the used ring: chain it into the
        last batch (spec steps 1-3), before the used index moves, so that a
        back-end dying between the two leaves a batch the next one can
        finish."""
        self._check_head(head, "a completed head")
        features, version, num, last, used = self._header()
        struct.pack_into("<H", self._map, self._desc_at(head) + 6, last)
        _HEADER.pack_into(self._map, self._off, features, version, num, head,
                          used)

    def completed(self, heads: Sequence[int], used_idx: int) -> None:
        """``heads`` are on the used ring, whose index is now ``used_idx``:
        clear their flags, then record the index (spec steps 5-6)."""
        for head in heads:
            self._check_head(head, "a completed head")
            self._map[self._desc_at(head)] = 0
        features, version, num, last, _ = self._header()
        _HEADER.pack_into(self._map, self._off, features, version, num, last,
                          used_idx & 0xFFFF)

    def in_flight(self) -> List[int]:
        """Heads recorded in flight, in the order they were fetched."""
        entries = []
        for head in range(self.queue_size):
            at = self._desc_at(head)
            if self._map[at] == 1:
                entries.append((struct.unpack_from("<Q", self._map,
                                                   at + 8)[0], head))
            elif self._map[at] != 0:
                raise MalformedMessage(
                    f"in-flight area: descriptor {head}'s inflight flag is "
                    f"{self._map[at]}, neither 0 nor 1")
        return [head for _, head in sorted(entries)]

    def recover(self, ring_used_idx: int) -> List[int]:
        """After a reconnect: finish the last batch if the previous
        back-end died inside it, then the heads to resubmit, in fetch
        order (spec, "When reconnecting").

        :param ring_used_idx: the used ring's index in guest memory.
        :raise MalformedMessage: the region is not one this back-end can
            believe.
        """
        features, version, num, last, used = self._header()
        if version != VERSION:
            raise MalformedMessage(f"in-flight area: region version "
                                   f"{version}, expected {VERSION}")
        if num != self.queue_size:
            raise MalformedMessage(f"in-flight area: region for {num} "
                                   "descriptors, the ring has "
                                   f"{self.queue_size}")
        batch = (ring_used_idx - used) & 0xFFFF
        if batch:
            if batch > self.queue_size:
                raise MalformedMessage(
                    f"in-flight area: the used ring is {batch} entries past "
                    f"the area's used_idx {used}, more than a ring holds")
            head = last
            for _ in range(batch):
                self._check_head(head, "the last batch")
                self._map[self._desc_at(head)] = 0
                head = struct.unpack_from("<H", self._map,
                                          self._desc_at(head) + 6)[0]
            _HEADER.pack_into(self._map, self._off, features, version, num,
                              last, ring_used_idx & 0xFFFF)
        heads = self.in_flight()
        counters = [struct.unpack_from("<Q", self._map,
                                       self._desc_at(h) + 8)[0]
                    for h in heads]
        self.counter = max(counters, default=0) + 1
        return heads


class InflightArea:
    """The whole area: one region per queue, on one shared fd.

    Owns the fd and the mapping; :meth:`close` releases both.
    """

    def __init__(self, fd: int, desc: InflightDescription):
        self.fd = fd
        self.desc = desc
        self.map: Optional[mmap.mmap] = None
        try:
            if not 0 < desc.queue_size <= 32768:
                raise MalformedMessage(f"in-flight area for queues of "
                                       f"{desc.queue_size} descriptors")
            need = desc.num_queues * region_size(desc.queue_size)
            if desc.num_queues == 0 or desc.mmap_size < need:
                raise MalformedMessage(
                    f"in-flight area of {desc.mmap_size} bytes for "
                    f"{desc.num_queues} queues of {desc.queue_size}: needs "
                    f"{need}")
            check_extent(fd, desc.mmap_offset + desc.mmap_size,
                         "in-flight area")
            seal_shrink(fd)
            start = desc.mmap_offset - desc.mmap_offset % mmap.PAGESIZE
            self._skew = desc.mmap_offset - start
            self.map = mmap.mmap(fd, desc.mmap_size + self._skew,
                                 mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE,
                                 offset=start)
        except (OSError, ValueError, OverflowError, MalformedMessage) as exc:
            os.close(fd)
            if isinstance(exc, MalformedMessage):
                raise
            raise MalformedMessage(f"cannot map the in-flight area "
                                   f"{desc}: {exc}") from None
        self._queues: Dict[int, InflightQueue] = {}

    @classmethod
    def create(cls, num_queues: int, queue_size: int) -> "InflightArea":
        """A new, initialised area (GET_INFLIGHT_FD), on a sealed memfd."""
        size = num_queues * region_size(queue_size)
        fd = os.memfd_create("vhost-inflight",
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        area = cls(fd, InflightDescription(size, 0, num_queues, queue_size))
        for index in range(num_queues):
            area.queue(index).initialise(zero=False)
        return area

    def queue(self, index: int) -> InflightQueue:
        """Queue ``index``'s region.

        :raise MalformedMessage: the area has no region for it.
        """
        if index >= self.desc.num_queues:
            raise MalformedMessage(f"in-flight area of "
                                   f"{self.desc.num_queues} queues has none "
                                   f"for ring {index}")
        if index not in self._queues:
            assert self.map is not None
            self._queues[index] = InflightQueue(
                self.map, self._skew + index * region_size(
                    self.desc.queue_size), self.desc.queue_size)
        return self._queues[index]

    def close(self) -> None:
        self._queues.clear()
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def resubmission_base(ring_used_idx: int, heads: Sequence[int]) -> int:
    """Where the available ring resumes after a recovery: every entry
    taken so far was either completed (counted by the used index) or is in
    flight (libvhost-user's ``vu_check_queue_inflights`` does the same)."""
    return (ring_used_idx + len(heads)) & 0xFFFF
