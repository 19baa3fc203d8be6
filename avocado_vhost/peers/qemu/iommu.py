"""
intel-iommu's DMA remapping, programmed by the test over qtest.

A guest kernel with ``intel_iommu=on`` builds page tables and turns
translation on; the test does the same, the smallest way the VT-d spec
allows, so that the device's addresses (IOVAs) are not guest addresses:

* a root table (one entry per bus) pointing to a context table (one entry
  per device and function): the device gets a domain and a second-level
  page table of 3 levels (39-bit addresses, which every QEMU's intel-iommu
  supports), pass-through off;
* 4 KiB mappings IOVA -> guest address, read and write;
* translation on through the global command register (root table pointer,
  then translation enable, each acknowledged in the status register);
* invalidation the register-based way (context cache, IOTLB: global, or
  one page), which QEMU turns into IOTLB_MSG invalidations for vhost.

Register offsets and bits are the VT-d specification's (chapter 10); the
IOTLB registers are where the extended capability register says.
"""

from __future__ import annotations

import struct
from typing import Dict, Tuple

from avocado_vhost.peers.qemu.qtest import QtestLink
from avocado_vhost.peers.qemu.virtio_pci import GuestAllocator, VirtioPciError

__all__ = ["IntelIommu", "VTD_BASE"]

#: where q35 puts intel-iommu's registers
VTD_BASE = 0xFED90000
_CAP, _ECAP, _GCMD, _GSTS, _RTADDR, _CCMD = 0x08, 0x10, 0x18, 0x1C, 0x20, 0x28
_TE, _SRTP = 1 << 31, 1 << 30          # GCMD commands, GSTS status bits
_ICC, _CCMD_GLOBAL = 1 << 63, 1 << 61   # context command: invalidate, global
_IVT = 1 << 63                          # IOTLB: invalidate
_IOTLB_GLOBAL, _IOTLB_PAGE = 1 << 60, 3 << 60
_READ, _WRITE = 1, 2                    # second-level entry permissions
_PAGE = 4096
#: context entry: present; address width 39 bits (3 levels), AW field 1
_PRESENT, _AW_39 = 1, 1
_SAGAW_39 = 1 << 9                      # CAP: 3-level tables supported


class IntelIommu:
    """One intel-iommu, one domain, driven from the test.

    :param qtest: the VM's qtest link.
    :param alloc: guest RAM for the tables (page-aligned, test-owned).
    :param domain: the domain id the device is put in.
    """

    def __init__(self, qtest: QtestLink, alloc: GuestAllocator,
                 domain: int = 1):
        self.qtest = qtest
        self.alloc = alloc
        self.domain = domain
        cap = self._read(_CAP, 8)
        if not cap & _SAGAW_39:
            raise VirtioPciError(f"intel-iommu without 3-level tables "
                                 f"(CAP 0x{cap:x})")
        # the IOTLB registers: IVA at 16 * ECAP.IRO, IOTLB 8 bytes further
        self._iva = ((self._read(_ECAP, 8) >> 8) & 0x3FF) * 16
        self.root = alloc.alloc(_PAGE)
        self.context = alloc.alloc(_PAGE)
        self.top = alloc.alloc(_PAGE)
        #: (level, IOVA >> shift of the level above) -> table address
        self._tables: Dict[Tuple[int, int], int] = {(3, 0): self.top}
        for table in (self.root, self.context, self.top):
            qtest.memset(table, _PAGE, 0)

    def _read(self, reg: int, size: int) -> int:
        return self.qtest.read(VTD_BASE + reg, size)

    def _write(self, reg: int, size: int, value: int) -> None:
        self.qtest.write(VTD_BASE + reg, size, value)

    # --- tables -------------------------------------------------------
    def attach(self, devfn: int, bus: int = 0) -> None:
        """Put function ``devfn`` of ``bus`` in the domain, translated by
        the page table (context entry type 0: untranslated requests)."""
        self.qtest.memwrite(self.root + 16 * bus,
                            struct.pack("<QQ", self.context | _PRESENT, 0))
        self.qtest.memwrite(self.context + 16 * devfn, struct.pack(
            "<QQ", self.top | _PRESENT, _AW_39 | self.domain << 8))

    def _table(self, level: int, iova: int) -> int:
        """The level-``level`` table that covers ``iova`` (made, and hung
        in the table above, on first use)."""
        key = (level, iova >> (12 + 9 * level))
        table = self._tables.get(key)
        if table is None:
            table = self.alloc.alloc(_PAGE)
            self.qtest.memset(table, _PAGE, 0)
            above = self._table(level + 1, iova)
            slot = (iova >> (12 + 9 * level)) & 0x1FF
            self.qtest.memwrite(above + 8 * slot,
                                struct.pack("<Q", table | _READ | _WRITE))
            self._tables[key] = table
        return table

    def map(self, iova: int, gpa: int, size: int) -> None:
        """Map ``[iova, iova+size)`` to guest address ``gpa``, 4 KiB pages,
        read and write; a level-1 table is written in one go."""
        if (iova | gpa | size) % _PAGE or iova + size > 1 << 39:
            raise ValueError(f"mapping 0x{iova:x}+0x{size:x} -> 0x{gpa:x}")
        entries: Dict[int, Dict[int, int]] = {}
        for off in range(0, size, _PAGE):
            page = iova + off
            table = self._table(1, page)
            entries.setdefault(table, {})[(page >> 12) & 0x1FF] = \
                (gpa + off) | _READ | _WRITE
        for table, slots in entries.items():
            first, last = min(slots), max(slots)
            self.qtest.memwrite(table + 8 * first, b"".join(
                struct.pack("<Q", slots.get(i, 0))
                for i in range(first, last + 1)))

    def remap(self, iova: int, gpa: int) -> None:
        """Point the one page at ``iova`` to ``gpa`` (invalidate after)."""
        self.map(iova, gpa, _PAGE)

    # --- registers ------------------------------------------------------
    def _command(self, bit: int) -> None:
        """Set a global command; the status register acknowledges it."""
        status = self._read(_GSTS, 4)
        self._write(_GCMD, 4, (status & _TE) | bit)
        if not self._read(_GSTS, 4) & bit:
            raise VirtioPciError(f"intel-iommu did not acknowledge command "
                                 f"0x{bit:x} (GSTS 0x{self._read(_GSTS, 4):x})")

    def enable(self) -> None:
        """Root table in, caches flushed, translation on."""
        self._write(_RTADDR, 8, self.root)
        self._command(_SRTP)
        self._write(_CCMD, 8, _ICC | _CCMD_GLOBAL)
        self.invalidate()
        self._command(_TE)

    def invalidate(self, iova: "int | None" = None) -> None:
        """Flush the IOTLB: all of it, or the one page at ``iova`` in the
        domain.  QEMU tells vhost back-ends before the write returns."""
        if iova is None:
            command = _IVT | _IOTLB_GLOBAL
        else:
            self._write(self._iva, 8, iova & ~(_PAGE - 1))  # AM 0: one page
            command = _IVT | _IOTLB_PAGE | self.domain << 32
        self._write(self._iva + 8, 8, command)
        if self._read(self._iva + 8, 8) & _IVT:
            raise VirtioPciError("intel-iommu did not finish an IOTLB "
                                 "invalidation")
