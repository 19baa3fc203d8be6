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

The layouts are the spec's ("Inflight I/O tracking"): one region per
queue; for a split virtqueue a 16-byte header and one 16-byte
``DescStateSplit`` per descriptor (:class:`InflightQueue`), for a packed
one a 32-byte header and one 32-byte ``DescStatePacked`` per descriptor,
which keeps each fetched descriptor itself -- a packed ring's device
writes its used elements over the slots of requests still in flight
(:class:`PackedInflightQueue`).  Everything read back from the area is the front-end's word
and a previous back-end's, and is checked before it is believed: a head
beyond the ring, a batch list that loops, more heads in flight than the
ring holds are :class:`.error.MalformedMessage`.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .error import MalformedMessage
from .memory import check_extent, seal_shrink
from .message import InflightDescription

__all__ = ["InflightArea", "InflightQueue", "PackedInflightQueue",
           "region_size", "VERSION", "resubmission_base"]

#: QueueRegionSplit's header: features, version, desc_num,
#: last_batch_head, used_idx
_HEADER = struct.Struct("<QHHHH")
#: DescStateSplit: inflight, 5 bytes padding, next, counter
_DESC = struct.Struct("<B5xHQ")
#: the region version this back-end writes (0: never initialised)
VERSION = 1
#: each queue's region starts on a cache line, as libvhost-user lays it out
_ALIGN = 64


#: QueueRegionPacked's header: features, version, desc_num, free_head,
#: old_free_head, used_idx, old_used_idx, used_wrap_counter,
#: old_used_wrap_counter (then padding up to the 8-aligned descriptors)
_PHEADER = struct.Struct("<QHHHHHHBB")
_PHEADER_SIZE = 32
#: DescStatePacked: inflight, padding, next, last, num, counter, id,
#: flags, len, addr
_PDESC = struct.Struct("<BxHHHQHHIQ")
# the fields of each, by position
(_FEATURES, _VERSION, _DESC_NUM, _FREE_HEAD, _OLD_FREE_HEAD, _USED_IDX,
 _OLD_USED_IDX, _USED_WRAP, _OLD_USED_WRAP) = range(9)
(_INFLIGHT, _NEXT, _LAST, _NUM, _COUNTER, _ID, _FLAGS, _LEN,
 _ADDR) = range(9)


def region_size(queue_size: int, packed: bool = False) -> int:
    """Bytes of one queue's region for a ring of ``queue_size``."""
    raw = (_PHEADER_SIZE + _PDESC.size * queue_size if packed
           else _HEADER.size + _DESC.size * queue_size)
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


#: one descriptor as fetched: buffer id, flags, length, address
Fetched = Tuple[int, int, int, int]


