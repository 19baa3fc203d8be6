"""
Hot-unplug and re-plug of vhost-user devices.

Unplugging a running vhost-user device must stop it as the spec stops a
device -- every started ring stopped with GET_VRING_BASE -- and release
everything the back-end gave QEMU (host notifiers), so that the same
device can be plugged again on the same back-end and started afresh.

The test is the guest: it drives each device to DRIVER_OK over qtest and
ejects it through the pc machine's ACPI PCI hot-plug register
(``avocado_vhost.peers.qemu.hotplug``), which is x86-only.
"""

import mmap
import os

from avocado_vhost.vhost_user.device_offers import BLK_QUEUES, device_config
from avocado_vhost.peers.qemu import hotplug
from avocado_vhost.checks import triage
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature, Request

SLOT = 5


class Hotplug(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,vhost-user,hotplug
    """

    def setUp(self):
        super().setUp()
        why = hotplug.can_unplug(self.platform)
        if why:
            self.cancel(why)

    def unplug(self, vm, device_id):
        try:
            hotplug.unplug(vm, device_id, SLOT, self.scaled(10))
        except hotplug.HotplugError as exc:
            triage.qemu_ended(self, vm, f"while unplugging {device_id}: {exc}")

    def unplug_and_plug_again(self, driver, kind, rings, **props):
        """``driver`` on the back-end of ``kind``, started, unplugged and
        plugged again twice: each unplug must stop every started ring
        (GET_VRING_BASE), and the device plugged again on the same
        connection must start afresh."""
        self.require_device(driver)
        config = device_config(kind)
        backend = self.make_backend("backend", config)
        opts = [f"{k}={v}" for k, v in props.items()]
        vm = self.make_vm("vm", backend.listener_path, device=driver,
                          device_opts=opts + ["id=dev0", f"addr=0x{SLOT:x}"])
        self.start_vm(vm, backend, rings=rings)
        for round_ in (1, 2):
            stops = len(backend.trace.select("rx", Request.GET_VRING_BASE))
            self.unplug(vm, "dev0")
            running = backend.state.started_rings()
            if running:
                self.fail(f"unplug {round_} of {driver}: QEMU removed the "
                          f"device but left ring(s) {running} running on the "
                          "back-end (no GET_VRING_BASE): the vhost device was"
                          " never stopped")
            self.assertGreater(
                len(backend.trace.select("rx", Request.GET_VRING_BASE)),
                stops, f"unplug {round_}: no GET_VRING_BASE")
            try:
                hotplug.plug(vm, driver, "dev0", SLOT, chardev="vu0", **props)
                vm.drive_device(queues=rings)
            except Exception as exc:
                if vm.wait_exit(self.scaled(2)) is None:
                    raise  # QEMU runs on: another failure
                triage.qemu_ended(self, vm, f"when {driver} was plugged "
                                  f"again ({type(exc).__name__}: {exc})")
            backend.wait_rings_started(rings, timeout=self.scaled(10))

    def test_gpio_unplug_stops_the_device_and_it_plugs_again(self):
        """vhost-user-gpio (a vhost-user-base device, whose unrealize stops
        vhost through its own set_status(0)), unplugged twice and plugged
        again in between (QEMU fix d72479b117: from 8.0 to 9.0 such an
        unplug never stopped the vhost device, and plugging it again
        failed)."""
        self.unplug_and_plug_again("vhost-user-gpio-pci", "gpio", rings=2)

    def test_blk_unplug_stops_the_device_and_it_plugs_again(self):
        """vhost-user-blk, unplugged twice and plugged again in between.

        :avocado: tags=quick
        """
        self.unplug_and_plug_again("vhost-user-blk-pci", "blk",
                                   rings=BLK_QUEUES,
                                   **{"num-queues": BLK_QUEUES})

    def test_unplug_after_a_host_notifier(self):
        """vhost-user-net with two queue pairs, the guest using one: the
        back-end maps a host notifier for a queue of the unused pair (as a
        vDPA back-end maps every queue's doorbell).  Unplugging the device
        and deleting its netdev must release the notifier; a new netdev and
        device on the same back-end then start afresh (QEMU fix 963b027645:
        before it, QEMU queued the notifier for freeing twice and aborted).
        """
        self.require_protocol(ProtocolFeature.BACKEND_REQ, "host notifiers "
                              "are offered on the back-end channel")
        pairs = 2
        config = BackendConfig.net(pairs, indirect=False)
        config.protocol_features |= int(ProtocolFeature.BACKEND_REQ
                                        | ProtocolFeature.HOST_NOTIFIER)
        backend = self.make_backend("backend", config)
        opts = ["id=nic0", f"addr=0x{SLOT:x}", "page-per-vq=on"]
        vm = self.make_vm("vm", backend.listener_path, queues=pairs,
                          device_opts=opts)
        self.start_vm(vm, backend, rings=2)  # one pair: no MQ negotiated
        doorbell = os.memfd_create("doorbell")
        self.cleanup(os.close, doorbell)
        os.ftruncate(doorbell, mmap.PAGESIZE)
        ack = backend.host_notifier(2, doorbell)
        self.assertEqual(ack, 0, "QEMU refused to map the host notifier "
                         "of queue 2 (REPLY_ACK non-zero)")

        self.unplug(vm, "nic0")
        try:
            vm.qmp("netdev_del", id="net0")
            hotplug.drain_rcu(vm)  # the notifier is freed by now
            # The chardev went with the netdev: a new one, a new connection.
            vm.qmp("chardev-add", id="vu1", backend={
                "type": "socket", "data": {
                    "addr": {"type": "unix",
                             "data": {"path": backend.listener_path}},
                    "server": False}})
            vm.qmp("netdev_add", type="vhost-user", id="net1",
                   chardev="vu1", queues=pairs)
            hotplug.plug(vm, "virtio-net-pci", "nic1", SLOT, netdev="net1",
                         mq=True, **{"page-per-vq": True})
            vm.drive_device(queues=2)
        except Exception as exc:  # QEMU gone under the monitor or qtest?
            if vm.wait_exit(self.scaled(2)) is None:
                raise  # QEMU runs on: another failure
            triage.qemu_ended(self, vm, "after the unplug of a vhost-user-net "
                              "device whose back-end had mapped a host "
                              f"notifier ({type(exc).__name__}: {exc})")
        backend.wait_connected(2, timeout=self.scaled(10))
        backend.wait_rings_started(2, timeout=self.scaled(10))


if __name__ == "__main__":
    main()
