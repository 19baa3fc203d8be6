"""
The device side of split and packed virtqueues, in guest memory mapped by
the back-end (layouts and flags: :mod:`avocado_vhost.virtio.ring`).

Layout (virtio 1.x, "Split Virtqueues"), all little-endian:

* descriptor table: ``num`` x ``{u64 addr, u32 len, u16 flags, u16 next}``
* available ring: ``u16 flags, u16 idx, u16 ring[num], u16 used_event``
* used ring: ``u16 flags, u16 idx, {u32 id, u32 len}[num], u16 avail_event``

The back-end keeps its own position in the available ring (the *base*:
what GET_VRING_BASE reports and SET_VRING_BASE restores) and reads the used
index from guest memory when the ring starts, as the vhost-user spec says.
Every write is reported to ``on_write``, where the back-end marks the dirty
log while logging is on -- buffers always, the used ring at its log address
only when the ring asked for it (VHOST_VRING_F_LOG).
"""

from __future__ import annotations

import ctypes
import struct
import threading
from typing import Any, Callable, List, Optional, Tuple, Union

from ..virtio.ring import (AVAIL_F_NO_INTERRUPT, DESC, DESC_F_INDIRECT,
                           DESC_F_NEXT, DESC_F_WRITE, PACKED_DESC,
                           PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED,
                           PACKED_EVENT_DISABLE, USED_ELEM, split_sizes)
from .iotlb import IotlbMiss, TranslatedMemory
from .memory import GuestMemory

#: What a ring reads and writes through: guest memory by guest address,
#: or by IOVA through the device IOTLB (VIRTIO_F_IOMMU_PLATFORM).
Memory = Union[GuestMemory, TranslatedMemory]

__all__ = ["Chain", "SplitRing", "PackedRing", "RingError", "packed_base"]

_U16 = struct.Struct("<H")


#: acquiring an uncontended lock is a locked instruction: a full barrier
#: on x86, which Python offers no other way to issue
_FENCE = threading.Lock()


def store16(mapping: Any, offset: int, value: int) -> None:
    """Publish a 16-bit field a concurrent driver polls (used ``idx``,
    packed descriptor ``flags``, event indexes) with one store of its
    width.

    Neither obvious spelling does that.  ``struct.pack_into`` zero-fills
    the target and then writes the value, so a driver polling from another
    CPU can read 0 in between (a used index that jumps back).  A 2-byte
    slice assignment is a variable-length memcpy, which glibc does as two
    overlapping stores (the last byte, then the word): a driver that sees
    the first and answers at once -- DPDK's virtio-user re-posts a packed
    descriptor the moment it reads it used -- has its new flags overwritten
    by the second, and the ring stalls with a hole at the device's
    position.  ctypes' ``c_uint16`` assignment is a fixed-size copy, which
    the compiler emits as a single 2-byte store (``scripts/torture_store.py``
    shows all three).
    """
    ctypes.c_uint16.from_buffer(mapping, offset).value = value


def load_packed_desc(mapping: Any, offset: int) -> Tuple[int, int, int, int]:
    """Read a packed descriptor a concurrent driver may be publishing:
    ``(flags, addr, len, id)``.

    The flags publish the descriptor, so they are read alone and first
    (x86 does not reorder loads; the spec's read barrier).  One unpack of
    all 16 bytes copies addr, len and id before the flags, and a driver
    writing in between hands over a stale id with fresh flags: seen with
    DPDK's virtio-user, whose transmit stalled after some 10^5 frames with
    its free list corrupted (``scripts/torture_store.py`` counts it).
    """
    flags = _U16.unpack_from(mapping, offset + 14)[0]
    addr, length, buf_id = _PACKED_FIELDS.unpack_from(mapping, offset)
    return flags, addr, length, buf_id


class RingError(Exception):
    """The driver laid out something the device cannot follow (a loop, an
    out-of-range index, a buffer outside guest memory)."""


class Chain:
    """One descriptor chain taken from the available ring."""

    __slots__ = ("head", "readable", "writable")

    def __init__(self, head: int, readable: List[Tuple[int, int]],
                 writable: List[Tuple[int, int]]):
        self.head = head
        #: ``(guest address, length)`` of the device-readable buffers
        self.readable = readable
        #: ``(guest address, length)`` of the device-writable buffers
        self.writable = writable

    @property
    def descriptors(self) -> int:
        return len(self.readable) + len(self.writable)


