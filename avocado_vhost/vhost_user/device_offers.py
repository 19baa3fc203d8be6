"""
What the back-end offers for the vhost-user devices other than virtio-net
that the suite drives: their features, protocol features and the
configuration space they serve with GET_CONFIG (the CONFIG protocol
feature), shared by the tests and ``python -m avocado_vhost serve
--device``.
"""

from __future__ import annotations

import struct

from ..virtio.features import VirtioFeature
from .config import BackendConfig
from .message import ProtocolFeature

__all__ = ["device_config", "DEVICES", "DEVICE_PROTOCOL", "BASE_FEATURES",
           "BLK_CAPACITY", "BLK_SIZE", "BLK_QUEUES", "BLK_F_SEG_MAX",
           "BLK_F_BLK_SIZE", "BLK_F_CONFIG_WCE", "BLK_WCE_OFFSET",
           "BLK_CONFIG", "GPIO_LINES", "GPIO_CONFIG",
           "FS_QUEUES", "FS_OPTIONS"]

DEVICE_PROTOCOL = int(ProtocolFeature.CONFIG | ProtocolFeature.MQ
                      | ProtocolFeature.REPLY_ACK | ProtocolFeature.LOG_SHMFD)
BASE_FEATURES = int(VirtioFeature.VERSION_1 | VirtioFeature.PROTOCOL_FEATURES)

# virtio-blk: capacity (512-byte sectors), size_max, seg_max, geometry,
# blk_size, topology, writeback, num_queues, discard/write-zeroes limits.
BLK_CAPACITY = 0x12345
BLK_SIZE = 4096
BLK_QUEUES = 1
BLK_F_SEG_MAX = 1 << 2
BLK_F_BLK_SIZE = 1 << 6
#: the guest may switch the cache mode (the writeback byte at offset 32)
BLK_F_CONFIG_WCE = 1 << 11
BLK_WCE_OFFSET = 32
BLK_CONFIG = struct.pack("<QIIHBBIBBHIBBH", BLK_CAPACITY, 0, 126, 0, 0, 0,
                         BLK_SIZE, 0, 0, 0, 0, 0, 0, BLK_QUEUES)
BLK_CONFIG += bytes(256 - len(BLK_CONFIG))

# virtio-gpio: ngpio, padding, gpio_names_size.
GPIO_LINES = 32
GPIO_CONFIG = struct.pack("<HHI", GPIO_LINES, 0, 0)

#: virtio-fs: the high-priority queue and one request queue
FS_QUEUES = 2
#: the QEMU device options of a vhost-user-fs device (its tag lives in
#: QEMU, not in the back-end's configuration)
FS_OPTIONS = ["tag=avocado", f"num-request-queues={FS_QUEUES - 1}"]

#: the QEMU device each kind is for
DEVICES = {"gpio": "vhost-user-gpio-pci", "blk": "vhost-user-blk-pci",
           "scmi": "vhost-user-scmi-pci", "fs": "vhost-user-fs-pci"}


def device_config(kind: str) -> BackendConfig:
    """What the back-end offers as a ``gpio``, ``blk``, ``fs`` or ``scmi``
    device."""
    if kind == "gpio":
        return BackendConfig(features=BASE_FEATURES,
                             protocol_features=DEVICE_PROTOCOL,
                             config=GPIO_CONFIG, max_rings=2)
    if kind == "blk":
        return BackendConfig(
            features=BASE_FEATURES | BLK_F_SEG_MAX | BLK_F_BLK_SIZE,
            protocol_features=DEVICE_PROTOCOL, config=BLK_CONFIG,
            queue_num=BLK_QUEUES, max_rings=BLK_QUEUES)
    if kind == "fs":
        return BackendConfig(features=BASE_FEATURES,
                             protocol_features=DEVICE_PROTOCOL
                             & ~ProtocolFeature.CONFIG,
                             max_rings=FS_QUEUES)
    if kind == "scmi":
        return BackendConfig(features=BASE_FEATURES,
                             protocol_features=DEVICE_PROTOCOL, max_rings=2)
    raise ValueError(f"no device kind {kind!r} (kinds: {', '.join(DEVICES)})")
