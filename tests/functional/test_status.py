"""
Device status and reset: STATUS and RESET_DEVICE.

With the STATUS protocol feature, QEMU passes the virtio device status on
to the back-end (SET_STATUS, "as defined in the Virtio specification"):
FEATURES_OK once the features are set, DRIVER_OK when the device starts,
and 0 -- a device reset -- when it stops.  Since a status of 0 resets the
device, rings and all, QEMU must fetch the ring positions (GET_VRING_BASE)
before it writes it.  With RESET_DEVICE, a virtio reset of the device also
reaches the back-end as RESET_DEVICE, and the device starts afresh after.

The conformance judge checks the status rules in every test that offers
STATUS (the default offer); the tests here provoke each transition on
purpose, over qtest: the test writes the device status as a guest driver
would.
"""

from avocado_vhost.peers.qemu.driver import NET_HDR
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import ProtocolFeature, Request
from avocado_vhost.vhost_user.net import NetDevice, Port

FEATURES_OK = 0x8
DRIVER_OK = 0x4


class Status(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,status
    """

    def setUp(self):
        super().setUp()
        self.require_protocol(ProtocolFeature.STATUS,
                              "the device status travels in SET_STATUS")

    def started_then_reset(self):
        """A device driven to DRIVER_OK with two running rings, then reset
        by its driver (status 0): the back-end and its received status
        values."""
        self.port = Port()
        backend = self.make_backend("backend", device=NetDevice(self.port))
        vm = self.make_vm("vm", backend.listener_path)
        self.start_vm(vm, backend, rings=2)
        vm.device.reset()
        backend.wait_for(lambda: not backend.state.started_rings()
                         and backend.state.status == 0,
                         "the reset to stop both rings and write status 0",
                         timeout=self.scaled(10))
        return vm, backend

    def test_status_follows_the_driver(self):
        """The back-end sees FEATURES_OK, then DRIVER_OK (with
        FEATURES_OK), then 0 when the driver resets the device.

        :avocado: tags=quick
        """
        _, backend = self.started_then_reset()
        written = [p.value for p in backend.trace.payloads(Request.SET_STATUS)]
        self.log.info("SET_STATUS values: %s", [hex(v) for v in written])
        self.assertTrue(written, "QEMU negotiated STATUS but never set it")
        first_ok = next((i for i, v in enumerate(written)
                         if v & FEATURES_OK), None)
        first_run = next((i for i, v in enumerate(written)
                          if v & DRIVER_OK), None)
        self.assertIsNotNone(first_ok, f"no FEATURES_OK in {written}")
        self.assertIsNotNone(first_run, f"no DRIVER_OK in {written}")
        self.assertLessEqual(first_ok, first_run,
                             "DRIVER_OK came before FEATURES_OK")
        self.assertEqual(written[-1], 0, "the driver's reset did not reach "
                         "the back-end as status 0")

    def test_rings_stop_before_the_status_reset(self):
        """Every started ring's position is fetched (GET_VRING_BASE)
        before SET_STATUS 0 resets the device.

        :avocado: tags=quick
        """
        _, backend = self.started_then_reset()
        received = backend.trace.received()
        reset = len(received) - 1 - received[::-1].index(Request.SET_STATUS)
        late = [i for i, request in enumerate(received)
                if request is Request.GET_VRING_BASE and i > reset]
        self.assertEqual(late, [], "GET_VRING_BASE after SET_STATUS 0: the "
                         "status write reset the device before QEMU fetched "
                         f"the ring positions (messages {late}, reset at "
                         f"{reset})")

    def test_reset_reaches_the_back_end_and_the_device_starts_again(self):
        """A driver reset sends RESET_DEVICE; the device, driven again,
        restarts both rings from position 0 and carries traffic.

        :avocado: tags=quick
        """
        self.require_protocol(ProtocolFeature.RESET_DEVICE,
                              "the test is about RESET_DEVICE")
        self.require_qemu((9, 1, 0), "QEMU sends RESET_DEVICE on a virtio "
                          "reset since 2688e8df60 (\"virtio: Always reset "
                          "vhost devices\")")
        vm, backend = self.started_then_reset()
        received = backend.trace.received()
        reset = len(received) - 1 - received[::-1].index(Request.SET_STATUS)
        backend.wait_for(lambda: Request.RESET_DEVICE in
                         backend.trace.received()[reset:],
                         "RESET_DEVICE after the driver's reset",
                         timeout=self.scaled(10))
        bases = len(backend.trace.payloads(Request.SET_VRING_BASE))
        vm.drive_device(queues=2)
        backend.wait_rings_started(2, timeout=self.scaled(10))
        again = backend.trace.payloads(Request.SET_VRING_BASE)[bases:]
        self.assertEqual(sorted((p.index, p.num) for p in again),
                         [(0, 0), (1, 0)],
                         "the rings did not restart from position 0")
        frame = bytes(12) + b"sent after the reset".ljust(48, b".")
        vm.net_queues()[1].post_out([NET_HDR + frame])
        self.port.wait_sent(1, timeout=self.scaled(10))
        self.assertEqual(self.port.sent[0].data, frame)


if __name__ == "__main__":
    main()