#: The most bytes one chain may describe: a 64 KiB GSO frame and its header
#: fit many times over; a guest claiming more (a 255 MiB indirect buffer)
#: is refused instead of costing gigabytes (memory per frame is bounded).
MAX_CHAIN_BYTES = 1 << 20


class _Ring:
    """What both ring layouts share: buffer access through the mapped
    memory, and the write hook the back-end logs through."""

    #: a packed ring's device writes its used descriptors in place
    _writes_descriptors = False

    def _checked(self, chain: "Chain") -> "Chain":
        """``chain``, unless it describes more than MAX_CHAIN_BYTES."""
        total = sum(n for _, n in chain.readable) + sum(
            n for _, n in chain.writable)
        if total > MAX_CHAIN_BYTES:
            raise RingError(f"chain from descriptor {chain.head} describes "
                            f"{total} bytes, more than the {MAX_CHAIN_BYTES} "
                            "a frame may take")
        return chain

    def _indirect_entries(self, length: int) -> int:
        """Entries of an indirect table of ``length`` bytes, checked
        (virtio: a chain is never longer than the queue size)."""
        if length % 16 or not length:
            raise RingError(f"indirect table of {length} bytes")
        if length // 16 > self.num:
            raise RingError(f"indirect table of {length // 16} descriptors, "
                            f"more than the queue size {self.num} (virtio: "
                            "\"A driver MUST NOT create a descriptor chain "
                            "longer than the Queue Size of the device\")")
        return length // 16

    def __init__(self, memory: Memory, num: int, desc: int,
                 on_write: Optional[Callable[[int, int, bool], None]],
                 indirect: bool):
        if num == 0 or num > 32768:
            raise RingError(f"ring size {num}")
        self.memory = memory
        self.num = num
        self.desc = desc
        self.on_write = on_write
        self.indirect = indirect
        self._dmap, self._doff = memory.locate(
            desc, split_sizes(num)[0], write=self._writes_descriptors)

    def read(self, buffers: List[Tuple[int, int]]) -> bytes:
        if len(buffers) == 1:
            addr, length = buffers[0]
            mapping, off = self.memory.locate(addr, length)
            return mapping[off:off + length]
        return b"".join(self.memory.read(a, n) for a, n in buffers)

    def fill(self, buffers: List[Tuple[int, int]], data: bytes) -> int:
        """Write ``data`` across writable buffers; return bytes written."""
        pos = 0
        for addr, length in buffers:
            if pos >= len(data):
                break
            part = data[pos:pos + length]
            mapping, off = self.memory.locate(addr, len(part), write=True)
            mapping[off:off + len(part)] = part
            if self.on_write is not None:
                self.on_write(addr, len(part), False)
            pos += len(part)
        return pos


