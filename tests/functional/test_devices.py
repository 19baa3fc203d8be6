"""
read-guest-mem for vhost-user devices other than virtio-net.

These devices read their configuration space from the back-end
(GET_CONFIG, with the CONFIG protocol feature), so the back-end serves a
valid one, and the test checks that the guest -- the test's own virtio-pci
driver -- sees exactly those values: the configuration really travelled
from the back-end through QEMU.
"""

from avocado_vhost.vhost_user.device_offers import (BLK_CAPACITY,
                                                    BLK_F_BLK_SIZE,
                                                    BLK_F_CONFIG_WCE,
                                                    BLK_WCE_OFFSET, BLK_QUEUES,
                                                    BLK_SIZE, GPIO_LINES,
                                                    device_config)
from avocado_vhost.scenarios.memory import assert_guest_memory_agrees
from avocado_vhost.checks import triage
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import ProtocolFeature, Request


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
        self.realize_fetch = Request.GET_CONFIG in backend.trace.received()
        self.log.info("GET_CONFIG before the guest read the configuration: "
                      "%s (QEMU %s)", self.realize_fetch, self.caps.version)
        driver = vm.drive_device(features=want_features, queues=rings)
        backend.wait_rings_started(rings, timeout=self.scaled(10))
        assert_guest_memory_agrees(self, vm, backend)
        self.check_backends(backend)
        self.backend = backend
        return driver

    def config_from_backend(self, driver, offset, size):
        """Read the device configuration as the guest does; the read must
        reach the back-end (GET_CONFIG), now or when QEMU realized the
        device."""
        value = driver.config_read(offset, size)
        self.assertIn(Request.GET_CONFIG, self.backend.trace.received(),
                      "the guest read the device configuration, but QEMU "
                      "never asked the back-end for it (no GET_CONFIG): the "
                      "value did not come from the back-end")
        return value

    def test_gpio(self):
        """vhost-user-gpio-pci: the guest sees the back-end's line count."""
        driver = self.run_device("vhost-user-gpio-pci",
                                 device_config("gpio"), rings=2)
        self.assertEqual(self.config_from_backend(driver, 0, 2), GPIO_LINES)

    def test_blk(self):
        """vhost-user-blk-pci: capacity, block size and queues arrive."""
        driver = self.run_device("vhost-user-blk-pci", device_config("blk"),
                                 rings=BLK_QUEUES,
                                 device_opts=[f"num-queues={BLK_QUEUES}"],
                                 want_features=BLK_F_BLK_SIZE)
        capacity = (self.config_from_backend(driver, 0, 4)
                    | self.config_from_backend(driver, 4, 4) << 32)
        self.assertEqual(capacity, BLK_CAPACITY)
        self.assertEqual(driver.config_read(20, 4), BLK_SIZE)
        self.assertEqual(driver.config_read(34, 2), BLK_QUEUES)

    def test_blk_writeback_reaches_the_back_end(self):
        """vhost-user-blk-pci with CONFIG_WCE: the guest switches the cache
        to writeback by writing the config space; the back-end gets
        SET_CONFIG of that one byte (offset 32) and serves it from then
        on."""
        config = device_config("blk")
        config.features |= BLK_F_CONFIG_WCE
        driver = self.run_device("vhost-user-blk-pci", config,
                                 rings=BLK_QUEUES,
                                 device_opts=[f"num-queues={BLK_QUEUES}",
                                              "config-wce=on"],
                                 want_features=BLK_F_CONFIG_WCE)
        self.assertEqual(driver.config_read(BLK_WCE_OFFSET, 1), 0)
        driver.config_write(BLK_WCE_OFFSET, 1, 1)
        self.backend.wait_request(Request.SET_CONFIG,
                                  timeout=self.scaled(10))
        written = self.backend.trace.payloads(Request.SET_CONFIG)[-1]
        self.assertEqual((written.offset, written.size, written.data),
                         (BLK_WCE_OFFSET, 1, b"\x01"))
        self.assertEqual(self.backend.state.config[BLK_WCE_OFFSET], 1)
        self.assertEqual(driver.config_read(BLK_WCE_OFFSET, 1), 1)

    def test_gpio_backend_without_config(self):
        """A vhost-user-gpio back-end that does not offer CONFIG: QEMU may
        refuse the device, with a reason, but a back-end must never crash
        it (7.2 asserted in vhost_dev_get_config on the failed device)."""
        self.require_device("vhost-user-gpio-pci")
        config = device_config("gpio")
        config.config = b""  # nothing to serve: no offer adds CONFIG
        config.protocol_features &= ~int(ProtocolFeature.CONFIG)
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path,
                          device="vhost-user-gpio-pci")
        try:
            vm.launch()
        except Exception:  # refused at start-up: how it ended is judged
            code = vm.wait_exit(self.scaled(5))
            if code is not None and code < 0:
                triage.qemu_ended(self, vm, "on a gpio back-end without CONFIG")
            self.log.info("QEMU refused the device (status %s): %s", code,
                          vm.log_tail())
            return
        vm.drive_device(queues=2)
        if not vm.is_running():
            triage.qemu_ended(self, vm, "driving a gpio device whose "
                              "back-end lacks CONFIG")
        self.log.info("QEMU started the device; its output: %s",
                      vm.log_tail() or "(none)")

    def test_scmi(self):
        """vhost-user-scmi-pci (QEMU 8.1+): an ARM device.

        ``hw/virtio/Kconfig`` makes VHOST_USER_SCMI depend on ARM, so it
        exists in qemu-system-aarch64 only.
        """
        self.require_arch("aarch64")
        self.run_device("vhost-user-scmi-pci", device_config("scmi"),
                        rings=2)


if __name__ == "__main__":
    main()
