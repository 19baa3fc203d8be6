"""
The back-end against a driver nobody here wrote: DPDK's virtio-user.

``dpdk-testpmd --vdev net_virtio_user0,path=SOCK`` is a vhost-user
front-end *and* a virtio-net driver in user space: it polls the rings from
its own CPU while the back-end's thread works on them, which the suite's
own qtest driver (one access at a time, vCPUs halted) never does.  Every
frame is counted on both sides and the counts must be equal: testpmd's
forward statistics against what the back-end took off or put on the rings.

What DPDK 22.11's virtio-user does against the spec is recorded by the
back-end's conformance rules like anything else; each test names the
deviations it tolerates from this peer and why (:data:`DPDK_DEVIATIONS`),
and fails on any other.
"""

import os
import re

from avocado_vhost.peers import dpdk
from avocado_vhost.peers.dpdk import SERVER_WAITING
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, DisconnectCause
from avocado_vhost.vhost_user.net import NetDevice, Port

#: DPDK 22.11 virtio-user's known deviations: rule -> why tolerated.
DPDK_DEVIATIONS = {
    "reserved-num-zero":
        "virtio-user sends GET_VRING_BASE with the previous reply's value "
        "in num; the back-end ignores num, so nothing depends on it",
    "packed-base-has-used-half":
        "virtio-user sends packed bases without bits 16-31; at start the "
        "back-end takes the used position and wrap to equal the available "
        "ones, as the driver meant (else the ring stalls after 256 frames)",
}

#: txonly runs until the back-end has taken this many frames (the packed
#: transmit stall of a split store showed once in some 10^5 frames).
TXONLY_FRAMES = 300_000
#: rxonly: frames the back-end sends.
RXONLY_FRAMES = 20_000
#: io: frames sent in rounds small enough for testpmd's transmit ring.
IO_ROUNDS, IO_ROUND = 16, 128


def frame(seq, size=64):
    """A unique Ethernet frame: broadcast, a local source MAC, an
    experimental ethertype, the sequence number, then filler."""
    head = (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"
            + seq.to_bytes(4, "big"))
    return head + bytes((seq + i) & 0xFF for i in range(size - len(head)))