class SplitRing(_Ring):
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
        self.used_idx = (_U16.unpack_from(self._umap, self._uoff + 2)[0]
                         if used_idx is None else used_idx)
        self._signalled_used = self.used_idx

    def avail_idx(self) -> int:
        return int(_U16.unpack_from(self._amap, self._aoff + 2)[0])

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
        head = _U16.unpack_from(
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
        mapping, lo, hi, delta = _NO_SPAN
        if limit is not None:
            count = min(count, limit)
        used = self.used_idx
        try:
            for _ in range(count):
                head = self._next_head()
                addr, length, flags, _ = _unpack_desc(dmap, doff + 16 * head)
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
                _pack_elem(umap, uoff + slot, head, 0)
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
        mapping, lo, hi, delta = _NO_SPAN
        used = self.used_idx
        done = descriptors = 0
        try:
            while done < len(frames) and count:
                head = self._next_head()
                addr, length, flags, _ = _unpack_desc(dmap, doff + 16 * head)
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
                _pack_elem(umap, uoff + slot, head, written)
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
                self.pending(_unpack_u16(self._amap, self._aoff + 2)[0]))

    def _next_head(self) -> int:
        """The head the available ring names at the device's position,
        checked against the ring size."""
        head: int = _unpack_u16(self._amap, self._aoff + 4 + 2 * (
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
        with _FENCE:  # a locked instruction: the store before the load
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
            event = int(_U16.unpack_from(self._amap,
                                         self._aoff + 4 + 2 * self.num)[0])
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not int(_U16.unpack_from(self._amap, self._aoff)[0]) \
            & AVAIL_F_NO_INTERRUPT


def packed_base(avail: int, avail_wrap: bool, used: int,
                used_wrap: bool) -> int:
    """The vhost-user base of a packed ring: bits 0-14 next available
    position, bit 15 its wrap counter, bits 16-30 next used position, bit 31
    its wrap counter."""
    return ((avail & 0x7FFF) | (int(avail_wrap) << 15)
            | ((used & 0x7FFF) << 16) | (int(used_wrap) << 31))


class PackedRing(_Ring):
    """A started packed virtqueue (virtio 1.1 "Packed Virtqueues").

    One descriptor ring serves both directions: the driver marks a
    descriptor available by setting its AVAIL flag to its wrap counter and
    USED to the opposite; the device writes a used descriptor (buffer id,
    length, AVAIL = USED = its own wrap counter) at its used position and
    skips as many slots as the chain had descriptors.  Both positions and
    both wrap counters are the ring's base, which vhost-user carries in one
    32-bit number (:func:`packed_base`).

    :param desc: guest address of the descriptor ring.
    :param driver: guest address of the driver event suppression area.
    :param base: the packed base from SET_VRING_BASE.
    """

    _writes_descriptors = True

    def __init__(self, memory: Memory, num: int, desc: int,
                 driver: int, base: int,
                 on_write: Optional[Callable[[int, int, bool], None]] = None,
                 indirect: bool = False):
        super().__init__(memory, num, desc, on_write, indirect)
        self.avail_pos = base & 0x7FFF
        self.avail_wrap = bool(base >> 15 & 1)
        self.used_pos = base >> 16 & 0x7FFF
        self.used_wrap = bool(base >> 31 & 1)
        if max(self.avail_pos, self.used_pos) >= num:
            raise RingError(f"packed base 0x{base:x}: available position "
                            f"{self.avail_pos} or used position "
                            f"{self.used_pos} is past the ring size {num}")
        self._emap, self._eoff = memory.locate(driver, 4)
        self._pushed = False

    @property
    def base(self) -> int:
        return packed_base(self.avail_pos, self.avail_wrap, self.used_pos,
                           self.used_wrap)

    @property
    def next_avail(self) -> int:
        """The base, as GET_VRING_BASE reports it (the name SplitRing
        uses, so that devices treat both kinds alike)."""
        return self.base

    def has_available(self) -> bool:
        """Whether the driver offers work: the descriptor at the device's
        position is available -- or, a hole, the one after it is while
        this one is not (the driver posted past a slot, or a store
        overwrote its flags: the ring can never move again)."""
        flags = _U16.unpack_from(self._dmap,
                                 self._doff + 16 * self.avail_pos + 14)[0]
        if self._available(flags):
            return True
        after = self.avail_pos + 1
        wrap = self.avail_wrap
        if after == self.num:
            after, wrap = 0, not wrap
        flags = _U16.unpack_from(self._dmap, self._doff + 16 * after + 14)[0]
        return (bool(flags & PACKED_DESC_F_AVAIL) == wrap
                and bool(flags & PACKED_DESC_F_USED) != wrap)

    def indexes(self) -> str:
        """The ring's positions, for reports."""
        return (f"avail pos {self.avail_pos} wrap {int(self.avail_wrap)}, "
                f"used pos {self.used_pos} wrap {int(self.used_wrap)}")

    def _available(self, flags: int) -> bool:
        avail = bool(flags & PACKED_DESC_F_AVAIL)
        used = bool(flags & PACKED_DESC_F_USED)
        return avail == self.avail_wrap and used != self.avail_wrap

    def published(self, pos: int, wrap: bool) -> bool:
        """Whether slot ``pos`` no longer reads as available for wrap
        counter ``wrap`` (a used element was published over it)."""
        flags = load_packed_desc(self._dmap, self._doff + 16 * pos)[0]
        available = PACKED_DESC_F_AVAIL if wrap else PACKED_DESC_F_USED
        return flags & (PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED) \
            != available

    def skip(self, slots: int) -> None:
        """Move the available position ``slots`` on (the slots of chains
        taken before, resubmitted from the in-flight area)."""
        if slots > self.num:
            raise RingError(f"{slots} slots in flight in a ring of "
                            f"{self.num}")
        self.avail_pos += slots
        if self.avail_pos >= self.num:
            self.avail_pos -= self.num
            self.avail_wrap = not self.avail_wrap

    def mark(self) -> Tuple[int, bool]:
        """The available position, for :meth:`rewind`."""
        return self.avail_pos, self.avail_wrap

    def rewind(self, mark: Tuple[int, bool]) -> None:
        """Put back what was popped since ``mark`` (its buffer could not be
        reached yet: an IOTLB miss); the ring takes it again later."""
        self.avail_pos, self.avail_wrap = mark

    def pop(self) -> Optional[Tuple[Chain, int, int]]:
        """The next available buffer: ``(chain, buffer id, descriptors)``,
        or None.  A chain that cannot be walked leaves the position where
        it was."""
        mark = self.mark()
        try:
            return self._pop()
        except BaseException:
            self.rewind(mark)
            raise

    def _pop(self) -> Optional[Tuple[Chain, int, int]]:
        flags, addr, length, buf_id = load_packed_desc(
            self._dmap, self._doff + 16 * self.avail_pos)
        if not self._available(flags):
            return None
        readable: List[Tuple[int, int]] = []
        writable: List[Tuple[int, int]] = []
        count = 0
        while True:
            count += 1
            if count > self.num:
                raise RingError("packed descriptor chain longer than the ring")
            if flags & DESC_F_INDIRECT:
                if not self.indirect:
                    raise RingError("indirect descriptor not negotiated")
                for i in range(self._indirect_entries(length)):
                    # Indirect tables of packed rings use the packed layout
                    # (id, flags) and are walked in order: no NEXT.
                    a, n, _, f = PACKED_DESC.unpack_from(
                        *self._locate_desc(addr, length, i))
                    (writable if f & DESC_F_WRITE
                     else readable).append((a, n))
            else:
                (writable if flags & DESC_F_WRITE
                 else readable).append((addr, length))
            last_flags = flags
            self.avail_pos += 1
            if self.avail_pos >= self.num:
                self.avail_pos = 0
                self.avail_wrap = not self.avail_wrap
            if not last_flags & DESC_F_NEXT:
                return (self._checked(Chain(buf_id, readable, writable)),
                        buf_id, count)
            flags, addr, length, buf_id = load_packed_desc(
                self._dmap, self._doff + 16 * self.avail_pos)

    def _locate_desc(self, table: int, length: int,
                     i: int) -> Tuple[Any, int]:
        mapping, off = self.memory.locate(table, length)
        return mapping, off + 16 * i

    def push(self, buf_id: int, length: int, count: int) -> None:
        """Mark buffer ``buf_id`` used at the used position, then skip the
        ``count`` slots its chain took."""
        flags = (PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED
                 if self.used_wrap else 0)
        off = self._doff + 16 * self.used_pos
        # addr is ignored for used descriptors; id and len before flags,
        # which publish the entry.
        struct.pack_into("<IH", self._dmap, off + 8, length, buf_id)
        store16(self._dmap, off + 14, flags)
        if self.on_write is not None:
            self.on_write(self.desc + 16 * self.used_pos + 8, 8, True)
        self.used_pos += count
        if self.used_pos >= self.num:
            self.used_pos -= self.num
            self.used_wrap = not self.used_wrap
        self._pushed = True

    def consume(self, out: List[bytes], limit: Optional[int] = None,
                skip: int = 0) -> None:
        """As :meth:`SplitRing.consume`: take, read past ``skip``, complete
        with length 0."""
        taken = 0
        while limit is None or taken < limit:
            item = self.pop()
            if item is None:
                return
            chain, buf_id, count = item
            out.append(self.read(chain.readable)[skip:])
            self.push(buf_id, 0, count)
            taken += 1

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt (driver event flags)."""
        if not self._pushed:
            return False
        self._pushed = False
        flags = int(_U16.unpack_from(self._emap, self._eoff + 2)[0]) & 3
        return flags != PACKED_EVENT_DISABLE


_PACKED_FIELDS = struct.Struct("<QIH")
_unpack_u16, _unpack_desc = _U16.unpack_from, DESC.unpack_from
_pack_elem = USED_ELEM.pack_into
#: "no region yet" for the batch loops' region cache: an empty range
_NO_SPAN: Tuple[Any, int, int, int] = (None, 1, 0, 0)
