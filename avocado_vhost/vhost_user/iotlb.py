"""
The device IOTLB: guest memory as a device behind a vIOMMU sees it.

With VIRTIO_F_IOMMU_PLATFORM negotiated, every address the driver gives the
device -- ring areas in SET_VRING_ADDR, buffers in descriptors -- is an I/O
virtual address (IOVA), which only the vIOMMU in QEMU can translate.  The
spec ("IOMMU support"): the front-end sends IOTLB_MSG updates (an IOVA
range, QEMU's own virtual address for its first byte, the permissions) and
invalidations; when the back-end meets an IOVA it has no entry for, it
sends a miss (BACKEND_IOTLB_MSG, type MISS) on the back-end channel and
waits for the update, which comes on the main channel.

:class:`Iotlb` is the table of entries, bounded.  :class:`TranslatedMemory`
is :class:`.memory.GuestMemory`'s interface (``locate``, ``span``,
``read``, ``write``) by IOVA: IOVA -> QEMU's virtual address (the IOTLB)
-> the local mapping (the memory table).  A translation it has no entry
for raises :class:`IotlbMiss`; the device then leaves the ring where it is,
the back-end sends the miss, and the ring moves again once the update has
come.  A range that crosses entries is refused like one that crosses
regions (buffers are translated whole, never split).
"""

from __future__ import annotations

import bisect
import mmap
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .memory import AddressError, GuestMemory

__all__ = ["IotlbEntry", "Iotlb", "IotlbMiss", "TranslatedMemory",
           "IOTLB_MISS", "IOTLB_UPDATE", "IOTLB_INVALIDATE",
           "IOTLB_ACCESS_FAIL", "PERM_RO", "PERM_WO", "PERM_RW"]

#: ``struct vhost_iotlb_msg`` types (linux/vhost_types.h)
IOTLB_MISS, IOTLB_UPDATE, IOTLB_INVALIDATE, IOTLB_ACCESS_FAIL = 1, 2, 3, 4
#: its permissions
PERM_RO, PERM_WO, PERM_RW = 1, 2, 3


class IotlbMiss(AddressError):
    """No IOTLB entry translates ``iova`` for this access: the back-end
    must ask the front-end (a miss) and try again after its update."""

    def __init__(self, iova: int, length: int, write: bool):
        super().__init__(f"IOTLB miss: iova 0x{iova:x}+0x{length:x} "
                         f"({'write' if write else 'read'})")
        self.iova = iova
        self.write = write
        #: frames a receive batch delivered before the miss stopped it
        self.delivered = 0


@dataclass(frozen=True)
class IotlbEntry:
    """One translation: ``[iova, iova+size)`` is at QEMU's ``user_addr``."""

    iova: int
    size: int
    user_addr: int
    perm: int

    @property
    def end(self) -> int:
        return self.iova + self.size

    def allows(self, write: bool) -> bool:
        return bool(self.perm & (PERM_WO if write else PERM_RO))


