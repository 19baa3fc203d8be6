"""
The device side of a split virtqueue, in guest memory mapped by the back-end.

Layout (virtio 1.x, "Split Virtqueues"), all little-endian:

* descriptor table: ``num`` x ``{u64 addr, u32 len, u16 flags, u16 next}``
* available ring: ``u16 flags, u16 idx, u16 ring[num], u16 used_event``
* used ring: ``u16 flags, u16 idx, {u32 id, u32 len}[num], u16 avail_event``

The back-end keeps its own position in the available ring (the *base*:
what GET_VRING_BASE reports and SET_VRING_BASE restores) and reads the used
index from guest memory when the ring starts, as the vhost-user spec says.
Every write goes through :meth:`SplitRing.write_guest`, which also marks the
dirty log while logging is on -- buffers always, the used ring at its log
address only when the ring asked for it (VHOST_VRING_F_LOG).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from .memory import GuestMemory

__all__ = ["Chain", "SplitRing", "RingError", "VRING_DESC_F_NEXT",
           "VRING_DESC_F_WRITE", "VRING_DESC_F_INDIRECT"]

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class RingError(Exception):
    """The driver laid out something the device cannot follow (a loop, an
    out-of-range index, a buffer outside guest memory)."""


@dataclass
class Chain:
    """One descriptor chain taken from the available ring."""

    head: int
    #: ``(guest address, length)`` of the device-readable buffers, in order
    readable: List[Tuple[int, int]]
    #: ``(guest address, length)`` of the device-writable buffers
    writable: List[Tuple[int, int]]

    @property
    def descriptors(self) -> int:
        return len(self.readable) + len(self.writable)


class SplitRing:
    """A started split ring.

    :param memory: the connection's guest memory.
    :param num: ring size.
    :param desc, avail, used: guest-physical addresses of the three parts.
    :param next_avail: the ring's base (next available entry to process).
    :param write_guest: ``(gpa, data, is_used_ring)`` -> None: how the
        device writes guest memory (the back-end logs through it).
    :param indirect: VIRTIO_F_INDIRECT_DESC negotiated.
    :param event_idx: VIRTIO_F_EVENT_IDX negotiated.
    """

    def __init__(self, memory: GuestMemory, num: int, desc: int, avail: int,
                 used: int, next_avail: int,
                 write_guest: Callable[[int, bytes, bool], None],
                 indirect: bool = False, event_idx: bool = False):
        self.memory = memory
        self.num = num
        self.desc = desc
        self.avail = avail
        self.used = used
        self.next_avail = next_avail & 0xFFFF
        self.write_guest = write_guest
        self.indirect = indirect
        self.event_idx = event_idx
        self.used_idx = self._u16(used + 2)
        self._signalled_used = self.used_idx

    def _u16(self, gpa: int) -> int:
        return _U16.unpack(self.memory.read(gpa, 2))[0]

    def avail_idx(self) -> int:
        return self._u16(self.avail + 2)

    def pending(self) -> int:
        """Available entries not processed yet."""
        return (self.avail_idx() - self.next_avail) & 0xFFFF

    def pop(self) -> Optional[Chain]:
        """Take the next available chain, or None when the ring is empty."""
        if self.avail_idx() == self.next_avail:
            return None
        slot = self.avail + 4 + 2 * (self.next_avail % self.num)
        head = self._u16(slot)
        chain = self._walk(head)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return chain

    def _walk(self, head: int) -> Chain:
        if head >= self.num:
            raise RingError(f"available ring names descriptor {head}, ring "
                            f"size is {self.num}")
        chain = Chain(head, [], [])
        table, size, index = self.desc, self.num, head
        seen = 0
        while True:
            seen += 1
            if seen > size:
                raise RingError(f"descriptor chain from {head} loops")
            addr, length, flags, nxt = _DESC.unpack(
                self.memory.read(table + 16 * index, 16))
            if flags & VRING_DESC_F_INDIRECT:
                if not self.indirect or table != self.desc:
                    raise RingError("indirect descriptor not allowed here")
                if length % 16 or not length:
                    raise RingError(f"indirect table of {length} bytes")
                table, size, index, seen = addr, length // 16, 0, 0
                continue
            (chain.writable if flags & VRING_DESC_F_WRITE
             else chain.readable).append((addr, length))
            if not flags & VRING_DESC_F_NEXT:
                return chain
            if nxt >= size:
                raise RingError(f"descriptor {index} chains to {nxt}, "
                                f"beyond {size}")
            index = nxt

    def read(self, buffers: List[Tuple[int, int]]) -> bytes:
        return b"".join(self.memory.read(a, n) for a, n in buffers)

    def fill(self, buffers: List[Tuple[int, int]], data: bytes) -> int:
        """Write ``data`` across writable buffers; return bytes written."""
        pos = 0
        for addr, length in buffers:
            if pos >= len(data):
                break
            part = data[pos:pos + length]
            self.write_guest(addr, part, False)
            pos += len(part)
        return pos

    def push(self, head: int, length: int) -> None:
        """Return a chain to the driver through the used ring."""
        slot = self.used + 4 + 8 * (self.used_idx % self.num)
        self.write_guest(slot, _USED_ELEM.pack(head, length), True)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.write_guest(self.used + 2, _U16.pack(self.used_idx), True)

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since
        the last notification (VRING_AVAIL_F_NO_INTERRUPT or used_event)."""
        old, new = self._signalled_used, self.used_idx
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            event = self._u16(self.avail + 4 + 2 * self.num)
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self._u16(self.avail) & VRING_AVAIL_F_NO_INTERRUPT
