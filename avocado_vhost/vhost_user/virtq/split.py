"""
The device side of a split virtqueue (virtio 1.x "Split Virtqueues").
"""

from __future__ import annotations

import struct
from typing import Any, Callable, List, Optional, Tuple

from ...virtio.ring import (AVAIL_F_NO_INTERRUPT, DESC, DESC_F_INDIRECT,
                            DESC_F_NEXT, DESC_F_WRITE, USED_ELEM, split_sizes)
from ..iotlb import IotlbMiss
from .access import (FENCE, MAX_CHAIN_BYTES, NO_SPAN, U16, Chain, Memory,
                     RingBase, RingError, pack_elem, store16, unpack_desc,
                     unpack_u16)

__all__ = ["SplitRing"]


class SplitRing(RingBase):
    """A started split ring.

    The three ring areas are located in the mapped memory once, at start
    (and again if the memory table changes: build a new SplitRing);
    everything is then read and written in place with ``struct``.

    :param memory: the connection's guest memory.
    :param num: ring size.
    :param desc, avail, used: guest-physical addresses of the three parts.
    :param next_avail: the ring's base (next available entry to process).
    :param on_write: ``(gpa, length, is_used_ring)``, called after every
        write to guest memory (the back-end marks the dirty log there).
    :param indirect: VIRTIO_F_INDIRECT_DESC negotiated.
    :param event_idx: VIRTIO_F_EVENT_IDX negotiated.
    :param used_idx: where to put the next used entry; read from guest
        memory when None (a ring that starts).
    :raise LookupError: a ring area is not inside one mapped region.
    """

    def __init__(self, memory: Memory, num: int, desc: int, avail: int,
                 used: int, next_avail: int,
                 on_write: Optional[Callable[[int, int, bool], None]] = None,
                 indirect: bool = False, event_idx: bool = False,
                 used_idx: Optional[int] = None):
        super().__init__(memory, num, desc, on_write, indirect)
        self.avail = avail
        self.used = used
        self.next_avail = next_avail & 0xFFFF
        self.event_idx = event_idx
        _, avail_len, used_len = split_sizes(num)
        self._amap, self._aoff = memory.locate(avail, avail_len)
        self._umap, self._uoff = memory.locate(used, used_len, write=True)
        self.used_idx = (U16.unpack_from(self._umap, self._uoff + 2)[0]
                         if used_idx is None else used_idx)
        self._signalled_used = self.used_idx

    def avail_idx(self) -> int:
        return int(U16.unpack_from(self._amap, self._aoff + 2)[0])

    def has_available(self) -> bool:
        """Whether the driver offers an entry the device has not taken."""
        return self.avail_idx() != self.next_avail

    def indexes(self) -> str:
        """The ring's positions, for reports."""
        return (f"avail idx {self.avail_idx()}, next avail "
                f"{self.next_avail}, used idx {self.used_idx}")

    def pending(self, avail: int) -> int:
        """How many entries the driver's ``avail`` index offers.

        :raise RingError: more than the ring size -- the virtio spec's
            "Queue Size corresponds to the maximum number of buffers in the
            virtqueue": the index is garbage (or stale, after a reconnect),
            and following it would replay old entries thousands of times.
        """
        count = (avail - self.next_avail) & 0xFFFF
        if count > self.num:
            raise RingError(
                f"avail idx {avail} is {count} entries ahead of the device's "
                f"position {self.next_avail}, more than the ring size "
                f"{self.num} (virtio: \"Queue Size corresponds to the maximum "
                "number of buffers in the virtqueue\")")
        return count

    def pop(self) -> Optional[Chain]:
        """Take the next available chain, or None when the ring is empty."""
        if not self.pending(self.avail_idx()):
            return None
        head = U16.unpack_from(
            self._amap, self._aoff + 4 + 2 * (self.next_avail % self.num))[0]
        chain = self._walk(head)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return chain

    def consume(self, out: List[bytes], limit: Optional[int] = None,
                skip: int = 0) -> None:
        """Take every chain available now (at most ``limit``), append its
        device-readable bytes past the first ``skip`` to ``out``, and
        complete it with length 0: what a transmit queue does.  ``out``
        keeps what was taken even if a bad chain raises midway.

        The loop is written out for the common one-descriptor chain (the
        data path's hot spot); chains and indirect tables take the general
        path.  The used index is published once, after the batch; the base
        (``next_avail``) is exact even if a bad chain stops the batch.
        """
        num, dmap, doff, umap, uoff, count = self._batch_start()
        span, on_write = self.memory.span, self.on_write
        # the last buffer's region (none yet): mapping, first, end, delta
        mapping, lo, hi, delta = NO_SPAN
        if limit is not None:
            count = min(count, limit)
        used = self.used_idx
        try:
            for _ in range(count):
                head = self._next_head()
                addr, length, flags, _ = unpack_desc(dmap, doff + 16 * head)
                if flags & (DESC_F_NEXT | DESC_F_INDIRECT
                            | DESC_F_WRITE):
                    out.append(self.read(self._walk(head).readable)[skip:])
                else:
                    if length > MAX_CHAIN_BYTES:
                        self._checked(Chain(head, [(addr, length)], []))
                    if not lo <= addr <= hi - length:
                        mapping, lo, hi, delta = span(addr, length)
                    off = addr + delta
                    out.append(mapping[off + skip:off + length])
                slot = 4 + 8 * (used % num)
                pack_elem(umap, uoff + slot, head, 0)
                if on_write is not None:
                    on_write(self.used + slot, 8, True)
                used = (used + 1) & 0xFFFF
                self.next_avail = (self.next_avail + 1) & 0xFFFF
        finally:
            self._publish_used(used)

    def deliver(self, frames: List[bytes], prefix: bytes,
                problems: List[str]) -> Tuple[int, int]:
        """Write ``prefix + frame`` for each of ``frames``, in order, into
        the buffers available now: what a receive queue does.

        As :meth:`consume`, written out for the one-descriptor buffer and
        publishing the used index once, after the batch.  A buffer too
        small for its frame is returned with length 0 and named in
        ``problems``; the frame tries the next buffer.

        :return: ``(frames delivered, descriptors used)``.
        """
        num, dmap, doff, umap, uoff, count = self._batch_start()
        span, on_write = self.memory.span, self.on_write
        # the last buffer's region (none yet): mapping, first, end, delta
        mapping, lo, hi, delta = NO_SPAN
        used = self.used_idx
        done = descriptors = 0
        try:
            while done < len(frames) and count:
                head = self._next_head()
                addr, length, flags, _ = unpack_desc(dmap, doff + 16 * head)
                data = prefix + frames[done]
                size = len(data)
                if flags & (DESC_F_NEXT | DESC_F_INDIRECT) \
                        or not flags & DESC_F_WRITE:
                    chain = self._walk(head)
                    descriptors += chain.descriptors
                    room = sum(n for _, n in chain.writable)
                    written = (self.fill(chain.writable, data)
                               if room >= size else 0)
                else:
                    if length > MAX_CHAIN_BYTES:
                        self._checked(Chain(head, [], [(addr, length)]))
                    descriptors += 1
                    room = length
                    written = 0
                    if room >= size:
                        if not lo <= addr <= hi - size:
                            mapping, lo, hi, delta = span(addr, size, True)
                        off = addr + delta
                        mapping[off:off + size] = data
                        if on_write is not None:
                            on_write(addr, size, False)
                        written = size
                if room < size:
                    problems.append(f"receive buffer of {room} bytes for a "
                                    f"{size}-byte frame")
                else:
                    done += 1
                slot = 4 + 8 * (used % num)
                pack_elem(umap, uoff + slot, head, written)
                if on_write is not None:
                    on_write(self.used + slot, 8, True)
                used = (used + 1) & 0xFFFF
                self.next_avail = (self.next_avail + 1) & 0xFFFF
                count -= 1
        except IotlbMiss as miss:
            miss.delivered = done  # the frames before it are in the guest
            raise
        finally:
            self._publish_used(used)
        return done, descriptors

    def _batch_start(self) -> Tuple[int, Any, int, Any, int, int]:
        """``(ring size, desc map, offset, used map, offset, entries
        available)``: bound to locals by the batch loops (attribute lookups
        per frame are a measurable share of their time); the driver's
        index is read once per batch."""
        return (self.num, self._dmap, self._doff, self._umap, self._uoff,
                self.pending(unpack_u16(self._amap, self._aoff + 2)[0]))

    def _next_head(self) -> int:
        """The head the available ring names at the device's position,
        checked against the ring size."""
        head: int = unpack_u16(self._amap, self._aoff + 4 + 2 * (
            self.next_avail % self.num))[0]
        if head >= self.num:
            raise RingError(f"available ring names descriptor {head}, ring "
                            f"size is {self.num}")
        return head

    def _publish_used(self, used: int) -> None:
        """After a batch: the used index, once, after the entries it
        publishes (and logged)."""
        if used != self.used_idx:
            self.used_idx = used
            store16(self._umap, self._uoff + 2, used)
            if self.on_write is not None:
                self.on_write(self.used + 2, 2, True)

    def _walk(self, head: int) -> Chain:
        if head >= self.num:
            raise RingError(f"available ring names descriptor {head}, ring "
                            f"size is {self.num}")
        addr, length, flags, nxt = DESC.unpack_from(self._dmap,
                                                     self._doff + 16 * head)
        if not flags & (DESC_F_NEXT | DESC_F_INDIRECT):
            # The common case: one descriptor.
            if flags & DESC_F_WRITE:
                return self._checked(Chain(head, [], [(addr, length)]))
            return self._checked(Chain(head, [(addr, length)], []))
        readable: List[Tuple[int, int]] = []
        writable: List[Tuple[int, int]] = []
        dmap, doff, size, index = self._dmap, self._doff, self.num, head
        in_indirect = False
        seen = 0
        while True:
            seen += 1
            if seen > size:
                raise RingError(f"descriptor chain from {head} loops")
            addr, length, flags, nxt = DESC.unpack_from(dmap,
                                                         doff + 16 * index)
            if flags & DESC_F_INDIRECT:
                if not self.indirect or in_indirect:
                    raise RingError("indirect descriptor not allowed here")
                entries = self._indirect_entries(length)
                dmap, doff = self.memory.locate(addr, length)
                size, index, seen, in_indirect = entries, 0, 0, True
                continue
            (writable if flags & DESC_F_WRITE else readable).append(
                (addr, length))
            if not flags & DESC_F_NEXT:
                return self._checked(Chain(head, readable, writable))
            if nxt >= size:
                raise RingError(f"descriptor {index} chains to {nxt}, "
                                f"beyond {size}")
            index = nxt

    def chain_at(self, head: int) -> Chain:
        """The chain starting at descriptor ``head``, which the available
        ring does not name now (a request resubmitted from the in-flight
        area).

        :raise RingError: ``head`` is beyond the ring or its chain is bad.
        """
        if head >= self.num:
            raise RingError(f"descriptor {head} is beyond the ring's "
                            f"{self.num}")
        return self._walk(head)

    def push(self, head: int, length: int) -> None:
        """Return a chain to the driver through the used ring: the entry
        first, then the index that publishes it."""
        slot = 4 + 8 * (self.used_idx % self.num)
        USED_ELEM.pack_into(self._umap, self._uoff + slot, head, length)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        store16(self._umap, self._uoff + 2, self.used_idx)
        if self.on_write is not None:
            self.on_write(self.used + slot, 8, True)
            self.on_write(self.used + 2, 2, True)

    def publish_avail_event(self) -> bool:
        """With VIRTIO_F_EVENT_IDX, tell the driver which entry to kick for
        (``used->avail_event`` = the next entry the device will take), then
        look at the available index again.

        A driver with EVENT_IDX kicks only when its index passes
        ``avail_event``: a device that never writes it gets one kick and
        then silence.  Between the device's last read of the index and this
        write the driver may have added entries without kicking, so the
        index is read again after a full barrier.

        :return: whether entries are available now (process them).
        """
        if not self.event_idx:
            return False
        offset = 4 + 8 * self.num
        store16(self._umap, self._uoff + offset, self.next_avail)
        if self.on_write is not None:
            self.on_write(self.used + offset, 2, True)
        with FENCE:  # a locked instruction: the store before the load
            pass
        return self.avail_idx() != self.next_avail

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since
        the last notification (AVAIL_F_NO_INTERRUPT or used_event)."""
        old, new = self._signalled_used, self.used_idx
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            event = int(U16.unpack_from(self._amap,
                                         self._aoff + 4 + 2 * self.num)[0])
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not int(U16.unpack_from(self._amap, self._aoff)[0]) \
            & AVAIL_F_NO_INTERRUPT