class VirtioUserTest(VhostUserTest):
    """What the interop tests share: the back-end and testpmd set up for
    each other, and the checks of what DPDK did.

    :avocado: disable
    """

    # --- set-up -------------------------------------------------------------
    def backend_for(self, pairs=1, packed=False, port=None, name="backend",
                    listen=True):
        config = BackendConfig.net(pairs, indirect=False, packed=packed)
        return self.make_backend(name, config, listen=listen,
                                 device=NetDevice(port or Port()))

    def start_testpmd(self, path, mode, pairs=1, packed=False, name="testpmd",
                server=False):
        vdev = f"net_virtio_user0,path={path},queues={pairs}"
        if packed:
            vdev += ",packed_vq=1"
        if server:
            vdev += ",server=1"
        return dpdk.start_testpmd(self, name, vdev, [
            f"--forward-mode={mode}", f"--rxq={pairs}", f"--txq={pairs}"],
            until=SERVER_WAITING if server else None)

    def connected_pair(self, mode, pairs=1, packed=False):
        port = Port()
        backend = self.backend_for(pairs, packed, port)
        testpmd = self.start_testpmd(backend.listener_path, mode, pairs, packed)
        backend.wait_rings_started(2 * pairs, timeout=self.scaled(20))
        return backend, port, testpmd

    # --- checks -------------------------------------------------------------
    def assert_only_known_deviations(self, backend, *testpmds):
        """testpmd is still alive (it crashed in every run against the old
        back-end); every violation the back-end recorded is one DPDK is
        known for (logged with why it is tolerated); nothing else went
        wrong."""
        for testpmd in testpmds:
            self.assertIsNone(testpmd.returncode,
                              f"testpmd {testpmd.describe_exit()}")
        unknown = []
        for violation in backend.violations:
            why = DPDK_DEVIATIONS.get(violation.rule)
            if why is not None:
                self.log.info("tolerated from DPDK: %s (%s)", violation, why)
            else:
                unknown.append(violation)
        self.assertEqual(unknown, [], "violations DPDK is not known for")
        self.expect_violations(backend)  # judged above, one by one

    def wait_sent(self, backend, port, count, timeout=30.0):
        """Until the back-end took ``count`` frames in all; on timeout the
        failure says what the stall detector saw and the back-end's state."""
        try:
            port.wait_sent(count, self.scaled(timeout))
        except TimeoutError as exc:
            stalls = "; ".join(map(str, backend.device.stalls)) or "none"
            self.fail(f"{exc}; stalls: {stalls}; back-end: "
                      f"{backend.describe()}")

    def port_rx_packets(self, testpmd):
        text = testpmd.command("show port stats 0")
        match = re.search(r"RX-packets:\s*(\d+)", text)
        self.assertIsNotNone(match, f"no RX-packets in: {text}")
        return int(match.group(1))

    def wait_testpmd_received(self, testpmd, count, timeout=20.0):
        """Ask testpmd until its port counted ``count`` received frames
        (each question waits for its answer; bounded)."""
        seen = []
        deadline = os.times().elapsed + self.scaled(timeout)
        while os.times().elapsed < deadline:
            seen.append(self.port_rx_packets(testpmd))
            if seen[-1] >= count:
                return
        self.fail(f"testpmd counted {seen[-1:]} received frames, waited "
                  f"{timeout}s for {count}")

    # --- scenarios ----------------------------------------------------------
    def txonly(self, pairs=1, packed=False):
        """testpmd transmits as fast as it can; every frame it counts as
        sent is taken by the back-end, once."""
        backend, port, testpmd = self.connected_pair("txonly", pairs, packed)
        testpmd.command("start")
        self.wait_sent(backend, port, TXONLY_FRAMES)
        stats = testpmd.stop_forwarding()[0]
        # what testpmd put in the ring before it stopped is taken too
        self.wait_sent(backend, port, stats.tx_packets, 10)
        self.log.info("txonly %s %d pair(s): testpmd sent %d, back-end took "
                      "%d", "packed" if packed else "split", pairs,
                      stats.tx_packets, port.sent_total)
        self.assertEqual(port.sent_total, stats.tx_packets)
        self.assertEqual({len(f.data) for f in port.sent}, {64},
                         "txonly frames are 64 bytes (testpmd's --txpkts)")
        template = port.sent[-1].data
        self.assertEqual(template[12:14], b"\x08\x00", "not IPv4")
        self.assertEqual(template[23], 17, "not UDP")
        self.assertEqual({f.data for f in port.sent}, {template},
                         "txonly sends one template; a frame differed")
        self.assertEqual({f.ring for f in port.sent},
                         set(range(1, 2 * pairs, 2)),
                         "not every transmit queue carried frames")
        self.assert_only_known_deviations(backend, testpmd)

    def rxonly(self, pairs=1, packed=False):
        """The back-end sends; testpmd counts exactly what was sent."""
        backend, port, testpmd = self.connected_pair("rxonly", pairs, packed)
        testpmd.command("start")
        sent = 0
        while sent < RXONLY_FRAMES:
            sent += port.offer([frame(sent + i) for i in range(
                min(4096, RXONLY_FRAMES - sent))])
            backend.poke()
            port.wait_received(sent, self.scaled(30))
        self.wait_testpmd_received(testpmd, RXONLY_FRAMES)
        stats = testpmd.stop_forwarding()[0]
        self.assertEqual(port.refused, 0)
        self.assertEqual(stats.rx_packets, RXONLY_FRAMES)
        self.assertEqual(sum(port.received.values()), RXONLY_FRAMES)
        self.assert_only_known_deviations(backend, testpmd)

    def io(self, pairs=1, packed=False):
        """testpmd forwards every frame back: each comes back once, byte
        for byte, in the order it was sent on its queue."""
        backend, port, testpmd = self.connected_pair("io", pairs, packed)
        testpmd.command("start")
        sent = []
        for _ in range(IO_ROUNDS):
            batch = [frame(len(sent) + i, 60 + (len(sent) + i) % 1400)
                     for i in range(IO_ROUND)]
            sent += batch
            self.assertEqual(port.offer(batch), len(batch))
            backend.poke()
            self.wait_sent(backend, port, len(sent), 20)
        stats = testpmd.stop_forwarding()[0]
        self.assertEqual((stats.rx_packets, stats.tx_packets,
                          stats.tx_dropped), (len(sent), len(sent), 0))
        back = [f.data for f in port.sent]
        self.assertEqual(sorted(back), sorted(sent),
                         "frames lost, duplicated or changed")
        if pairs == 1:
            self.assertEqual(back, sent, "order changed on one queue")
        self.assert_only_known_deviations(backend, testpmd)



