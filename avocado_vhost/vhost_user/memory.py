"""
Guest memory as the back-end sees it: mapped regions and the dirty log.

SET_MEM_TABLE (or ADD_MEM_REG) hands the back-end one fd per guest RAM
region together with three coordinates: the guest-physical address, QEMU's
own virtual address of the region (ring addresses arrive in that space), and
the offset of the region inside the fd.  :class:`GuestMemory` maps each fd
and translates either kind of address to the local mapping; nothing assumes
one region at guest address 0 (with ROM holes QEMU sends three).

:class:`DirtyLog` is the shared bitmap of SET_LOG_BASE: one bit per 4 KiB
guest page, which QEMU reads to resend pages that the back-end wrote while
migration runs.
"""

from __future__ import annotations

import mmap
import os
import fcntl
import stat
import threading
from typing import Callable, Iterator, List, Optional, Set, Tuple

from .error import MalformedMessage
from .message import VHOST_LOG_PAGE, MemoryRegion
from .postcopy import mapping_address

__all__ = ["MappedRegion", "GuestMemory", "DirtyLog", "AddressError",
           "seal_shrink"]

_PAGE = mmap.PAGESIZE


class AddressError(LookupError):
    """An address (or range) that no mapped region covers."""


def check_extent(fd: int, end: int, what: str) -> None:
    """Refuse a mapping that would reach past the end of its file.

    mmap() itself accepts it, but the first access beyond the end raises
    SIGBUS and kills the whole test process.
    """
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise MalformedMessage(f"{what}: fd {fd} is unusable: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MalformedMessage(
            f"{what}: fd {fd} is not a file that can be mapped "
            f"(mode 0o{info.st_mode:o})")
    if info.st_size < end:
        raise MalformedMessage(
            f"{what}: needs {end} bytes of its file, the file has "
            f"{info.st_size}")


