"""
The back-end channel (BACKEND_REQ): requests from the back-end to QEMU.

With BACKEND_REQ, QEMU gives the back-end one end of a socketpair
(SET_BACKEND_REQ_FD) on which the roles are swapped.  A configuration
change is the simplest request a device makes: "the back-end sends
VHOST_USER_BACKEND_CONFIG_CHANGE_MSG to notify the front-end that the
device configuration space has changed"; QEMU fetches the new space with
GET_CONFIG and tells the guest (the configuration-change interrupt).  Here
a vhost-user-blk back-end grows its disk, as a storage daemon does on a
resize, and the guest (the test, over qtest) must see the interrupt and
the new capacity.  A host notifier (VRING_HOST_NOTIFIER_MSG) hands QEMU a
page of the back-end's memory to map as a ring's doorbell: the guest's
kicks are then writes into the back-end's page (how a vDPA-like back-end
takes them without an eventfd); its removal is tested with hot-unplug too
(``test_hotplug.py``).
"""

import mmap
import os
import struct

from avocado_vhost.devices import (BLK_CAPACITY, BLK_F_BLK_SIZE, BLK_QUEUES,
                                   device_config)
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature, Request
from avocado_vhost.vhost_user.message import BackendRequest, Empty

#: ISR status bit of a configuration change (virtio 4.1.4.5)
ISR_CONFIG = 0x2


class BackendChannel(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,backend-channel
    """

    def setUp(self):
        super().setUp()
        self.require_protocol(ProtocolFeature.BACKEND_REQ,
                              "the test is about the back-end channel")

    def start_blk(self):
        self.require_device("vhost-user-blk-pci")
        backend = self.make_backend("backend", device_config("blk"))
        vm = self.make_vm("vm", backend.listener_path,
                          device="vhost-user-blk-pci",
                          device_opts=[f"num-queues={BLK_QUEUES}"])
        vm.launch()
        driver = vm.drive_device(features=BLK_F_BLK_SIZE, queues=BLK_QUEUES)
        backend.wait_rings_started(BLK_QUEUES, timeout=self.scaled(10))
        return backend, driver

    def capacity(self, driver):
        return driver.config_read(0, 4) | driver.config_read(4, 4) << 32

    def resize(self, backend, capacity):
        """The back-end's disk is now ``capacity`` sectors; it tells QEMU
        on the channel and returns QEMU's acknowledgement."""
        with backend.lock():
            backend.state.config[0:8] = struct.pack("<Q", capacity)
        return backend.backend_request(BackendRequest.CONFIG_CHANGE_MSG,
                                       Empty())

    def test_a_resize_reaches_the_guest(self):
        """CONFIG_CHANGE_MSG: QEMU acknowledges it, fetches the new
        configuration (GET_CONFIG) and raises the configuration interrupt;
        the guest reads the new capacity."""
        backend, driver = self.start_blk()
        self.assertEqual(self.capacity(driver), BLK_CAPACITY)
        self.assertFalse(driver.isr_status() & ISR_CONFIG,
                         "a configuration interrupt before any change (the "
                         "check below could not fail)")
        gets = len(backend.trace.select("rx", Request.GET_CONFIG))
        ack = self.resize(backend, 2 * BLK_CAPACITY)
        self.assertEqual(ack, 0, "QEMU refused the configuration change")
        self.assertGreater(len(backend.trace.select("rx",
                                                    Request.GET_CONFIG)),
                           gets, "QEMU never fetched the changed "
                           "configuration (no GET_CONFIG)")
        self.assertTrue(driver.isr_status() & ISR_CONFIG,
                        "the guest got no configuration-change interrupt")
        self.assertEqual(self.capacity(driver), 2 * BLK_CAPACITY,
                         "the guest still reads the old capacity")

    def test_every_field_of_a_change_reaches_the_guest(self):
        """A resize that also changes the disk's geometry: the guest reads
        the new geometry with the new capacity (the protocol puts no limit
        on what a change may change; QEMU took only the capacity until
        f67d296b6e, 9.0)."""
        backend, driver = self.start_blk()
        geometry = struct.pack("<HBB", 1234, 16, 63)
        with backend.lock():
            backend.state.config[16:20] = geometry
        self.assertEqual(self.resize(backend, 3 * BLK_CAPACITY), 0)
        self.assertEqual(self.capacity(driver), 3 * BLK_CAPACITY)
        seen = driver.config_read(16, 4).to_bytes(4, "little")
        self.assertEqual(seen, geometry, "the configuration change reached "
                         "the guest without its geometry: only the "
                         "capacity was taken")

    def test_a_host_notifier_takes_the_guest_kicks(self):
        """VRING_HOST_NOTIFIER_MSG for ring 1 (``page-per-vq=on``): QEMU
        maps the back-end's page as the ring's doorbell, and the guest's
        kick -- the ring's index written to its notify address -- lands in
        that page; after the notifier is removed (no fd), the page sees
        kicks no more."""
        config = BackendConfig()
        config.protocol_features |= int(ProtocolFeature.HOST_NOTIFIER)
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path,
                          device_opts=["page-per-vq=on"])
        self.start_vm(vm, backend, rings=2)
        doorbell = os.memfd_create("doorbell")
        self.cleanup(os.close, doorbell)
        os.ftruncate(doorbell, mmap.PAGESIZE)
        page = mmap.mmap(doorbell, mmap.PAGESIZE)
        self.cleanup(page.close)
        kick = vm.device.queues[1].notify_addr

        vm.qtest.write(kick, 2, 1)
        self.assertEqual(page[0:2], b"\0\0", "a kick reached the page "
                         "before it was mapped (the check below could not "
                         "fail)")
        self.assertEqual(backend.host_notifier(1, doorbell), 0,
                         "QEMU refused to map the host notifier")
        vm.qtest.write(kick, 2, 1)
        self.assertEqual(page[0:2], b"\1\0", "the guest's kick of ring 1 "
                         "did not land in the back-end's doorbell page")
        self.assertEqual(backend.host_notifier(1, None), 0,
                         "QEMU refused to remove the host notifier")
        page[0:2] = b"\0\0"
        vm.qtest.write(kick, 2, 1)
        self.assertEqual(page[0:2], b"\0\0", "a kick landed in the page "
                         "after the notifier was removed")


if __name__ == "__main__":
    main()
