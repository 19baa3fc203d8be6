"""
A minimal virtio-pci (modern) driver that runs in the test, over qtest.

vhost-user starts only when the guest driver sets DRIVER_OK.  Rather than
wait for firmware (SeaBIOS + iPXE take ~2 s, and their timing is not ours),
the test plays the guest driver, like QEMU's libqos: it finds the function in
PCI config space, programs the modern BAR, walks the virtio vendor
capabilities, negotiates features, lays out split virtqueues in guest RAM and
sets DRIVER_OK.  With a firmware that only halts, launch to rings-started
takes tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from avocado_vhost.errors import Misbehaved
from avocado_vhost.virtio.features import VirtioFeature
from avocado_vhost.virtio.ring import split_sizes
from avocado_vhost.peers.qemu.platform import Platform
from avocado_vhost.peers.qemu.qtest import QtestLink

__all__ = ["VirtioPciError", "PciFunction", "VirtioPciDevice", "VirtQueue",
           "GuestAllocator", "find_function", "config_space",
           "PortConfigSpace", "EcamConfigSpace", "MsixVector", "NO_VECTOR", "VIRTIO_VENDOR",
           "modern_device_id"]

VIRTIO_VENDOR = 0x1AF4
_CFG_ADDR, _CFG_DATA = 0xCF8, 0xCFC
_PCI_COMMAND, _PCI_STATUS, _PCI_CAP_PTR = 0x04, 0x06, 0x34
_CAP_VENDOR, _CAP_MSIX = 0x09, 0x11
#: virtio's "no MSI-X vector" (INTx and the ISR register are used instead)
NO_VECTOR = 0xFFFF
#: where the MSI-X table's BAR goes, past the modern BAR
_MSIX_BAR_OFFSET = 0x100000
# virtio_pci_cap cfg_type
_COMMON, _NOTIFY, _ISR, _DEVICE = 1, 2, 3, 4
# device status bits
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, FAILED = 1, 2, 4, 8, 0x80


def modern_device_id(virtio_type: int) -> int:
    """PCI device id of a modern-only virtio device (net=1, blk=2, ...)."""
    return 0x1040 + virtio_type


class VirtioPciError(Misbehaved):
    """The device did not behave as a virtio-pci device must."""


class GuestAllocator:
    """Bump allocator for driver structures in a window of guest RAM."""

    def __init__(self, start: int, end: int):
        self.next = start
        self.end = end

    def alloc(self, size: int, align: int = 4096) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise VirtioPciError(
                f"guest allocator window exhausted at 0x{addr:x}")
        self.next = addr + size
        return addr


class PortConfigSpace:
    """PCI configuration space through x86's ports 0xCF8 (address) and
    0xCFC (data), bus 0."""

    def __init__(self, qtest: QtestLink):
        self.qtest = qtest

    def read32(self, devfn: int, reg: int) -> int:
        self.qtest.outl(_CFG_ADDR, 0x80000000 | (devfn << 8) | (reg & 0xFC))
        return self.qtest.inl(_CFG_DATA)

    def write32(self, devfn: int, reg: int, value: int) -> None:
        self.qtest.outl(_CFG_ADDR, 0x80000000 | (devfn << 8) | (reg & 0xFC))
        self.qtest.outl(_CFG_DATA, value)

    def __str__(self) -> str:
        return "ports 0xcf8/0xcfc"


class EcamConfigSpace:
    """PCI Express configuration space mapped in memory (ECAM), bus 0:
    function ``devfn``'s 4 KiB start at ``base + devfn * 4096``."""

    def __init__(self, qtest: QtestLink, base: int):
        self.qtest = qtest
        self.base = base

    def read32(self, devfn: int, reg: int) -> int:
        return self.qtest.read(self.base + (devfn << 12) + (reg & 0xFFC), 4)

    def write32(self, devfn: int, reg: int, value: int) -> None:
        self.qtest.write(self.base + (devfn << 12) + (reg & 0xFFC), 4, value)

    def __str__(self) -> str:
        return f"ECAM at 0x{self.base:x}"


