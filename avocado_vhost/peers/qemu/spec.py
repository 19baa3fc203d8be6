"""
What one VM is, as data: :class:`VMOptions`, what a test chooses, and
:class:`VMSpec`, those and what the run gives (binary, work dir,
platform), which builds the QEMU command line -- memory backend and size,
vhost-user socket and mode, device, queues, firmware, incoming migration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, TypedDict

from avocado_vhost.peers.qemu.membackend import DEFAULT_MEM_MB, MEM_BACKENDS
from avocado_vhost.peers.qemu.platform import PLATFORMS, Platform

__all__ = ["VMSpec", "VMOptions", "DEVICE_TYPES", "TRANSITIONAL",
           "default_tmpdir"]

#: Devices that are transitional (legacy + modern) unless told otherwise;
#: modern-only ones refuse ``disable-legacy``.
TRANSITIONAL = frozenset({"virtio-net-pci", "vhost-user-blk-pci",
                          "vhost-user-scsi-pci"})

#: device -> virtio device type (for the modern PCI device id)
DEVICE_TYPES = {
    "virtio-net-pci": 1,
    "virtio-crypto-pci": 20,
    "vhost-user-blk-pci": 2,
    "vhost-user-fs-pci": 26,
    "vhost-user-gpio-pci": 41,
    "vhost-user-scmi-pci": 32,
}


def default_tmpdir() -> str:
    """Where private temp dirs (sockets, memory files) go: short enough for
    108-byte UNIX socket paths.  ``AVOCADO_VHOST_TMPDIR`` moves it."""
    return os.environ.get("AVOCADO_VHOST_TMPDIR", "/tmp")


class VMOptions(TypedDict, total=False):
    """What a test chooses of a VM -- the keyword arguments of
    ``make_vm`` and of every helper that makes VMs (the scenarios, the
    guest, a standalone VM); the rest of a :class:`VMSpec` (binary, work
    dir, platform) comes from the run.  Each key is the VMSpec field of
    the same name."""

    accel: str
    mem_backend: str
    mem_mb: int
    mem_slots: int
    maxmem_mb: int
    vhost_server: bool
    reconnect: Optional[int]
    queues: int
    device: str
    device_opts: List[str]
    firmware: bool
    bios: Optional[str]
    incoming: Optional[str]
    extra: List[str]
    iommu: bool


@dataclass
class VMSpec:
    """What one VM is; :meth:`args` turns it into a QEMU command line.

    :param vhost_socket: path of the vhost-user UNIX socket.
    :param vhost_server: QEMU listens (``server=on``) and the back-end
        connects; otherwise the back-end listens and QEMU connects.
    :param reconnect: client-mode reconnect delay in seconds (``reconnect=``)
        or, with ``reconnect_ms``, in milliseconds.
    :param firmware: boot SeaBIOS + iPXE (realism) instead of the halting
        BIOS at ``bios`` (x86_64 only).
    :param platform: the target's facts (machine, RAM base, firmware).
    """

    name: str
    binary: str
    workdir: str
    vhost_socket: str
    accel: str = "tcg"
    mem_backend: str = "memfd"
    mem_mb: int = DEFAULT_MEM_MB
    #: DIMM slots and the RAM ceiling for memory hot-plug (0: none)
    mem_slots: int = 0
    maxmem_mb: int = 0
    mem_path: Optional[str] = None
    vhost_server: bool = False
    reconnect: Optional[int] = None
    reconnect_ms: bool = False
    queues: int = 1
    device: str = "virtio-net-pci"
    device_opts: List[str] = field(default_factory=list)
    firmware: bool = False
    bios: Optional[str] = None
    incoming: Optional[str] = None
    extra: List[str] = field(default_factory=list)
    platform: Platform = PLATFORMS["x86_64"]
    #: a vIOMMU in front of PCI (the platform's: intel-iommu on q35,
    #: SMMUv3 on virt); the device needs ``iommu_platform=on`` as well
    iommu: bool = False

    def memory_args(self) -> List[str]:
        qom = MEM_BACKENDS[self.mem_backend]
        opts = [qom, "id=mem0", f"size={self.mem_mb}M", "share=on"]
        if self.mem_backend in ("memfile", "hugetlbfs"):
            opts.append(f"mem-path={self.mem_path or self.workdir}")
        size = f"{self.mem_mb}M"
        if self.mem_slots:
            size += f",slots={self.mem_slots},maxmem={self.maxmem_mb}M"
        return (["-m", size, "-object", ",".join(opts)]
                + self.platform.machine_args("mem0", self.iommu))

    def chardev_args(self) -> List[str]:
        opts = ["socket", "id=vu0", f"path={self.vhost_socket}"]
        if self.vhost_server:
            opts.append("server=on")
        if self.reconnect is not None:
            opts.append(f"reconnect-ms={self.reconnect}" if self.reconnect_ms
                        else f"reconnect={self.reconnect}")
        return ["-chardev", ",".join(opts)]

    def device_args(self) -> List[str]:
        rom = [] if self.firmware else ["romfile="]
        if self.device == "virtio-net-pci":
            net = ["vhost-user", "id=net0", "chardev=vu0", "vhostforce=on"]
            dev = ["virtio-net-pci", "netdev=net0"]
            if not self.firmware:
                dev.append("disable-legacy=on")
            if self.queues > 1:
                net.append(f"queues={self.queues}")
                dev.append("mq=on")
                if not any(o.startswith("vectors=") for o in self.device_opts):
                    dev.append(f"vectors={2 * self.queues + 2}")
            return ["-netdev", ",".join(net),
                    "-device", ",".join(dev + rom + self.device_opts)]
        if self.device == "virtio-crypto-pci":
            # the back-end is a cryptodev object on the chardev
            return ["-object", "cryptodev-vhost-user,id=crypto0,chardev=vu0",
                    "-device", ",".join(["virtio-crypto-pci",
                                         "cryptodev=crypto0"]
                                        + rom + self.device_opts)]
        dev = [self.device, "chardev=vu0"]
        if not self.firmware and self.device in TRANSITIONAL:
            dev.append("disable-legacy=on")  # the test driver is modern-only
        return ["-device", ",".join(dev + rom + self.device_opts)]

    def args(self) -> List[str]:
        out = ["-nodefaults", "-accel", self.accel]
        if not self.firmware:
            out += ["-bios",
                    self.bios or self.platform.halting_firmware(self.workdir)]
        out += self.memory_args() + self.chardev_args() + self.device_args()
        if self.incoming:
            out += ["-incoming", self.incoming]
        return out + self.extra
