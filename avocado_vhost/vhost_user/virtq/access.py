"""
What both ring layouts share: access to the mapped guest memory (with the
single-width stores and ordered loads a concurrent driver needs), the
chain a device takes, and the ring base class.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from typing import Any, Callable, List, Optional, Tuple, Union

from ...virtio.ring import DESC, USED_ELEM, split_sizes
from ..iotlb import TranslatedMemory
from ..memory import GuestMemory

#: What a ring reads and writes through: guest memory by guest address,
#: or by IOVA through the device IOTLB (VIRTIO_F_IOMMU_PLATFORM).
Memory = Union[GuestMemory, TranslatedMemory]

__all__ = ["Memory", "RingError", "Chain", "RingBase", "MAX_CHAIN_BYTES",
           "store16", "load_packed_desc", "U16", "FENCE", "PACKED_FIELDS",
           "NO_SPAN", "unpack_u16", "unpack_desc", "pack_elem"]

U16 = struct.Struct("<H")


#: acquiring an uncontended lock is a locked instruction: a full barrier
#: on x86, which Python offers no other way to issue
FENCE = threading.Lock()


PACKED_FIELDS = struct.Struct("<QIH")
unpack_u16, unpack_desc = U16.unpack_from, DESC.unpack_from
pack_elem = USED_ELEM.pack_into
#: "no region yet" for the batch loops' region cache: an empty range
NO_SPAN: Tuple[Any, int, int, int] = (None, 1, 0, 0)


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
    flags = U16.unpack_from(mapping, offset + 14)[0]
    addr, length, buf_id = PACKED_FIELDS.unpack_from(mapping, offset)
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


class RingBase:
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