class VirtioUser(VirtioUserTest):
    """
    testpmd's virtio-user as the front-end, the in-process back-end as the
    device, in testpmd's txonly, rxonly and io forwarding modes, on split
    and packed rings, with one and two queue pairs.

    :avocado: enable
    :avocado: tags=vhost-user,dpdk,interop
    """

    def test_txonly_split(self):
        self.txonly()

    def test_txonly_packed(self):
        self.txonly(packed=True)

    def test_txonly_split_two_pairs(self):
        self.txonly(pairs=2)

    def test_txonly_packed_two_pairs(self):
        self.txonly(pairs=2, packed=True)

    def test_rxonly_split(self):
        self.rxonly()

    def test_rxonly_packed(self):
        self.rxonly(packed=True)

    def test_rxonly_split_two_pairs(self):
        self.rxonly(pairs=2)

    def test_rxonly_packed_two_pairs(self):
        self.rxonly(pairs=2, packed=True)

    def test_io_split(self):
        self.io()

    def test_io_packed(self):
        self.io(packed=True)

    def test_io_split_two_pairs(self):
        self.io(pairs=2)

    def test_io_packed_two_pairs(self):
        self.io(pairs=2, packed=True)


class VirtioUserLifecycle(VirtioUserTest):
    """
    A front-end that quits, one that is killed, and one that is the
    server: the back-end records how each connection ended, keeps no stale
    ring, and serves the next front-end from scratch.

    :avocado: enable
    :avocado: tags=vhost-user,dpdk,interop
    """

    def transmit_some(self, backend, port, testpmd, count=5_000):
        """testpmd's txonly until the back-end took ``count`` more frames;
        then counts on both sides are equal."""
        before = port.sent_total
        testpmd.command("start")
        self.wait_sent(backend, port, before + count)
        stats = testpmd.stop_forwarding()[0]
        self.wait_sent(backend, port, before + stats.tx_packets, 10)
        self.assertEqual(port.sent_total - before, stats.tx_packets)
        return stats.tx_packets

    def test_front_end_quits_then_another_connects(self):
        port = Port()
        backend = self.backend_for(port=port)
        first = self.start_testpmd(backend.listener_path, "txonly",
                                   name="testpmd1")
        backend.wait_rings_started(2, timeout=self.scaled(20))
        self.transmit_some(backend, port, first)
        first.close()
        backend.wait_disconnected(self.scaled(10))
        self.assertIs(backend.disconnects[1].cause, DisconnectCause.PEER_CLOSED,
                      backend.disconnects[1])
        second = self.start_testpmd(backend.listener_path, "txonly",
                                    name="testpmd2")
        backend.wait_for(lambda: backend.connections == 2 and len(
            [r for r in backend.state.vrings.values() if r.started]) == 2,
            "the second front-end's rings to start", self.scaled(20))
        self.transmit_some(backend, port, second)
        self.assert_only_known_deviations(backend, second)

    def test_front_end_killed_mid_traffic(self):
        """SIGKILL while frames flow: the back-end sees the socket close,
        records nothing wrong, and the next front-end's frames all arrive."""
        port = Port()
        backend = self.backend_for(port=port)
        first = self.start_testpmd(backend.listener_path, "txonly",
                                   name="testpmd1")
        backend.wait_rings_started(2, timeout=self.scaled(20))
        first.command("start")
        self.wait_sent(backend, port, 5_000)
        first.kill()
        self.assertEqual(first.describe_exit(), "killed by SIGKILL")
        backend.wait_disconnected(self.scaled(10))
        self.assertIs(backend.disconnects[1].cause, DisconnectCause.PEER_CLOSED,
                      backend.disconnects[1])
        taken = port.sent_total
        second = self.start_testpmd(backend.listener_path, "txonly",
                                    name="testpmd2")
        backend.wait_for(lambda: backend.connections == 2 and len(
            [r for r in backend.state.vrings.values() if r.started]) == 2,
            "the second front-end's rings to start", self.scaled(20))
        self.assertEqual(port.sent_total, taken,
                         "frames of the killed front-end were replayed")
        self.transmit_some(backend, port, second)
        self.assert_only_known_deviations(backend, second)

    def test_testpmd_is_the_server(self):
        """virtio-user with ``server=1`` listens; the back-end connects as
        the client (as QEMU's ``server=on`` chardev makes it do)."""
        port = Port()
        backend = self.backend_for(port=port, listen=False)
        path = self.socket_path("testpmd")
        testpmd = self.start_testpmd(path, "txonly", server=True)
        backend.connect(path)
        testpmd.wait_prompt(self.scaled(20))
        backend.wait_rings_started(2, timeout=self.scaled(20))
        self.transmit_some(backend, port, testpmd)
        self.assert_only_known_deviations(backend, testpmd)


if __name__ == "__main__":
    main()
