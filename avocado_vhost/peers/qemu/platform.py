"""
What differs between the targets the suite drives without a guest OS.

The test plays the guest driver over qtest, so it must know, per target,
where guest RAM starts, how PCI configuration space is reached (x86's
0xCF8/0xCFC ports, or the ``virt`` machine's memory-mapped ECAM), where a
BAR may be placed, and a firmware image that only halts the CPU.  Everything
that lays out guest memory asks :class:`Platform` (``ram(offset)``) instead
of writing guest addresses down: on ``virt``, RAM starts at 1 GiB.

=========  ============  ===========  ==================  ====================
target     machine       RAM base     PCI config space    BARs placed at
=========  ============  ===========  ==================  ====================
x86_64     ``pc``        0            ports 0xCF8/0xCFC   0xFE000000 (PCI hole)
aarch64    ``virt``      0x40000000   ECAM (probed: low   0x10000000 (32-bit
                                      0x3F000000 or high  MMIO window)
                                      0x4010000000)
=========  ============  ===========  ==================  ====================
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import List, Tuple

__all__ = ["Platform", "PLATFORMS", "platform_for",
           "SCRATCH_WINDOW", "RING_WINDOW", "BUFFER_WINDOW", "IOMMU_WINDOW"]

#: The guest RAM layout every test uses, in offsets from the RAM base:
#: pages a scenario writes and reads back itself (migration's dirty pages),
#: where the test driver lays out its rings, where the data-path drivers
#: allocate buffers, and where a vIOMMU's tables go (:mod:`.iommu`).
#: Nothing else in guest RAM is the test's.
SCRATCH_WINDOW = (0x100000, 0x400000)
RING_WINDOW = (0x400000, 0x800000)
BUFFER_WINDOW = (0x800000, 0x4000000)
IOMMU_WINDOW = (0x4000000, 0x4400000)


@dataclass(frozen=True)
class Platform:
    """One target's facts.

    :param arch: ``x86_64`` or ``aarch64``.
    :param machine: the machine type (``-machine``).
    :param cpu: ``-cpu`` to pass, if the default will not do (virt's default
        CPU is a 32-bit Cortex-A15).
    :param ram_base: guest-physical address of the first byte of RAM.
    :param bar_base: where the test driver places memory BARs.
    :param ecam_bases: candidate ECAM windows, probed in order; empty for
        port-I/O configuration access.
    :param firmware_size: size of the halting firmware image.
    :param halt_offset: where in that image the CPU starts.
    :param halt_code: machine code that halts forever.
    :param iommu_machine: the machine with a vIOMMU in front of PCI
        (``-machine``): q35 (intel-iommu comes as a device, below) on
        x86_64, ``virt,iommu=smmuv3`` on aarch64.
    :param iommu_args: what else that takes on the command line, ahead of
        the devices it translates for.
    """

    arch: str
    machine: str
    cpu: str
    ram_base: int
    bar_base: int
    ecam_bases: Tuple[int, ...]
    firmware_size: int
    halt_offset: int
    halt_code: bytes
    iommu_machine: str
    iommu_args: Tuple[str, ...]

    def ram(self, offset: int) -> int:
        """Guest-physical address ``offset`` bytes into RAM."""
        return self.ram_base + offset

    def window(self, window: Tuple[int, int]) -> Tuple[int, int]:
        """A RAM window (offsets) as guest-physical addresses."""
        return self.ram(window[0]), self.ram(window[1])

    def machine_args(self, memdev: str, iommu: bool = False) -> List[str]:
        machine = self.iommu_machine if iommu else self.machine
        args = ["-machine", f"{machine},memory-backend={memdev}"]
        args += ["-cpu", self.cpu] if self.cpu else []
        return args + (list(self.iommu_args) if iommu else [])

    def halting_firmware(self, directory: str) -> str:
        """Write a firmware image that halts the CPU forever; its path.

        Nothing then touches the devices: the test drives them over qtest,
        so vhost-user starts tens of milliseconds after launch instead of
        after a firmware's own device probing.
        """
        image = bytearray(b"\xff" * self.firmware_size)
        image[self.halt_offset:self.halt_offset + len(self.halt_code)] = \
            self.halt_code
        path = os.path.join(directory, f"halt-{self.arch}.bin")
        with open(path, "wb") as out:
            out.write(image)
        return path


PLATFORMS = {
    # The CPU starts at 0xFFFF0, offset 0xFFF0 of a 64 KiB BIOS: hlt; jmp $-1
    "x86_64": Platform(
        arch="x86_64", machine="pc", cpu="", ram_base=0,
        bar_base=0xFE000000, ecam_bases=(), firmware_size=0x10000,
        halt_offset=0xFFF0, halt_code=b"\xf4\xeb\xfd",
        # without interrupt remapping: MSI stays as it is, and the test's
        # driver programs DMA remapping alone
        iommu_machine="q35",
        iommu_args=("-device", "intel-iommu,intremap=off")),
    # virt boots from flash at 0: wfi; b .-4
    "aarch64": Platform(
        arch="aarch64", machine="virt", cpu="cortex-a57",
        ram_base=0x40000000, bar_base=0x10000000,
        ecam_bases=(0x3F000000, 0x4010000000), firmware_size=0x1000,
        halt_offset=0, halt_code=struct.pack("<II", 0xD503207F, 0x17FFFFFF),
        iommu_machine="virt,iommu=smmuv3", iommu_args=()),
}


def platform_for(arch: str) -> Platform:
    """The :class:`Platform` of ``arch`` (as :func:`binary.probe` names it)."""
    try:
        return PLATFORMS[arch]
    except KeyError:
        raise ValueError(f"no platform for target '{arch}' (known: "
                         f"{', '.join(PLATFORMS)})") from None
