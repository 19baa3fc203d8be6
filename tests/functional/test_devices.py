"""
read-guest-mem for vhost-user devices other than virtio-net.

These devices read their configuration space from the back-end
(GET_CONFIG, with the CONFIG protocol feature), so the back-end serves a
valid one, and the test checks that the guest -- the test's own virtio-pci
driver -- sees exactly those values: the configuration really travelled
from the back-end through QEMU.
"""

import struct

from avocado_vhost.test import VhostUserTest
from avocado_vhost.vhost_user import (BackendConfig, ProtocolFeature,
                                      VirtioFeature)

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
BLK_CONFIG = struct.pack("<QIIHBBIBBHIBBH", BLK_CAPACITY, 0, 126, 0, 0, 0,
                         BLK_SIZE, 0, 0, 0, 0, 0, 0, BLK_QUEUES)
BLK_CONFIG += bytes(256 - len(BLK_CONFIG))

# virtio-gpio: ngpio, padding, gpio_names_size.
GPIO_LINES = 32
GPIO_CONFIG = struct.pack("<HHI", GPIO_LINES, 0, 0)


class Devices(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,vhost-user,read-guest-mem,devices
    """

    def run_device(self, device, config, rings, device_opts=(),
                   want_features=0):
        self.require_device(device)
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path, device=device,
                          device_opts=list(device_opts))
        vm.launch()
        self.assertIn("GET_CONFIG", backend.trace.received(),
                      f"{device} never read its configuration")
        driver = vm.drive_device(features=want_features, queues=rings)
        backend.wait_rings_started(rings, timeout=self.scaled(10))
        self.assert_guest_memory_agrees(vm, backend)
        self.check_backends(backend)
        return driver

    def test_gpio(self):
        """vhost-user-gpio-pci: the guest sees the back-end's line count."""
        config = BackendConfig(features=BASE_FEATURES,
                               protocol_features=DEVICE_PROTOCOL,
                               config=GPIO_CONFIG, max_rings=2)
        driver = self.run_device("vhost-user-gpio-pci", config, rings=2)
        self.assertEqual(driver.config_read(0, 2), GPIO_LINES)

    def test_blk(self):
        """vhost-user-blk-pci: capacity, block size and queues arrive."""
        config = BackendConfig(
            features=BASE_FEATURES | BLK_F_SEG_MAX | BLK_F_BLK_SIZE,
            protocol_features=DEVICE_PROTOCOL, config=BLK_CONFIG,
            queue_num=BLK_QUEUES, max_rings=BLK_QUEUES)
        driver = self.run_device("vhost-user-blk-pci", config,
                                 rings=BLK_QUEUES,
                                 device_opts=[f"num-queues={BLK_QUEUES}"],
                                 want_features=BLK_F_BLK_SIZE)
        capacity = driver.config_read(0, 4) | driver.config_read(4, 4) << 32
        self.assertEqual(capacity, BLK_CAPACITY)
        self.assertEqual(driver.config_read(20, 4), BLK_SIZE)
        self.assertEqual(driver.config_read(34, 2), BLK_QUEUES)

    def test_scmi(self):
        """vhost-user-scmi-pci (QEMU 8.1+): cancelled where absent."""
        config = BackendConfig(features=BASE_FEATURES,
                               protocol_features=DEVICE_PROTOCOL,
                               max_rings=2)
        self.run_device("vhost-user-scmi-pci", config, rings=2)
