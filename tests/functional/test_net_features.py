"""
virtio-net's own vhost-user requests: NET_SET_MTU and SEND_RARP.

* NET_SET_MTU (protocol feature NET_MTU): with ``host_mtu=`` on the device
  and VIRTIO_NET_F_MTU acked by the driver, QEMU tells the back-end the
  MTU the guest was given, and must not start a back-end that refuses it
  ("the back-end must respond with zero ... or non-zero otherwise").
* SEND_RARP (protocol feature RARP): after a migration, for a guest that
  cannot announce itself (no VIRTIO_NET_F_GUEST_ANNOUNCE), QEMU asks the
  destination back-end to broadcast a RARP with the guest's MAC, so that
  the network learns where the guest went.
* Per-queue reset (VIRTIO_F_RING_RESET): the driver resets one queue; QEMU
  must stop that ring alone (GET_VRING_BASE) and, when the driver enables
  it again, start it over from 0 -- the other ring running throughout.
  QEMU passes the feature through to a vhost-user net back-end that offers
  it (562a7d23bf, 7.2), but forwards a queue reset to vhost-net (TAP)
  only: the back-end is never told (an open defect).
"""

from avocado_vhost.peers.qemu.driver import NET_HDR
from avocado_vhost.scenarios import migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (BackendConfig, Fault, FaultAction,
                                      ProtocolFeature, Request, RingEvent)
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.virtio import VirtioFeature

MTU = 9000
MAC = "52:54:00:aa:bb:cc"


class NetFeatures(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,net
    """

    def mtu_config(self):
        config = BackendConfig()
        config.features |= int(VirtioFeature.NET_F_MTU)
        config.protocol_features |= int(ProtocolFeature.NET_MTU)
        return config

    def test_the_guest_mtu_reaches_the_back_end(self):
        """host_mtu=9000 and NET_F_MTU acked: the back-end gets
        NET_SET_MTU 9000, and the guest reads 9000 in its config space.

        :avocado: tags=quick
        """
        backend = self.make_backend("backend", self.mtu_config())
        vm = self.make_vm("vm", backend.listener_path,
                          device_opts=[f"host_mtu={MTU}"])
        self.start_vm(vm, backend, rings=2, features=VirtioFeature.NET_F_MTU)
        self.assertEqual(backend.state.mtu, MTU,
                         f"NET_SET_MTU: {backend.trace.payloads(Request.NET_SET_MTU)}")
        # virtio_net_config: mac[6], status u16, max_virtqueue_pairs u16, mtu
        self.assertEqual(vm.device.config_read(10, 2), MTU)

    def test_an_mtu_the_back_end_refuses_stops_the_device(self):
        """A back-end that refuses the MTU (a failed REPLY_ACK): QEMU says
        so and does not start its rings -- the guest's MTU would be a lie.

        :avocado: tags=quick
        """
        self.require_protocol(ProtocolFeature.REPLY_ACK, "a back-end refuses "
                              "NET_SET_MTU in a REPLY_ACK")
        backend = self.make_backend("backend", self.mtu_config())
        backend.faults.append(Fault(FaultAction.FAIL,
                                    request=Request.NET_SET_MTU))
        vm = self.make_vm("vm", backend.listener_path,
                          device_opts=[f"host_mtu={MTU}"])
        vm.launch()
        vm.drive_device(queues=2, features=VirtioFeature.NET_F_MTU)
        self.assertIn(Request.NET_SET_MTU, backend.trace.received(),
                      "QEMU never sent the MTU")
        # The start is synchronous in the guest's DRIVER_OK write.
        self.assertIn("MTU not supported by the backend", vm.log_text())
        self.assertEqual(backend.state.started_rings(), [],
                         "QEMU started the rings of a back-end that "
                         "refused the guest's MTU")

    def test_the_destination_announces_the_guest(self):
        """After a migration, the destination back-end is asked to send a
        RARP for the guest's MAC (the guest has no GUEST_ANNOUNCE)."""
        config = BackendConfig()
        config.protocol_features |= int(ProtocolFeature.RARP)
        pair = migration.start_pair(self, config=config,
                                    device_opts=[f"mac={MAC}"])
        migration.migrate(self, pair.src, pair.dst, pair.uri)
        failure = migration.wait_migration(self, pair.src, pair.dst)
        self.assertIsNone(failure, failure)
        pair.dst_backend.wait_request(Request.SEND_RARP,
                                      timeout=self.scaled(10))
        mac = pair.dst_backend.state.rarp[-1].to_bytes(8, "little")[:6]
        self.assertEqual(mac.hex(":"), MAC)
        self.assertEqual(pair.src_backend.state.rarp, [],
                         "the source was asked to announce a guest that "
                         "left")

    def test_a_reset_queue_restarts_alone(self):
        """The driver resets the transmit queue in mid-traffic: QEMU stops
        ring 1 alone, starts it again at 0 when the driver enables it, and
        frames flow on it again; ring 0 never stops."""
        config = BackendConfig()
        config.features |= int(VirtioFeature.RING_RESET)
        port = Port()
        backend = self.make_backend("backend", config, device=NetDevice(port))
        vm = self.make_vm("vm", backend.listener_path)
        vm.launch()
        device = vm.drive_device(features=VirtioFeature.RING_RESET, queues=2)
        if not device.features & VirtioFeature.RING_RESET:
            self.cancel(f"QEMU {self.caps.version} does not offer "
                        "VIRTIO_F_RING_RESET on a vhost-user net device")
        backend.wait_rings_started(2, timeout=self.scaled(10))
        _, txq = vm.net_queues()
        events = []
        backend.ring_listeners.append(
            lambda be, ring, event: events.append(
                (ring.index, event, ring.reported_base, ring.base)))
        txq.post_out([NET_HDR + b"before" + bytes(60)] * 3)
        port.wait_sent(3, self.scaled(10))
        # QEMU resets the queue within the driver's write, and GET_VRING_BASE
        # waits for its answer: by the time the write returns, it was sent.
        device.reset_queue(1)
        if not any(i == 1 and e is RingEvent.STOPPED for i, e, _, _ in events):
            self.fail("QEMU reset queue 1 without telling the back-end (no "
                      "GET_VRING_BASE for ring 1): the back-end runs on, on "
                      "a ring the driver has reset and may move (Linux does "
                      "to resize it); ring events: "
                      f"{events or 'none'}")
        txq.restart()
        backend.wait_for(lambda: backend.state.vrings[1].starts == 2,
                         "ring 1 started again", self.scaled(10))
        txq.post_out([NET_HDR + b"after" + bytes(60)] * 2)
        port.wait_sent(5, self.scaled(10))
        self.log.info("ring events after the first start: %s", events)
        self.assertEqual([(i, e) for i, e, _, _ in events
                          if e in (RingEvent.STARTED, RingEvent.STOPPED)],
                         [(1, RingEvent.STOPPED), (1, RingEvent.STARTED)])
        stopped = next(x for x in events if x[1] is RingEvent.STOPPED)
        started = next(x for x in events if x[1] is RingEvent.STARTED)
        self.assertEqual(stopped[2], 3, "GET_VRING_BASE of the reset ring")
        self.assertEqual(started[3], 0, "the reset ring must start over at "
                         "0, where the driver's new ring begins")
        self.assertEqual([s.data[:5] for s in port.sent[3:]], [b"after"] * 2)
        self.check_backends(backend)


if __name__ == "__main__":
    main()