def seal_shrink(fd: int) -> bool:
    """Forbid the file to shrink (``F_SEAL_SHRINK``) while it is mapped:
    a front-end that truncated it afterwards would make the next access a
    SIGBUS that kills the whole process.  QEMU's memfds are sealed so
    already; a memfd without sealing, or a plain file (memory-backend-file,
    hugetlbfs), cannot be: then the size was only checked at map time.

    :return: whether the file can no longer shrink.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        return True
    except OSError:
        try:
            return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                        & fcntl.F_SEAL_SHRINK)
        except OSError:
            return False


class MappedRegion:
    """One region mapped from its fd; owns the fd and the mapping.

    :raise MalformedMessage: the fd cannot be mapped as described.
    """

    def __init__(self, desc: MemoryRegion, fd: int):
        self.desc = desc
        self.fd = fd
        start = desc.mmap_offset - desc.mmap_offset % _PAGE
        self._skew = desc.mmap_offset - start
        if desc.size == 0:
            raise MalformedMessage(f"memory region of size 0 ({desc})")
        for name, base in (("guest", desc.guest_addr),
                           ("user", desc.user_addr)):
            if base + desc.size > 1 << 64:
                raise MalformedMessage(f"memory region {desc}: its {name} "
                                       "addresses wrap past 2^64")
        check_extent(fd, desc.mmap_offset + desc.size, f"region {desc}")
        #: whether the file can no longer shrink under the mapping
        self.sealed = seal_shrink(fd)
        try:
            self.map = mmap.mmap(fd, desc.size + self._skew, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE,
                                 offset=start)
        except (OSError, ValueError, OverflowError) as exc:
            raise MalformedMessage(
                f"cannot map memory region {desc} from fd {fd}: {exc}"
            ) from None

    @property
    def local_address(self) -> int:
        """Where the region's first byte is mapped in this process (what a
        postcopy back-end tells the front-end)."""
        return mapping_address(self.map) + self._skew

    def contains_gpa(self, gpa: int, length: int = 1) -> bool:
        d = self.desc
        return d.guest_addr <= gpa and gpa + length <= d.guest_addr + d.size

    def contains_uva(self, uva: int, length: int = 1) -> bool:
        d = self.desc
        return d.user_addr <= uva and uva + length <= d.user_addr + d.size

    def recheck(self) -> None:
        """For a file that could not be sealed: is it still long enough?

        :raise AddressError: it shrank; touching the mapping would SIGBUS.
        """
        if not self.sealed:
            _recheck(self.fd, self.desc.mmap_offset + self.desc.size,
                     f"memory region {self.desc}")

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def _recheck(fd: int, end: int, what: str) -> None:
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise AddressError(f"{what}: fd {fd} unusable: {exc}") from None
    if size < end:
        raise AddressError(f"{what}: its file shrank to {size} bytes under "
                           f"the mapping (needs {end}); not touched")


class GuestMemory:
    """The set of mapped regions of one connection; thread-safe."""

    def __init__(self) -> None:
        self._regions: List[MappedRegion] = []
        self._lock = threading.Lock()
        #: Postcopy: called as ``(mapping, offset, length)`` before every
        #: access this object hands out, to fault missing pages in first
        #: (:class:`.postcopy.FaultIn`); None otherwise.
        self.fault_in: Optional[Callable[[mmap.mmap, int, int], None]] = None

    def _reach(self, gpa: int, length: int) -> Tuple[MappedRegion, int]:
        """``_find`` by guest address, with missing pages faulted in."""
        region, off = self._find(gpa, length, by_uva=False)
        if self.fault_in is not None:
            self.fault_in(region.map, off, length)
        return region, off

    @property
    def regions(self) -> List[MemoryRegion]:
        with self._lock:
            return [r.desc for r in self._regions]

    def __len__(self) -> int:
        return len(self._regions)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of guest memory mapped now."""
        return sum(r.desc.size for r in self._regions)

    def add(self, desc: MemoryRegion, fd: int) -> None:
        """Map and add one region; on failure the fd is closed."""
        try:
            region = MappedRegion(desc, fd)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._regions = self._regions + [region]

    def remove(self, desc: MemoryRegion) -> bool:
        """Unmap the region matching guest address, user address and size
        (the spec ignores the mmap offset); False if none matches."""
        with self._lock:
            for region in self._regions:
                d = region.desc
                if (d.guest_addr, d.user_addr, d.size) == (
                        desc.guest_addr, desc.user_addr, desc.size):
                    self._regions = [r for r in self._regions
                                     if r is not region]
                    region.close()
                    return True
        return False

    def recheck(self) -> None:
        """Re-check the size of every region whose file could not be sealed
        (one fstat each; none for QEMU's sealed memfds).  A front-end can
        still shrink a file between this check and an access: that narrows
        the window, it cannot close it.

        :raise AddressError: a file shrank under its mapping.
        """
        for region in self._regions:
            region.recheck()

    def clear(self) -> None:
        """Unmap every region and close every fd."""
        with self._lock:
            regions, self._regions = self._regions, []
        for region in regions:
            region.close()

    def _find(self, addr: int, length: int, by_uva: bool
              ) -> Tuple[MappedRegion, int]:
        # The region list is replaced, never changed in place, so reading
        # it needs no lock; this is on the data path's hot path.
        for region in self._regions:
            d = region.desc
            if by_uva:
                if d.user_addr <= addr and addr + length <= d.user_addr + d.size:
                    return region, addr - d.user_addr + region._skew
            elif d.guest_addr <= addr and \
                    addr + length <= d.guest_addr + d.size:
                return region, addr - d.guest_addr + region._skew
        kind = "user address" if by_uva else "guest address"
        raise AddressError(
            f"{kind} 0x{addr:x}+0x{length:x} is not inside one mapped region"
            f" (regions: {', '.join(str(r) for r in self.regions) or 'none'})")

    def locate(self, gpa: int, length: int, write: bool = False
               ) -> Tuple[mmap.mmap, int]:
        """The mapping and offset that hold ``[gpa, gpa+length)``, for
        ``struct.unpack_from``/``pack_into`` without copies.  Valid until
        the memory table changes.  ``write`` says the device will write
        there (the memory table has no permissions; an IOTLB has).

        :raise AddressError: not inside one region.
        """
        region, off = self._reach(gpa, length)
        return region.map, off

    def span(self, gpa: int, length: int, write: bool = False
             ) -> Tuple[mmap.mmap, int, int, int]:
        """The region holding ``[gpa, gpa+length)`` as ``(mapping, first
        guest address, end guest address, delta)``: any range inside it is
        at offset ``address + delta`` of the mapping.  Lets a hot loop
        translate the next buffer without a lookup when it falls in the
        same region (valid until the memory table changes).

        With :attr:`fault_in` set the span is the range itself: every
        buffer comes back here and has its pages faulted in.

        :raise AddressError: not inside one region.
        """
        region, off = self._reach(gpa, length)
        if self.fault_in is not None:
            return region.map, gpa, gpa + length, off - gpa
        d = region.desc
        return region.map, d.guest_addr, d.guest_addr + d.size, off - gpa

    def span_uva(self, uva: int, length: int
                 ) -> Tuple[mmap.mmap, int, int, int]:
        """As :meth:`span`, by QEMU's virtual address (what IOTLB entries
        name): ``(mapping, first user address, end user address, delta)``.

        :raise AddressError: not inside one region.
        """
        region, off = self._find(uva, length, by_uva=True)
        if self.fault_in is not None:
            self.fault_in(region.map, off, length)
            return region.map, uva, uva + length, off - uva
        d = region.desc
        return region.map, d.user_addr, d.user_addr + d.size, off - uva

    def uva_to_gpa(self, uva: int) -> int:
        """Translate QEMU's virtual address (ring addresses) to a guest one."""
        region, off = self._find(uva, 1, by_uva=True)
        return region.desc.guest_addr + off - region._skew

    def read(self, gpa: int, length: int) -> bytes:
        """Read guest memory at a guest-physical address."""
        region, off = self._reach(gpa, length)
        return region.map[off:off + length]

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest memory at a guest-physical address."""
        region, off = self._reach(gpa, len(data))
        region.map[off:off + len(data)] = data

    def mapped(self) -> List[MappedRegion]:
        """The regions as mapped now (postcopy registers them with its
        userfaultfd and reports their local addresses)."""
        return list(self._regions)

    def ram_ranges(self) -> Iterator[Tuple[int, int]]:
        """``(guest address, size)`` of every region, lowest first."""
        for d in sorted(self.regions, key=lambda r: r.guest_addr):
            yield d.guest_addr, d.size


class DirtyLog:
    """The dirty-page bitmap shared with QEMU through SET_LOG_BASE.

    Bit ``n`` of the bitmap stands for guest page ``n`` (4 KiB).  QEMU reads
    it by atomically swapping words with 0; a plain byte-wise OR here can at
    worst re-set a bit that QEMU has just consumed, which makes QEMU send a
    page once more, never once less.
    """

    def __init__(self, fd: int, size: int, offset: int):
        self.size = size
        self.offset = offset
        self.fd = fd
        start = offset - offset % _PAGE
        self._skew = offset - start
        try:
            if size == 0:
                raise MalformedMessage("dirty log of size 0")
            check_extent(fd, offset + size, "dirty log")
        except MalformedMessage:
            os.close(fd)
            raise
        #: whether the log file can no longer shrink under the mapping
        self.sealed = seal_shrink(fd)
        try:
            self.map = mmap.mmap(fd, size + self._skew, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE,
                                 offset=start)
        except (OSError, ValueError, OverflowError) as exc:
            os.close(fd)
            raise MalformedMessage(
                f"cannot map dirty log of {size} bytes at offset {offset}: "
                f"{exc}") from None
        self._lock = threading.Lock()
        #: every page this back-end ever marked in this log (a page that
        #: did not migrate is then known to have been logged or not);
        #: bounded by :attr:`pages`
        self.marked: Set[int] = set()

    def recheck(self) -> None:
        """As :meth:`GuestMemory.recheck`, for the log's file."""
        if not self.sealed:
            _recheck(self.fd, self.offset + self.size, "dirty log")

    @property
    def pages(self) -> int:
        """How many guest pages the log can describe."""
        return self.size * 8

    def mark(self, gpa: int, length: int = 1) -> None:
        """Mark every page touched by ``[gpa, gpa+length)`` dirty.

        :raise AddressError: the range is beyond what the log covers.
        """
        first = gpa // VHOST_LOG_PAGE
        last = (gpa + max(length, 1) - 1) // VHOST_LOG_PAGE
        if last >= self.pages:
            raise AddressError(
                f"page {last} (gpa 0x{gpa:x}) beyond the dirty log's "
                f"{self.pages} pages")
        with self._lock:
            for page in range(first, last + 1):
                pos = self._skew + page // 8
                self.map[pos] = self.map[pos] | (1 << (page % 8))
                self.marked.add(page)

    def is_dirty(self, gpa: int) -> bool:
        page = gpa // VHOST_LOG_PAGE
        return bool(self.map[self._skew + page // 8] & (1 << (page % 8)))

    def dirty_pages(self) -> List[int]:
        """Numbers of the pages whose bit is set now."""
        data = self.map[self._skew:self._skew + self.size]
        out: List[int] = []
        for i, byte in enumerate(data):
            if byte:
                out.extend(i * 8 + b for b in range(8) if byte & (1 << b))
        return out

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)