ConfigSpace = Union[PortConfigSpace, EcamConfigSpace]


def config_space(qtest: QtestLink, platform: Platform) -> ConfigSpace:
    """How this VM's PCI configuration space is reached.

    On ``virt`` the ECAM window moves (high memory on or off), so each
    candidate is probed for the host bridge at 00.0.
    """
    if not platform.ecam_bases:
        return PortConfigSpace(qtest)
    for base in platform.ecam_bases:
        vendor = qtest.read(base, 4) & 0xFFFF
        if vendor not in (0, 0xFFFF):
            return EcamConfigSpace(qtest, base)
    raise VirtioPciError(
        "no PCI host bridge in any ECAM window of the "
        f"{platform.machine} machine (tried "
        f"{', '.join(hex(b) for b in platform.ecam_bases)})")


@dataclass
class PciFunction:
    """One PCI function on bus 0."""

    space: ConfigSpace
    devfn: int

    def read32(self, reg: int) -> int:
        return self.space.read32(self.devfn, reg)

    def read(self, reg: int, size: int) -> int:
        value = self.read32(reg & ~3) >> (8 * (reg & 3))
        return value & ((1 << (8 * size)) - 1)

    def write32(self, reg: int, value: int) -> None:
        self.space.write32(self.devfn, reg, value)

    def write16(self, reg: int, value: int) -> None:
        old = self.read32(reg & ~3)
        shift = 8 * (reg & 2)
        self.write32(reg & ~3, (old & ~(0xFFFF << shift)) | (value << shift))

    @property
    def ids(self) -> Tuple[int, int]:
        word = self.read32(0)
        return word & 0xFFFF, word >> 16


def find_function(space: ConfigSpace, vendor: int,
                  device: int) -> PciFunction:
    """The first function on bus 0 with these ids.

    :raise VirtioPciError: none found (lists what was found instead).
    """
    seen = []
    for slot in range(32):
        func = PciFunction(space, slot << 3)
        ven, dev = func.ids
        if ven in (0xFFFF, 0):
            continue
        if (ven, dev) == (vendor, device):
            return func
        seen.append(f"{slot:02x}.0={ven:04x}:{dev:04x}")
    raise VirtioPciError(f"no PCI function {vendor:04x}:{device:04x} on bus "
                         f"0 ({space}); found {', '.join(seen)}")


@dataclass(frozen=True)
class MsixVector:
    """One MSI-X table entry as the test driver programmed it.

    The message address is ordinary guest RAM, as QEMU's libqos does: an
    interrupt QEMU delivers on this vector is a 4-byte write of ``data``
    there, which the test reads back (and clears).
    """

    index: int
    addr: int
    data: int


@dataclass
class VirtQueue:
    """A split virtqueue laid out in guest memory by the test driver."""

    index: int
    size: int
    desc: int
    avail: int
    used: int
    notify_addr: int
    #: the device names guest byte ``g`` as ``g + dma_offset``: the test
    #: mapped guest memory there in a vIOMMU (0: no translation)
    dma_offset: int = 0