class PackedInflightQueue:
    """One packed queue's region (the spec's ``QueueRegionPacked``).

    Entries form a free list (``next``); a fetched chain takes as many
    entries as it has descriptors, each keeping its descriptor, and its
    first entry (the *head entry*, returned by :meth:`fetched`) holds the
    chain's length, last entry, fetch counter and inflight flag.  The
    ``old_*`` fields are the state at the last completed batch: a back-end
    that dies in the middle of one is rolled back to it (or forward, when
    the used element was already published).
    """

    def __init__(self, mapping: mmap.mmap, offset: int, queue_size: int):
        self._map = mapping
        self._off = offset
        self.queue_size = queue_size
        self.counter = 1

    # the header's fields, by name
    def _get(self) -> List[int]:
        return list(_PHEADER.unpack_from(self._map, self._off))

    def _put(self, fields: Sequence[int]) -> None:
        _PHEADER.pack_into(self._map, self._off, *fields)

    def _at(self, entry: int) -> int:
        if entry >= self.queue_size:
            raise MalformedMessage(f"in-flight area: entry {entry}, beyond "
                                   f"the ring's {self.queue_size}")
        return self._off + _PHEADER_SIZE + _PDESC.size * entry

    def _desc(self, entry: int) -> List[int]:
        return list(_PDESC.unpack_from(self._map, self._at(entry)))

    def _set(self, entry: int, fields: Sequence[int]) -> None:
        _PDESC.pack_into(self._map, self._at(entry), *fields)

    @property
    def version(self) -> int:
        return self._get()[_VERSION]

    def initialise(self, zero: bool = True) -> None:
        """Version 1, every entry free (chained in order), the used
        position at 0 with wrap counter 1 -- a packed ring's start."""
        if zero:
            size = region_size(self.queue_size, packed=True)
            self._map[self._off:self._off + size] = bytes(size)
        self._put((0, VERSION, self.queue_size, 0, 0, 0, 0, 1, 1))
        for entry in range(self.queue_size):
            self._set(entry, (0, entry + 1, 0, 0, 0, 0, 0, 0, 0))

    def fetched(self, descs: Sequence[Fetched]) -> int:
        """A chain taken off the ring (spec, "When receiving available
        buffers"): its head entry."""
        if not 0 < len(descs) <= self.queue_size:
            raise MalformedMessage(f"in-flight area: a chain of {len(descs)}"
                                   " descriptors")
        hdr = self._get()
        head = hdr[_OLD_FREE_HEAD]
        h = self._desc(head)
        h[_INFLIGHT], h[_NUM], h[_COUNTER] = 1, 0, self.counter
        self.counter += 1
        self._set(head, h)
        for i, (buf_id, flags, length, addr) in enumerate(descs):
            free = hdr[_FREE_HEAD]
            h = self._desc(head)
            if i == len(descs) - 1:
                h[_LAST] = free
            h[_NUM] += 1
            self._set(head, h)
            d = self._desc(free)
            d[_ID], d[_FLAGS], d[_LEN], d[_ADDR] = buf_id, flags, length, addr
            self._set(free, d)
            hdr[_FREE_HEAD] = d[_NEXT]
        hdr[_OLD_FREE_HEAD] = hdr[_FREE_HEAD]
        self._put(hdr)
        return head

    def completing(self, head: int) -> None:
        """``head``'s chain is about to be marked used: its entries go back
        to the free list (steps 2-4)."""
        hdr = self._get()
        last_entry = self._desc(head)[_LAST]
        last = self._desc(last_entry)
        last[_NEXT] = hdr[_FREE_HEAD]
        self._set(last_entry, last)
        hdr[_FREE_HEAD] = head
        self._put(hdr)

    def completed(self, heads: Sequence[int], used_idx: int,
                  used_wrap: bool) -> None:
        """The used elements are published: record the used position,
        clear the heads' flags, and make this batch the last complete one
        (steps 5-9)."""
        hdr = self._get()
        hdr[_USED_IDX], hdr[_USED_WRAP] = used_idx, int(used_wrap)
        self._put(hdr)
        for head in heads:
            h = self._desc(head)
            h[_INFLIGHT] = 0
            self._set(head, h)
        self._commit(hdr)
        self._put(hdr)

    @staticmethod
    def _commit(hdr: List[int]) -> None:
        hdr[_OLD_FREE_HEAD] = hdr[_FREE_HEAD]
        hdr[_OLD_USED_IDX] = hdr[_USED_IDX]
        hdr[_OLD_USED_WRAP] = hdr[_USED_WRAP]

    def recover(self, published: "Callable[[int, bool], bool]"
                ) -> Tuple[int, bool, List[Tuple[int, List[Fetched]]]]:
        """After a reconnect (spec, "When reconnecting"): the used
        position and wrap counter to resume at, and the chains in flight in
        fetch order, each as its head entry and the descriptors that were
        fetched.

        :param published: whether the ring's slot at a position no longer
            reads as available for a wrap counter (the previous back-end
            published its used element there before it died).
        :raise MalformedMessage: the region is not one to believe.
        """
        hdr = self._get()
        if hdr[_VERSION] != VERSION or hdr[_DESC_NUM] != self.queue_size:
            raise MalformedMessage(
                f"in-flight area: packed region version {hdr[_VERSION]} for "
                f"{hdr[_DESC_NUM]} descriptors, expected {VERSION} and "
                f"{self.queue_size}")
        if hdr[_USED_IDX] != hdr[_OLD_USED_IDX] and published(
                hdr[_OLD_USED_IDX], bool(hdr[_OLD_USED_WRAP])):
            self._commit(hdr)  # the batch was published: finish it
        hdr[_FREE_HEAD] = hdr[_OLD_FREE_HEAD]  # roll back the rest
        hdr[_USED_IDX] = hdr[_OLD_USED_IDX]
        hdr[_USED_WRAP] = hdr[_OLD_USED_WRAP]
        self._put(hdr)
        free, seen = hdr[_FREE_HEAD], 0
        while free < self.queue_size:  # the free list: none in flight
            seen += 1
            if seen > self.queue_size:
                raise MalformedMessage("in-flight area: the free list loops")
            d = self._desc(free)
            d[_INFLIGHT] = 0
            self._set(free, d)
            free = d[_NEXT]
        chains = []
        for entry in range(self.queue_size):
            h = self._desc(entry)
            if h[_INFLIGHT] == 1:
                chains.append((h[_COUNTER], entry, h[_NUM]))
            elif h[_INFLIGHT] != 0:
                raise MalformedMessage(f"in-flight area: entry {entry}'s "
                                       f"inflight flag is {h[_INFLIGHT]}")
        out = []
        for _, head, num in sorted(chains):
            if not 0 < num <= self.queue_size:
                raise MalformedMessage(f"in-flight area: entry {head} "
                                       f"heads a chain of {num}")
            descs, entry = [], head
            for _ in range(num):
                d = self._desc(entry)
                descs.append((d[_ID], d[_FLAGS], d[_LEN], d[_ADDR]))
                entry = d[_NEXT]
            out.append((head, descs))
        self.counter = max((c for c, _, _ in chains), default=0) + 1
        return hdr[_USED_IDX], bool(hdr[_USED_WRAP]), out


