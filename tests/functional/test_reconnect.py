"""
The reconnect family: QEMU must renegotiate from scratch after the back-end
goes away, whatever the moment.

QEMU's C test (tests/qtest/vhost-user-test.c) sleeps a fixed second and waits
on fixed 5 s timeouts here; these tests wait on events only -- the
connection closing, the back-end reconnecting, the rings starting -- each
bounded, each reporting what it saw when the bound is hit.

QEMU's chardev is ``server=on``: the back-end connects, and reconnects the
moment a connection ends (``reconnect_path``), so no delay is involved.
"""

from avocado_vhost.vhost_user.device_offers import BLK_QUEUES, device_config
from avocado_vhost.scenarios.server_mode import launch_server_mode
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (BackendConfig, DisconnectCause, Fault,
                                      FaultAction, Request, WaitTimeout)

DROPS = 5


class Reconnect(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,reconnect
    """

    def wait_restarted(self, backend, connection, rings=2):
        """Connection ``connection`` is up and QEMU started every ring on
        it again, from scratch: features, memory table, rings."""
        backend.wait_connected(connection, timeout=self.scaled(10))
        backend.wait_rings_started(rings, timeout=self.scaled(10))
        received = backend.trace.received(conn=connection)
        for request in (Request.GET_FEATURES, Request.SET_FEATURES,
                        backend.state.memory_request, Request.SET_VRING_KICK):
            self.assertIn(request, received,
                          f"connection {connection} never saw {request.name}")

    def test_reconnect(self):
        """The back-end drops a running device several times; each time
        QEMU renegotiates and restarts every ring.

        :avocado: tags=quick
        """
        vm, backend = launch_server_mode(self, )
        vm.drive_device(queues=2)
        self.wait_restarted(backend, 1)
        for drop in range(DROPS):
            backend.disconnect()
            self.wait_restarted(backend, drop + 2)
        self.assertEqual(backend.connections, DROPS + 1)

    def test_connect_fail(self):
        """The back-end drops the connection at the very first request.

        :avocado: tags=quick
        """
        vm, backend = launch_server_mode(
            self, faults=[Fault(FaultAction.DISCONNECT, nth=1, connection=1)])
        vm.drive_device(queues=2)
        self.wait_restarted(backend, 2)
        first = backend.trace.received(conn=1)
        self.assertEqual(first, [Request.GET_FEATURES], "connection 1 should have "
                         "ended at its first request")

    def test_flags_mismatch(self):
        """Dropped after SET_FEATURES; then no features at all are offered,
        which QEMU must refuse; then with the right features it starts.

        :avocado: tags=quick
        """
        good = BackendConfig().features

        def per_connection(number, config):
            config.features = 0 if number == 2 else good
        vm, backend = launch_server_mode(
            self, faults=[Fault(FaultAction.DISCONNECT_AFTER,
                                request=Request.SET_FEATURES, connection=1)],
            on_connect=per_connection)
        vm.drive_device(queues=2)
        self.wait_restarted(backend, 3)
        second = backend.trace.received(conn=2)
        self.log.info("connection 2 (no features offered): %s", second)
        for memory in (Request.SET_MEM_TABLE, Request.ADD_MEM_REG):
            self.assertNotIn(memory, second,
                             "QEMU used a back-end that offers no features")
        self.assertIs(backend.disconnects[2].cause,
                      DisconnectCause.PEER_CLOSED,
                      "QEMU did not refuse the featureless back-end")
        self.assertIs(backend.disconnects[1].cause, DisconnectCause.FAULT)
        self.assertEqual(backend.state.acked_features & good,
                         backend.state.acked_features)

    def test_reconnect_qemu_client(self):
        """QEMU is the client and reconnects by itself after the back-end
        drops it, with the shortest delay the QEMU under test accepts
        (``reconnect-ms`` where probed, else ``reconnect=1`` second)."""
        delay = 50 if self.caps.reconnect_ms else 1
        backend = self.make_backend("backend")
        vm = self.make_vm("vm", backend.listener_path, reconnect=delay)
        self.start_vm(vm, backend, rings=2)
        for drop in range(2):
            backend.disconnect()
            self.wait_restarted(backend, drop + 2)


    def test_reconnect_after_a_failed_reconnect(self):
        """vhost-user-blk with QEMU as the client: the back-end drops the
        running device, then drops QEMU's reconnect at its first request
        (GET_FEATURES).  QEMU must connect again and restart the device
        from scratch (QEMU fix 6eaf0e612b: before it, a reconnect that
        failed in vhost_dev_init left the chardev without its event
        handler, and QEMU never spoke on a connection again)."""
        self.require_device("vhost-user-blk-pci")
        delay = 50 if self.caps.reconnect_ms else 1
        backend = self.make_backend("backend", device_config("blk"))
        backend.faults.append(Fault(FaultAction.DISCONNECT, connection=2,
                                    request=Request.GET_FEATURES))
        vm = self.make_vm("vm", backend.listener_path, reconnect=delay,
                          device="vhost-user-blk-pci",
                          device_opts=[f"num-queues={BLK_QUEUES}"])
        self.start_vm(vm, backend, rings=BLK_QUEUES)
        backend.disconnect()
        backend.wait_connected(3, timeout=self.scaled(10))
        try:
            backend.wait_request(Request.GET_FEATURES, conn=3,
                                 timeout=self.scaled(3))
        except WaitTimeout:
            self.fail("QEMU reconnected after its reconnect failed at "
                      "GET_FEATURES, but never spoke on the new connection: "
                      "the device is lost (its chardev handler was not "
                      "reinstated)")
        self.wait_restarted(backend, 3, rings=BLK_QUEUES)


if __name__ == "__main__":
    main()