class VirtioPciDevice:
    """Bring a modern virtio-pci device up from the test.

    :param qtest: the VM's qtest link.
    :param func: the PCI function.
    :param bar_addr: guest-physical address to give the modern BAR (in the
        platform's MMIO window, clear of RAM: ``Platform.bar_base``).
    """

    def __init__(self, qtest: QtestLink, func: PciFunction, bar_addr: int):
        self.qtest = qtest
        self.func = func
        self.bar_addr = bar_addr
        self.caps: Dict[int, Tuple[int, int, int]] = {}
        self.notify_mult = 0
        self.queues: List[VirtQueue] = []
        self.features = 0
        #: MSI-X vectors when enabled (vector 0: configuration, 1 + i: queue
        #: i); empty when the device interrupts through INTx and the ISR.
        self.vectors: List[MsixVector] = []
        self._msix_table = 0
        #: what the device adds to a guest address to name it: the offset
        #: of a vIOMMU mapping the test set up (:mod:`.iommu`), else 0
        self.dma_offset = 0

    # --- configuration space ---------------------------------------------
    def _walk_caps(self) -> None:
        if not self.func.read(_PCI_STATUS, 2) & 0x10:
            raise VirtioPciError("device has no PCI capability list")
        ptr = self.func.read(_PCI_CAP_PTR, 1) & 0xFC
        hops = 0
        while ptr and hops < 48:
            cap_id = self.func.read(ptr, 1)
            nxt = self.func.read(ptr + 1, 1) & 0xFC
            if cap_id == _CAP_VENDOR:
                cfg_type = self.func.read(ptr + 3, 1)
                bar = self.func.read(ptr + 4, 1)
                offset = self.func.read32(ptr + 8)
                length = self.func.read32(ptr + 12)
                if cfg_type not in self.caps:
                    self.caps[cfg_type] = (bar, offset, length)
                if cfg_type == _NOTIFY:
                    self.notify_mult = self.func.read32(ptr + 16)
            ptr, hops = nxt, hops + 1
        for need in (_COMMON, _NOTIFY, _ISR, _DEVICE):
            if need not in self.caps:
                raise VirtioPciError(f"virtio capability type {need} missing "
                                     f"(found {sorted(self.caps)})")

    def _find_cap(self, cap_id: int) -> Optional[int]:
        """Offset of the first standard capability ``cap_id``, if any."""
        ptr = self.func.read(_PCI_CAP_PTR, 1) & 0xFC
        hops = 0
        while ptr and hops < 48:
            if self.func.read(ptr, 1) == cap_id:
                return ptr
            ptr, hops = self.func.read(ptr + 1, 1) & 0xFC, hops + 1
        return None

    def _map_bar(self, bar: Optional[int] = None,
                 addr: Optional[int] = None) -> None:
        """Place a memory BAR (default: the modern virtio BAR) and enable
        memory decoding and bus mastering."""
        bar = self.caps[_COMMON][0] if bar is None else bar
        addr = self.bar_addr if addr is None else addr
        reg = 0x10 + 4 * bar
        low = self.func.read32(reg)
        self.func.write32(reg, addr & 0xFFFFFFF0)
        if low & 0x6 == 0x4:  # 64-bit BAR: clear the high half
            self.func.write32(reg + 4, addr >> 32)
        cmd = self.func.read(_PCI_COMMAND, 2)
        self.func.write16(_PCI_COMMAND, cmd | 0x6)  # memory + bus master

    def enable_msix(self, alloc: "GuestAllocator") -> List[MsixVector]:
        """Enable MSI-X with every table entry unmasked, each writing its
        own marker to its own word of guest RAM.

        :raise VirtioPciError: the function has no MSI-X capability (QEMU's
            ``vectors=0``).
        """
        cap = self._find_cap(_CAP_MSIX)
        if cap is None:
            raise VirtioPciError("the device has no MSI-X capability")
        ctrl = self.func.read(cap + 2, 2)
        count = (ctrl & 0x7FF) + 1
        where = self.func.read32(cap + 4)
        bar_addr = self.bar_addr + _MSIX_BAR_OFFSET
        if where & 7 != self.caps[_COMMON][0]:
            self._map_bar(where & 7, bar_addr)
        else:
            bar_addr = self.bar_addr
        table = bar_addr + (where & ~7)
        self._msix_table = table
        vectors = []
        for index in range(count):
            target = alloc.alloc(4, 4)
            self.qtest.write(target, 4, 0)
            vector = MsixVector(index, target, 0x5EC70000 | index)
            entry = table + 16 * index
            self.qtest.write(entry, 4, target & 0xFFFFFFFF)
            self.qtest.write(entry + 4, 4, target >> 32)
            self.qtest.write(entry + 8, 4, vector.data)
            self.qtest.write(entry + 12, 4, 0)  # unmasked
            vectors.append(vector)
        # MSI-X enable (bit 15), function mask (bit 14) clear
        old = self.func.read32(cap)
        self.func.write32(cap, (old & ~(0x4000 << 16)) | (0x8000 << 16))
        self.vectors = vectors
        return vectors

    def msix_mask(self, vector: MsixVector, masked: bool) -> None:
        """Mask or unmask one MSI-X table entry, as a guest does around its
        interrupt handling; QEMU moves the queue's interrupt to an internal
        eventfd while masked (``guest_notifier_mask``) and back on unmask,
        then looks for an interrupt that arrived meanwhile."""
        self.qtest.write(self._msix_table + 16 * vector.index + 12, 4,
                         int(masked))

    def msix_fired(self, vector: MsixVector) -> bool:
        """Whether QEMU delivered ``vector`` since the last call (its marker
        is in guest RAM); the marker is cleared for the next one."""
        if self.qtest.read(vector.addr, 4) != vector.data:
            return False
        self.qtest.write(vector.addr, 4, 0)
        return True

    def isr_status(self) -> int:
        """Read (and so clear) the ISR status, as an INTx handler does:
        bit 0 is a queue interrupt, bit 1 a configuration change."""
        return self.qtest.read(self._cap_addr(_ISR), 1)

    def queue_vector(self, index: int) -> Optional[MsixVector]:
        """The MSI-X vector of queue ``index`` (None under INTx)."""
        return self.vectors[1 + index] if len(self.vectors) > 1 + index \
            else None

    def _cap_addr(self, cfg_type: int) -> int:
        bar, offset, _ = self.caps[cfg_type]
        if bar != self.caps[_COMMON][0]:
            raise VirtioPciError("virtio capabilities in different BARs are "
                                 "not supported by this driver")
        return self.bar_addr + offset

    # --- common configuration --------------------------------------------
    def _common(self, off: int, size: int, value: Optional[int] = None) -> int:
        addr = self._cap_addr(_COMMON) + off
        if value is None:
            return self.qtest.read(addr, size)
        self.qtest.write(addr, size, value)
        return value

    @property
    def status(self) -> int:
        return self._common(20, 1)

    def set_status(self, value: int) -> None:
        self._common(20, 1, value)

    def device_features(self) -> int:
        self._common(0, 4, 0)
        low = self._common(4, 4)
        self._common(0, 4, 1)
        return low | (self._common(4, 4) << 32)

    def config_read(self, offset: int, size: int) -> int:
        """Read the device-specific configuration space."""
        return self.qtest.read(self._cap_addr(_DEVICE) + offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write the device-specific configuration space (the few fields a
        driver may write, such as virtio-blk's writeback)."""
        self.qtest.write(self._cap_addr(_DEVICE) + offset, size, value)

    @property
    def packed(self) -> bool:
        """Whether VIRTIO_F_RING_PACKED was negotiated."""
        return bool(self.features & VirtioFeature.RING_PACKED)

    def setup(self, alloc: GuestAllocator, want_features: int = 0,
              queues: Optional[int] = None, queue_size: int = 256,
              msix: bool = False) -> None:
        """Reset, negotiate, lay out ``queues`` rings and set DRIVER_OK.

        :param want_features: features to accept on top of VERSION_1, if
            the device offers them.
        :param queues: how many queues to set up (default: all).
        :param msix: enable MSI-X (vector 0 for configuration changes,
            vector 1 + i for queue i) before DRIVER_OK, as Linux does;
            otherwise the device interrupts through INTx and the ISR.
        """
        self._walk_caps()
        self._map_bar()
        self.set_status(0)
        self.set_status(ACKNOWLEDGE)
        self.set_status(ACKNOWLEDGE | DRIVER)
        offered = self.device_features()
        if not offered & VirtioFeature.VERSION_1:
            raise VirtioPciError(f"device does not offer VERSION_1 "
                                 f"(features 0x{offered:x})")
        self.features = offered & (want_features | VirtioFeature.VERSION_1)
        for sel in (0, 1):
            self._common(8, 4, sel)
            self._common(12, 4, (self.features >> (32 * sel)) & 0xFFFFFFFF)
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        if not self.status & FEATURES_OK:
            raise VirtioPciError("device refused FEATURES_OK for features "
                                 f"0x{self.features:x}")
        if msix:
            self.enable_msix(alloc)
            self._set_vector(16, 0, "configuration")
        total = self._common(18, 2)
        count = total if queues is None else min(queues, total)
        for index in range(count):
            self._setup_queue(index, alloc, queue_size)
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)

    def _setup_queue(self, index: int, alloc: GuestAllocator,
                     queue_size: int) -> None:
        self._common(22, 2, index)
        size = min(self._common(24, 2), queue_size)
        if size == 0:
            raise VirtioPciError(f"queue {index} has size 0")
        self._common(24, 2, size)
        desc_len, avail_len, used_len = split_sizes(size)
        desc = alloc.alloc(desc_len)
        if self.packed:  # driver and device event suppression areas
            avail_len, used_len = 4, 4
        avail = alloc.alloc(avail_len, 4)
        used = alloc.alloc(used_len, 4)
        for addr, length in ((desc, desc_len), (avail, avail_len),
                             (used, used_len)):
            self.qtest.memset(addr, length, 0)
        self._queue_addresses(desc, avail, used)
        vector = self.queue_vector(index)
        if vector is not None:
            self._set_vector(26, vector.index, f"queue {index}")
        notify_off = self._common(30, 2)
        self._common(28, 2, 1)  # queue_enable
        notify = self._cap_addr(_NOTIFY) + notify_off * self.notify_mult
        self.queues.append(VirtQueue(index, size, desc, avail, used, notify,
                                     self.dma_offset))

    def _queue_addresses(self, desc: int, avail: int, used: int) -> None:
        """The selected queue's three areas, as the device names them."""
        for off, addr in ((32, desc), (40, avail), (48, used)):
            addr += self.dma_offset
            self._common(off, 4, addr & 0xFFFFFFFF)
            self._common(off + 4, 4, addr >> 32)

    def _set_vector(self, offset: int, vector: int, what: str) -> None:
        """Write an MSI-X vector register and check that the device took it
        (it reads back NO_VECTOR when it could not allocate it)."""
        self._common(offset, 2, vector)
        if self._common(offset, 2) != vector:
            raise VirtioPciError(f"the device refused MSI-X vector {vector} "
                                 f"for {what}")

    def reset_queue(self, index: int) -> None:
        """Reset queue ``index`` alone (VIRTIO_F_RING_RESET, virtio 1.2
        4.1.4.3.2), then give it its rings again, zeroed, and enable it.

        Done as Linux's ``vp_modern_set_queue_reset`` does it and QEMU
        answers it: write 1 to ``queue_reset``, and the reset is over when
        ``queue_reset`` and ``queue_enable`` read 0 (QEMU resets the queue
        within the write).

        :raise VirtioPciError: RING_RESET is not negotiated, or the device
            did not reset the queue.
        """
        if not self.features & VirtioFeature.RING_RESET:
            raise VirtioPciError("queue reset needs VIRTIO_F_RING_RESET")
        queue = self.queues[index]
        self._common(22, 2, index)
        self._common(58, 2, 1)  # queue_reset
        if self._common(58, 2) or self._common(28, 2):
            raise VirtioPciError(f"queue {index} still reset or enabled "
                                 "after the reset")
        for addr, length in zip((queue.desc, queue.avail, queue.used),
                                split_sizes(queue.size)):
            self.qtest.memset(addr, length, 0)
        self._common(24, 2, queue.size)
        self._queue_addresses(queue.desc, queue.avail, queue.used)
        self._common(28, 2, 1)  # queue_enable: the queue restarts

    def reset(self) -> None:
        self.set_status(0)

