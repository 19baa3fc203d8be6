"""
The device side of a packed virtqueue (virtio 1.1 "Packed Virtqueues").
"""

from __future__ import annotations

import struct
from typing import Any, Callable, List, Optional, Tuple

from ...virtio.ring import (DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
                            PACKED_DESC, PACKED_DESC_F_AVAIL,
                            PACKED_DESC_F_USED, PACKED_EVENT_DISABLE)
from .access import (U16, Chain, Memory, RingBase, RingError, load_packed_desc,
                     store16)

__all__ = ["PackedRing", "packed_base"]


def packed_base(avail: int, avail_wrap: bool, used: int,
                used_wrap: bool) -> int:
    """The vhost-user base of a packed ring: bits 0-14 next available
    position, bit 15 its wrap counter, bits 16-30 next used position, bit 31
    its wrap counter."""
    return ((avail & 0x7FFF) | (int(avail_wrap) << 15)
            | ((used & 0x7FFF) << 16) | (int(used_wrap) << 31))


class PackedRing(RingBase):
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
        flags = U16.unpack_from(self._dmap,
                                 self._doff + 16 * self.avail_pos + 14)[0]
        if self._available(flags):
            return True
        after = self.avail_pos + 1
        wrap = self.avail_wrap
        if after == self.num:
            after, wrap = 0, not wrap
        flags = U16.unpack_from(self._dmap, self._doff + 16 * after + 14)[0]
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
        flags = int(U16.unpack_from(self._emap, self._eoff + 2)[0]) & 3
        return flags != PACKED_EVENT_DISABLE
