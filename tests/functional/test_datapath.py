"""
Frames through the back-end's rings, checked byte for byte.

QEMU's C test never moves a packet.  Here the test plays the guest driver
(split rings in guest memory, over qtest) and the back-end processes the
rings for real: transmitted frames come out of the back-end, frames put on
the wire land in the guest's receive buffers, with virtio-net headers, in
order, across ring wrap-around, with single, chained and indirect
descriptors.
"""

import random
import struct
import time

from avocado_vhost.peers.qemu.driver import NET_HDR
from avocado_vhost.scenarios import loopback
from avocado_vhost.scenarios.loopback import frames
from avocado_vhost.scenarios.server_mode import launch_server_mode
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, Request
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.virtio import VirtioFeature
from avocado_vhost.virtio.ring import avail_event_offset
from avocado_vhost.vhost_user.virtq import packed_base

QUEUE_SIZE = 64


class Datapath(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,datapath
    """

    def start(self, pairs=1, port=None, event_idx=False):
        port = port or Port()
        backend = self.make_backend("backend",
                                    BackendConfig.net(pairs,
                                                      event_idx=event_idx),
                                    device=NetDevice(port))
        vm = self.make_vm("vm", backend.listener_path, queues=pairs)
        vm.launch()
        want = VirtioFeature.RING_INDIRECT_DESC | (VirtioFeature.RING_EVENT_IDX if event_idx else 0)
        if pairs > 1:
            want |= VirtioFeature.NET_F_MQ | VirtioFeature.NET_F_CTRL_VQ
        vm.drive_device(features=want, queues=2 * pairs + (pairs > 1),
                        queue_size=QUEUE_SIZE)
        backend.wait_rings_started(2 * pairs, timeout=self.scaled(10))
        return vm, backend, port, vm.net_queues()


    def test_event_idx(self):
        """VIRTIO_F_EVENT_IDX: after each pass the device tells the driver
        where to kick next (used->avail_event, as the guest reads it) --
        without it a Linux guest stops kicking after one frame.

        :avocado: tags=quick
        """
        vm, backend, port, queues = self.start(event_idx=True)
        self.assertTrue(vm.device.features & VirtioFeature.RING_EVENT_IDX,
                        "EVENT_IDX was not negotiated")
        rng = random.Random(3)
        rxq, txq = queues[0], queues[1]
        for count in (1, 5, QUEUE_SIZE + 3):
            loopback.transmit(self, port, txq, frames(rng, count), "single")
            with backend.lock():  # the pass that sent them has ended
                base = backend.state.vrings[1].position
            seen = vm.qtest.read(txq.q.used + avail_event_offset(txq.size), 2)
            self.assertEqual(seen, base, "used->avail_event is "
                             f"{seen}, the device's next entry is {base}")
        loopback.receive(self, backend, port, rxq, frames(rng, 7))
        with backend.lock():
            base = backend.state.vrings[0].position
        seen = vm.qtest.read(rxq.q.used + avail_event_offset(rxq.size), 2)
        self.assertEqual(seen, base,
                         "used->avail_event of the receive ring")

    def test_tx_rx_one_pair(self):
        """Every layout, more frames than the ring holds (wrap-around).

        :avocado: tags=quick
        """
        vm, backend, port, queues = self.start()
        rng = random.Random(1)
        rxq, txq = queues[0], queues[1]
        for layout in ("single", "chain", "indirect"):
            loopback.transmit(self, port, txq, frames(
                rng, QUEUE_SIZE + 20, layout.encode()[:2]), layout)
        loopback.receive(self, backend, port, rxq,
                         frames(rng, 2 * QUEUE_SIZE + 5))
        self.assertEqual(backend.state.vrings[1].position,
                         (3 * (QUEUE_SIZE + 20)) & 0xFFFF)

    def test_tx_rx_packed(self):
        """Packed virtqueues (``packed=on``; the back-end offers
        VIRTIO_F_RING_PACKED): every layout, wrap-around both ways, and the
        ring's packed base (positions and wrap counters) matches the
        driver's.

        :avocado: tags=quick
        """
        config = BackendConfig.net()
        config.features |= int(VirtioFeature.RING_PACKED)
        port = Port()
        backend = self.make_backend("backend", config, device=NetDevice(port))
        vm = self.make_vm("vm", backend.listener_path,
                          device_opts=["packed=on"])
        vm.launch()
        device = vm.drive_device(features=VirtioFeature.RING_INDIRECT_DESC | VirtioFeature.RING_PACKED,
                                 queues=2, queue_size=QUEUE_SIZE)
        self.assertTrue(device.packed, "packed rings not negotiated")
        backend.wait_rings_started(2, timeout=self.scaled(10))
        rxq, txq = vm.net_queues()
        rng = random.Random(4)
        for layout in ("single", "chain", "indirect"):
            loopback.transmit(self, port, txq, frames(
                rng, QUEUE_SIZE + 20, layout.encode()[:2]), layout)
        loopback.receive(self, backend, port, rxq,
                         frames(rng, 2 * QUEUE_SIZE + 5))
        base = backend.state.vrings[1].position
        self.assertEqual(base, packed_base(txq.pos, txq.wrap, txq.used_pos,
                                           txq.used_wrap),
                         f"transmit ring base 0x{base:x}")

    def set_queue_pairs(self, ctrlq, pairs):
        """VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET on the control queue (QEMU's own
        queue): QEMU then enables the rings of every pair."""
        descs = ctrlq.post_chain([bytes([4, 0]), struct.pack("<H", pairs)],
                                 [1])
        done = ctrlq.reap()  # QEMU handles it during the notify write
        self.assertEqual([h for h, _ in done], [descs[0]])
        ack = ctrlq.read_buffer(descs[-1], 1)
        self.assertEqual(ack, b"\0", "QEMU refused the queue-pair command")

    def test_tx_rx_four_pairs(self):
        """Four pairs; rings of pairs the driver has not enabled yet are
        started but disabled: what they transmit is dropped."""
        pairs = 4
        vm, backend, port, queues = self.start(pairs=pairs)
        rng = random.Random(2)
        queues[3].post_out([NET_HDR + f for f in frames(rng, 3)])
        port.wait_dropped(3, timeout=self.scaled(10))
        self.assertEqual(len(queues[3].reap()), 3,
                         "a disabled ring must still use (and drop) what it "
                         "is given")
        self.assertEqual(port.sent, [], "a disabled ring transmitted")
        self.set_queue_pairs(queues[2 * pairs], pairs)
        for pair in range(pairs):
            rxq, txq = queues[2 * pair], queues[2 * pair + 1]
            loopback.transmit(self, port, txq,
                              frames(rng, 40, bytes([pair])), "single")
            self.assertEqual({s.ring for s in port.sent[-40:]},
                             {2 * pair + 1})
            loopback.receive(self, backend, port, rxq,
                             frames(rng, 40, bytes([pair])))


class ReconnectUnderTraffic(Datapath):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,datapath,reconnect
    """

    def wait_used(self, queue, index):
        """Until the device's used index of ``queue`` reaches ``index``
        (read over qtest: each read is a round trip through QEMU)."""
        deadline = time.monotonic() + self.scaled(10)
        while queue.used_idx() != index:
            if time.monotonic() > deadline:
                self.fail(f"the used index of ring {queue.q.index} stayed at "
                          f"{queue.used_idx()} for {self.scaled(10)}s; "
                          f"{index} expected")

    def test_reconnect_under_traffic(self):
        """The back-end drops the connection with transmit work left in the
        ring; after the reconnect, the ring continues from the position
        QEMU hands over, and no frame is sent twice.

        QEMU cannot ask a vanished back-end where it stopped.  It takes the
        link down, and its own virtio-net code completes (drops) what is
        still in the transmit ring; it then resumes the back-end at the
        used index in guest memory.  So the right position is that used
        index, and the pending frames come back to the guest, unsent.
        """
        port = Port()
        device = NetDevice(port)
        vm, backend = launch_server_mode(self, data_path=device,
                                         config=BackendConfig.net())
        vm.drive_device(features=VirtioFeature.RING_INDIRECT_DESC, queues=2,
                        queue_size=QUEUE_SIZE)
        backend.wait_rings_started(2, timeout=self.scaled(10))
        rxq, txq = vm.net_queues()
        rng = random.Random(3)
        loopback.transmit(self, port, txq, frames(rng, 30, b"A"), "single")
        device.tx_budget = 5
        pending = frames(rng, 12, b"B")
        txq.post_out([NET_HDR + f for f in pending])
        port.wait_sent(35, timeout=self.scaled(10))

        before = len(port.sent)  # 30 + the 5 the budget let through
        backend.disconnect()
        backend.wait_connected(2, timeout=self.scaled(10))
        backend.wait_rings_started(2, timeout=self.scaled(10))
        resumed = [p.num for p in backend.trace.payloads(
            Request.SET_VRING_BASE, conn=2) if p.index == 1][-1]
        # Where QEMU resumes depends on when its virtio-net code saw the
        # link go down: it completes (drops) the frames still in the ring
        # if it handles their kick first.  Either way the frames between
        # where the back-end stopped and the resumed position went back to
        # the guest unsent, and the back-end owes exactly the rest.
        self.assertTrue(before <= resumed <= 30 + len(pending),
                        f"QEMU resumed the transmit ring at {resumed}, "
                        f"outside [{before}, {30 + len(pending)}]: where the "
                        "back-end stopped, up to the last pending frame")
        owed = pending[resumed - 30:]
        with backend.lock():
            device.tx_budget = None
        backend.poke()
        port.wait_sent(before + len(owed), timeout=self.scaled(10))
        self.wait_used(txq, 30 + len(pending))
        self.log.info("transmit ring resumed at %d; %d pending frames sent "
                      "before the drop, %d dropped by QEMU, %d sent after",
                      resumed, before - 30, len(pending) - (before - 30)
                      - len(owed), len(owed))
        self.assertEqual([s.data for s in port.sent[before:]], owed,
                         f"after the reconnect the back-end did not send "
                         f"exactly the frames from position {resumed} on, "
                         "where QEMU resumed the ring")
        completed = txq.reap()
        self.assertEqual(len(completed), len(pending),
                         "pending transmit buffers never came back")
        sent = [s.data for s in port.sent]
        for frame in pending:
            self.assertLessEqual(sent.count(frame), 1,
                                 f"frame {frame[:5]!r} sent twice across the "
                                 "reconnect")
        # Traffic goes on, exactly once, in both directions.
        loopback.transmit(self, port, txq, frames(rng, 40, b"C"), "chain")
        loopback.receive(self, backend, port, rxq, frames(rng, 20, b"D"))


if __name__ == "__main__":
    main()