class Iotlb:
    """The entries of one connection, sorted by IOVA, non-overlapping
    (a new entry replaces what it overlaps, as the vhost kernel's does).

    :param limit: the most entries kept; past it the oldest is dropped
        (it will miss again): a front-end cannot grow it without bound.
    """

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._starts: List[int] = []
        self._entries: List[IotlbEntry] = []
        self._order: List[IotlbEntry] = []  # oldest first
        #: how many updates and invalidations arrived, and misses sent
        self.updates = self.invalidations = self.misses = 0
        #: (page, write) asked for and not yet covered by an update
        self._asked: "set[Tuple[int, bool]]" = set()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> List[IotlbEntry]:
        return list(self._entries)

    def update(self, entry: IotlbEntry) -> None:
        """Add ``entry`` (an UPDATE)."""
        if entry.size == 0 or entry.end > 1 << 64:
            raise AddressError(f"IOTLB update of iova 0x{entry.iova:x} size "
                               f"0x{entry.size:x}")
        self.updates += 1
        # what the update answers may be asked again (it can go); the
        # misses still open stay asked
        self._asked = {key for key in self._asked
                       if not entry.iova <= key[0] < entry.end}
        self._drop(entry.iova, entry.size)
        at = bisect.bisect_left(self._starts, entry.iova)
        self._starts.insert(at, entry.iova)
        self._entries.insert(at, entry)
        self._order.append(entry)
        if len(self._entries) > self.limit:
            self._remove(self._order[0])

    def invalidate(self, iova: int, size: int, drop: bool = True) -> int:
        """Drop every entry that overlaps ``[iova, iova+size)`` (an
        INVALIDATE); how many were dropped.  ``drop=False`` only counts it
        (a negative control that keeps stale entries)."""
        self.invalidations += 1
        return self._drop(iova, size) if drop else 0

    def _drop(self, iova: int, size: int) -> int:
        gone = [e for e in self._entries
                if e.iova < iova + size and iova < e.end]
        for entry in gone:
            self._remove(entry)
        return len(gone)

    def _remove(self, entry: IotlbEntry) -> None:
        at = self._entries.index(entry)
        del self._entries[at], self._starts[at]
        self._order.remove(entry)

    def find(self, iova: int, length: int, write: bool) -> IotlbEntry:
        """The entry that translates all of ``[iova, iova+length)``.

        :raise IotlbMiss: none does (or not with the permission needed).
        """
        at = bisect.bisect_right(self._starts, iova) - 1
        if at >= 0:
            entry = self._entries[at]
            if iova + max(length, 1) <= entry.end and entry.allows(write):
                return entry
        raise IotlbMiss(iova, length, write)

    def ask(self, iova: int, write: bool) -> bool:
        """Whether a miss for ``iova`` should be sent now: once per page
        and direction until an update covers it (a ring retried at every
        kick or update would otherwise ask again each time)."""
        key = (iova & ~0xFFF, write)
        if key in self._asked:
            return False
        if len(self._asked) >= self.limit:
            self._asked.clear()
        self._asked.add(key)
        self.misses += 1
        return True

    def clear(self) -> None:
        self._starts, self._entries, self._order = [], [], []
        self._asked.clear()


class TranslatedMemory:
    """Guest memory addressed by IOVA, through ``iotlb`` and ``memory``.

    Same methods as :class:`.memory.GuestMemory` for what rings use; each
    can raise :class:`IotlbMiss` (a LookupError, as an address outside
    the memory table is).
    """

    def __init__(self, memory: GuestMemory, iotlb: Iotlb):
        self.memory = memory
        self.iotlb = iotlb

    def span(self, iova: int, length: int, write: bool = False
             ) -> Tuple[mmap.mmap, int, int, int]:
        """As :meth:`GuestMemory.span`: ``(mapping, first iova, end iova,
        delta)``, the IOTLB entry cut to the region that holds the range.

        :raise IotlbMiss: no entry translates the range.
        :raise AddressError: the entry points outside the memory table.
        """
        entry = self.iotlb.find(iova, length, write)
        shift = entry.user_addr - entry.iova  # uva = iova + shift
        mapping, first, end, delta = self.memory.span_uva(iova + shift,
                                                          length)
        return (mapping, max(entry.iova, first - shift),
                min(entry.end, end - shift), delta + shift)

    def locate(self, iova: int, length: int, write: bool = False
               ) -> Tuple[mmap.mmap, int]:
        mapping, _, _, delta = self.span(iova, length, write)
        return mapping, iova + delta

    def read(self, iova: int, length: int) -> bytes:
        mapping, off = self.locate(iova, length)
        return mapping[off:off + length]

    def write(self, iova: int, data: bytes) -> None:
        mapping, off = self.locate(iova, len(data), write=True)
        mapping[off:off + len(data)] = data

    def to_gpa(self, iova: int) -> Optional[int]:
        """The guest-physical address of ``iova`` (for the dirty log), or
        None without a translation."""
        try:
            entry = self.iotlb.find(iova, 1, False)
            return self.memory.uva_to_gpa(entry.user_addr + iova - entry.iova)
        except LookupError:
            return None
