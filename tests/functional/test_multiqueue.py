"""
multiqueue: one vhost-user socket, N queue pairs.

With the MQ protocol feature, QEMU asks GET_QUEUE_NUM and then runs one vhost
device per queue pair over the same socket: feature negotiation is repeated
per pair, while the device-wide requests (SET_OWNER, the memory table,
GET_QUEUE_NUM, ...) come once, from the first pair.  QEMU's C test checks 2
pairs; here 2, 4 and 8, and every ring must start and see SET_VRING_ENABLE.
"""

from avocado_vhost.scenarios import migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, Request
from avocado_vhost.virtio import VirtioFeature

#: multiqueue needs the control queue
MQ = VirtioFeature.NET_F_MQ | VirtioFeature.NET_F_CTRL_VQ

#: Device-wide requests that QEMU sends for the first queue pair only
#: (and the memory table: SET_MEM_TABLE, or the first ADD_MEM_REG).
ONCE = (Request.SET_OWNER, Request.GET_QUEUE_NUM)


class Multiqueue(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,multiqueue
    """

    def run_pairs(self, pairs):
        rings = 2 * pairs
        config = BackendConfig.net(pairs, indirect=False)
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path, queues=pairs)
        vm.launch()
        # All data queues plus the control queue (MQ requires CTRL_VQ).
        device = vm.drive_device(features=MQ, queues=rings + 1)
        both = VirtioFeature.NET_F_MQ | VirtioFeature.VERSION_1
        self.assertEqual(device.features & both, both,
                         "the guest driver could not negotiate MQ")
        backend.wait_rings_started(rings, timeout=self.scaled(10))
        self.assertEqual(backend.state.started_rings(), list(range(rings)))

        received = backend.trace.received(conn=1)
        enabled = {p.index for p in backend.trace.payloads(
            Request.SET_VRING_ENABLE)}
        self.assertEqual(set(range(rings)) - enabled, set(),
                         "rings that saw no SET_VRING_ENABLE")
        regions = len(backend.state.memory)
        memory = backend.state.memory_request
        self.assertEqual(received.count(memory),
                         1 if memory is Request.SET_MEM_TABLE else regions,
                         f"{memory.name} sent {received.count(memory)} times for "
                         f"{regions} regions and {pairs} queue pairs: the "
                         f"memory table is device-wide")
        for request in ONCE:
            self.assertEqual(received.count(request), 1,
                             f"{request.name} sent {received.count(request)} times "
                             f"for {pairs} queue pairs; once is the rule")
        self.assertGreaterEqual(received.count(Request.SET_FEATURES), pairs,
                                "feature negotiation not repeated per pair")

    def test_migration_hands_over_the_log_once(self):
        """Live migration with two queue pairs: the dirty log is
        device-wide, so SET_LOG_BASE comes once on the socket, not once per
        pair.  The back-end takes it as DPDK's vhost library does (a new
        SET_LOG_BASE unmaps the log in use), which a repeat while logging
        would crash (QEMU fix 7c211eb078)."""
        pairs, rings = 2, 4
        config = BackendConfig.net(pairs, indirect=False,
                                   unmap_replaced_log=True)
        pair = migration.start_pair(self, rings=rings, config=config,
                                    features=MQ, driver_queues=rings + 1,
                                    queues=pairs)
        migration.migrate(self, pair.src, pair.dst, pair.uri)
        outcome = migration.wait_outcome(self, pair.src, pair.dst)
        log_bases = pair.src_backend.trace.received(conn=1).count(
            Request.SET_LOG_BASE)
        self.assertEqual(log_bases, 1, f"SET_LOG_BASE sent {log_bases} "
                         f"times on one socket for {pairs} queue pairs "
                         "during one migration; once is the rule")
        self.assertEqual(outcome.status, "completed", str(outcome))

    def test_two_pairs(self):
        """Two queue pairs: every ring is enabled and started, and the
        device-wide messages (the memory table, ...) come once, not once
        per pair.

        :avocado: tags=quick
        """
        self.run_pairs(2)

    def test_four_pairs(self):
        self.run_pairs(4)

    def test_eight_pairs(self):
        self.run_pairs(8)


if __name__ == "__main__":
    main()
