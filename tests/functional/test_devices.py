"""
read-guest-mem for vhost-user devices other than virtio-net.

These devices read their configuration space from the back-end
(GET_CONFIG, with the CONFIG protocol feature), so the back-end serves a
valid one, and the test checks that the guest -- the test's own virtio-pci
driver -- sees exactly those values: the configuration really travelled
from the back-end through QEMU.
"""

import struct

from avocado_vhost.test import VhostUserTest, main
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
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,read-guest-mem,devices
    """

    def run_device(self, device, config, rings, device_opts=(),
                   want_features=0):
        self.require_device(device)
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path, device=device,
                          device_opts=list(device_opts))
        vm.launch()
        # QEMU 7.2 fetches the configuration when the device is realized;
        # QEMU 10.0's vhost-user-base devices (gpio) fetch it only when the
        # guest reads it.  Both are right: what matters is that the guest's
        # read is answered from the back-end, checked in config_from_backend.
        self.realize_fetch = "GET_CONFIG" in backend.trace.received()
        self.log.info("GET_CONFIG before the guest read the configuration: "
                      "%s (QEMU %s)", self.realize_fetch, self.caps.version)
        driver = vm.drive_device(features=want_features, queues=rings)
        backend.wait_rings_started(rings, timeout=self.scaled(10))
        self.assert_guest_memory_agrees(vm, backend)
        self.check_backends(backend)
        self.backend = backend
        return driver

    def config_from_backend(self, driver, offset, size):
        """Read the device configuration as the guest does; the read must
        reach the back-end (GET_CONFIG), now or when QEMU realized the
        device."""
        value = driver.config_read(offset, size)
        self.assertIn("GET_CONFIG", self.backend.trace.received(),
                      "the guest read the device configuration, but QEMU "
                      "never asked the back-end for it (no GET_CONFIG): the "
                      "value did not come from the back-end")
        return value

    def test_gpio(self):
        """vhost-user-gpio-pci: the guest sees the back-end's line count."""
        config = BackendConfig(features=BASE_FEATURES,
                               protocol_features=DEVICE_PROTOCOL,
                               config=GPIO_CONFIG, max_rings=2)
        driver = self.run_device("vhost-user-gpio-pci", config, rings=2)
        self.assertEqual(self.config_from_backend(driver, 0, 2), GPIO_LINES)

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
        capacity = (self.config_from_backend(driver, 0, 4)
                    | self.config_from_backend(driver, 4, 4) << 32)
        self.assertEqual(capacity, BLK_CAPACITY)
        self.assertEqual(driver.config_read(20, 4), BLK_SIZE)
        self.assertEqual(driver.config_read(34, 2), BLK_QUEUES)

    def test_scmi(self):
        """vhost-user-scmi-pci (QEMU 8.1+): an ARM device.

        ``hw/virtio/Kconfig`` makes VHOST_USER_SCMI depend on ARM, so it
        exists in qemu-system-aarch64 only.
        """
        self.require_arch("aarch64")
        config = BackendConfig(features=BASE_FEATURES,
                               protocol_features=DEVICE_PROTOCOL,
                               max_rings=2)
        self.run_device("vhost-user-scmi-pci", config, rings=2)


if __name__ == "__main__":
    main()
