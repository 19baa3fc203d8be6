"""
virtio-mem's guest driver, played by the test over qtest.

virtio-mem hot-plugs memory in blocks: the host sets a requested size,
and the driver asks the device to plug (or unplug) blocks of its region
through one request queue (virtio 1.2, 5.15 "Memory Device").  QEMU
handles the requests itself -- no back-end is involved -- but with
``dynamic-memslots=on`` (8.2+) it maps the region in memslots, each only
while it has plugged blocks: every memslot that appears or goes changes
the guest's memory map, which a vhost-user back-end with memory slots
receives as ADD_MEM_REG and REM_MEM_REG.

:class:`VirtioMem` finds the device, brings it up beside the device under
test (its own BAR and ring memory), and sends requests, each completed by
QEMU within the notification write.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Tuple

from avocado_vhost.peers.qemu.driver import DriverQueue
from avocado_vhost.peers.qemu.platform import Platform
from avocado_vhost.peers.qemu.qtest import QtestLink
from avocado_vhost.peers.qemu.virtio_pci import (VIRTIO_VENDOR, GuestAllocator,
                                                 VirtioPciDevice,
                                                 VirtioPciError, config_space,
                                                 find_function,
                                                 modern_device_id)

__all__ = ["VirtioMem", "MemConfig", "VIRTIO_MEM"]

#: virtio device type of virtio-mem
VIRTIO_MEM = 24
#: VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: the driver does not touch
#: unplugged memory (QEMU offers it on x86 and insists on it)
F_UNPLUGGED_INACCESSIBLE = 1 << 1
REQ_PLUG, REQ_UNPLUG, REQ_UNPLUG_ALL = 0, 1, 2
RESPONSES = {0: "ACK", 1: "NACK", 2: "BUSY", 3: "ERROR"}
#: struct virtio_mem_req: type, padding, then addr and nb_blocks
_REQ = struct.Struct("<H6xQH6x")
_RESP_LEN = 16  # struct virtio_mem_resp is 10 bytes


@dataclass(frozen=True)
class MemConfig:
    """struct virtio_mem_config, as read now."""

    block_size: int
    addr: int
    region_size: int
    plugged_size: int
    requested_size: int


class VirtioMem:
    """The test's driver of one virtio-mem-pci device.

    :param bar_addr: where its BAR goes (clear of the other device's).
    :param rings, buffers: guest RAM windows (addresses) for its ring and
        its request buffers.
    """

    def __init__(self, qtest: QtestLink, platform: Platform, bar_addr: int,
                 rings: Tuple[int, int], buffers: Tuple[int, int]):
        func = find_function(config_space(qtest, platform), VIRTIO_VENDOR,
                             modern_device_id(VIRTIO_MEM))
        self.device = VirtioPciDevice(qtest, func, bar_addr)
        self.device.setup(GuestAllocator(*rings), F_UNPLUGGED_INACCESSIBLE,
                          queues=1, queue_size=16)
        self.queue = DriverQueue(qtest, self.device.queues[0],
                                 GuestAllocator(*buffers))

    def config(self) -> MemConfig:
        read = self.device.config_read
        return MemConfig(read(0, 8), read(16, 8), read(24, 8), read(40, 8),
                         read(48, 8))

    def _request(self, kind: int, addr: int = 0, blocks: int = 0) -> str:
        """Send one request; QEMU's answer (ACK, NACK, BUSY, ERROR)."""
        descs = self.queue.post_chain([_REQ.pack(kind, addr, blocks)],
                                      [_RESP_LEN])
        done = self.queue.reap()
        if [head for head, _ in done] != [descs[0]]:
            raise VirtioPciError(f"virtio-mem did not complete its request "
                                 f"within the notification (used {done})")
        answer = self.queue.qtest.read(self.queue.buffer_addr(descs[1]), 2)
        return RESPONSES.get(answer, f"response type {answer}")

    def plug(self, addr: int, blocks: int) -> str:
        return self._request(REQ_PLUG, addr, blocks)

    def unplug(self, addr: int, blocks: int) -> str:
        return self._request(REQ_UNPLUG, addr, blocks)

    def unplug_all(self) -> str:
        return self._request(REQ_UNPLUG_ALL)