class InflightArea:
    """The whole area: one region per queue, on one shared fd.

    Owns the fd and the mapping; :meth:`close` releases both.
    """

    def __init__(self, fd: int, desc: InflightDescription,
                 packed: bool = False):
        self.fd = fd
        self.desc = desc
        #: the regions are laid out for packed virtqueues
        self.packed = packed
        self.map: Optional[mmap.mmap] = None
        try:
            if not 0 < desc.queue_size <= 32768:
                raise MalformedMessage(f"in-flight area for queues of "
                                       f"{desc.queue_size} descriptors")
            need = desc.num_queues * region_size(desc.queue_size, packed)
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
        self._queues: Dict[int, Union[InflightQueue,
                                      PackedInflightQueue]] = {}

    @classmethod
    def create(cls, num_queues: int, queue_size: int,
               packed: bool = False) -> "InflightArea":
        """A new, initialised area (GET_INFLIGHT_FD), on a sealed memfd."""
        size = num_queues * region_size(queue_size, packed)
        fd = os.memfd_create("vhost-inflight",
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        area = cls(fd, InflightDescription(size, 0, num_queues, queue_size),
                   packed)
        for index in range(num_queues):
            area.queue(index).initialise(zero=False)
        return area

    def queue(self, index: int
              ) -> Union[InflightQueue, PackedInflightQueue]:
        """Queue ``index``'s region, in the area's layout.

        :raise MalformedMessage: the area has no region for it.
        """
        if index >= self.desc.num_queues:
            raise MalformedMessage(f"in-flight area of "
                                   f"{self.desc.num_queues} queues has none "
                                   f"for ring {index}")
        if index not in self._queues:
            assert self.map is not None
            kind = PackedInflightQueue if self.packed else InflightQueue
            self._queues[index] = kind(
                self.map, self._skew + index * region_size(
                    self.desc.queue_size, self.packed), self.desc.queue_size)
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
