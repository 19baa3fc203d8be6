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
"""

from avocado_vhost.scenarios import migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (BackendConfig, Fault, FaultAction,
                                      ProtocolFeature, Request)
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
        NET_SET_MTU 9000, and the guest reads 9000 in its config space."""
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
        so and does not start its rings -- the guest's MTU would be a lie."""
        self.require_protocol(ProtocolFeature.REPLY_ACK, "a back-end refuses "
                              "NET_SET_MTU in a REPLY_ACK")
        backend = self.make_backend("backend", self.mtu_config())
        backend.faults.append(Fault(FaultAction.FAIL,
                                    request=Request.NET_SET_MTU))
        vm = self.make_vm("vm", backend.listener_path,
                          device_opts=[f"host_mtu={MTU}"])
        vm.launch()
        vm.drive_device(queues=2, features=VirtioFeature.NET_F_MTU)
        self.assertIn("NET_SET_MTU", backend.trace.received(),
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


if __name__ == "__main__":
    main()
