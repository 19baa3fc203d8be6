"""
Migration under traffic: no frame lost, none duplicated, rings resumed
where they stopped, and frames written during migration intact.

Frames flow both ways before, during and after a live migration.  The two
back-ends share one :class:`Port`, like the two ends of a migration plugged
into one switch port.  The source back-end is made to leave transmit
descriptors unprocessed (a transmit budget), so the destination has to
resume in the middle of the ring, at the base the source reported -- a
non-zero one.  And while QEMU waits for the source's first GET_VRING_BASE
answer (VM stopped, every page already sent once) the source back-end still
writes received frames into guest buffers, so they reach the destination
only through the dirty log.

Negative controls run the same scenario with a broken source back-end --
one that answers GET_VRING_BASE with 0, one that does not log its writes --
and show that the checks catch each.
"""

import random
from dataclasses import dataclass, field
from typing import List

from avocado_vhost.handoff import RingHandoffMonitor
from avocado_vhost.qemu.driver import NET_HDR
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, RingEvent
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.virtio import NET_HDR_LEN, VirtioFeature
from avocado_vhost.vhost_user.virtq import packed_base

QUEUE_SIZE = 64


@dataclass
class Report:
    """What the exactly-once and integrity checks found."""

    problems: List[str] = field(default_factory=list)
    tx_by_source: int = 0
    tx_by_destination: int = 0
    rx_by_source: int = 0
    rx_by_destination: int = 0
    resumed_tx_base: int = -1

    def add(self, text):
        self.problems.append(text)


def make_frames(rng, count, tag):
    return [tag + i.to_bytes(4, "big") + rng.randbytes(rng.choice(
        (56, 120, 500, 1400))) for i in range(count)]


class MigrateUnderTraffic(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration,datapath
    """

    def scenario(self, src_base_override=None, src_skips_logging=False,
                 packed=False):
        rng = random.Random(7)
        port = Port()
        config = BackendConfig()
        config.features |= int(VirtioFeature.RING_INDIRECT_DESC)
        spec = {}
        if packed:
            config.features |= int(VirtioFeature.RING_PACKED)
            spec["device_opts"] = ["packed=on"]
        src_dev, dst_dev = NetDevice(port), NetDevice(port)
        src_be = self.make_backend("src", config, device=src_dev)
        dst_be = self.make_backend("dst", BackendConfig(
            features=config.features), device=dst_dev)
        src = self.make_vm("src", src_be.listener_path, **spec)
        uri = "unix:" + self.socket_path("migration")
        dst = self.make_vm("dst", dst_be.listener_path, incoming=uri, **spec)
        src.launch()
        device = src.drive_device(features=VirtioFeature.RING_PACKED if packed else 0,
                                  queues=2, queue_size=QUEUE_SIZE)
        self.assertEqual(device.packed, packed)
        src_be.wait_rings_started(2, timeout=self.scaled(10))
        dst.launch()
        rxq, txq = self.net_queues(src)
        monitor = RingHandoffMonitor(src_be, dst_be)
        report = Report()
        tx_posted, rx_injected = [], []

        def inject(frames_, backend):
            rx_injected.extend(frames_)
            with port.cond:
                port.wire.extend(frames_)
            backend.poke()

        # Before: both directions through the source.
        before_tx = make_frames(rng, 20, b"T0")
        tx_posted += before_tx
        txq.post_out([NET_HDR + f for f in before_tx])
        port.wait_sent(20, self.scaled(10))
        txq.reap()
        rxq.post_in(20)
        inject(make_frames(rng, 20, b"R0"), src_be)
        port.wait_received(20, self.scaled(10))

        # Leave transmit work in the ring: the source takes 5 of 12.
        src_dev.tx_budget = 5
        pending_tx = make_frames(rng, 12, b"T1")
        tx_posted += pending_tx
        txq.post_out([NET_HDR + f for f in pending_tx])
        port.wait_sent(25, self.scaled(10))
        rxq.post_in(16)

        # Migrate, holding the source's first GET_VRING_BASE answer.
        src_be.vring_base_override = src_base_override
        src_dev.skip_logging = src_skips_logging
        hold = self.migrate_holding_handoff(src, dst, src_be, uri)
        src_be.wait_for(lambda: src_be.state.feature_acked(
            VirtioFeature.LOG_ALL), "dirty logging on", self.scaled(10))

        # During: 3 more to transmit (the source takes 2), 4 received.
        during_tx = make_frames(rng, 3, b"T2")
        tx_posted += during_tx
        txq.post_out([NET_HDR + f for f in during_tx])
        with src_be.lock():
            src_dev.tx_budget = 2
        src_be.poke()
        port.wait_sent(27, self.scaled(10))
        inject(make_frames(rng, 4, b"R1"), src_be)
        port.wait_received(24, self.scaled(10))

        # The VM is stopped, every page sent once, QEMU waits for the
        # source's answer: 6 more frames land in guest buffers now.
        self.assertTrue(hold.reached.wait(self.scaled(30)),
                        "no GET_VRING_BASE: " + src_be.describe())
        late = make_frames(rng, 6, b"R2")
        rx_injected.extend(late)
        with src_be.lock():
            with port.cond:
                port.wire.extend(late)
            src_dev.process_all()
        hold.release.set()

        failure = self.wait_migration(src, dst)
        if failure:
            report.add(failure)
            report.problems += monitor.problems()
            return report, (src_be, dst_be)
        dst_be.wait_rings_started(2, timeout=self.scaled(10))
        report.resumed_tx_base = next(
            e.base for e in monitor.events if e.side == "destination"
            and e.event is RingEvent.STARTED and e.ring == 1)

        # After: the driver (guest state) continues on the destination.
        for queue in (rxq, txq):
            queue.move_to(dst.qtest)
        after_tx = make_frames(rng, 10, b"T3")
        tx_posted += after_tx
        try:
            port.wait_sent(len(tx_posted) - len(after_tx), self.scaled(10))
        except TimeoutError as exc:
            report.add(f"transmit work left in the ring never sent: {exc}")
        try:
            txq.reap()
            txq.post_out([NET_HDR + f for f in after_tx])
            port.wait_sent(len(tx_posted), self.scaled(10))
            txq.reap()
        except (AssertionError, TimeoutError, RuntimeError) as exc:
            report.add(f"transmit after migration: {exc}")
        inject(make_frames(rng, 6, b"R3"), dst_be)
        try:
            port.wait_received(len(rx_injected), self.scaled(10))
        except TimeoutError as exc:
            report.add(str(exc))

        # Exactly once, byte for byte.
        sent = [s.data for s in port.sent]
        for i, frame in enumerate(tx_posted):
            count = sent.count(frame)
            if count != 1:
                report.add(f"transmitted frame {frame[:6]!r} (#{i}) came out "
                           f"{count} times")
        report.tx_by_source = sum(s.backend == "src" for s in port.sent)
        report.tx_by_destination = sum(s.backend == "dst" for s in port.sent)
        report.rx_by_source = port.received.get("src", 0)
        report.rx_by_destination = port.received.get("dst", 0)
        try:
            got = [rxq.read_buffer(h, n) for h, n in rxq.reap()]
        except AssertionError as exc:
            report.add(f"receive ring: {exc}")
            got = []
        frames_in = [g[NET_HDR_LEN:] for g in got]
        if frames_in != rx_injected:
            missing = [f[:6] for f in rx_injected if f not in frames_in]
            report.add(f"guest received {len(frames_in)} frames, "
                       f"{len(rx_injected)} were sent to it; missing or "
                       f"damaged: {missing}")
        report.problems += monitor.problems()
        self.log.info("ring handoff:\n%s", monitor.timeline())
        self.log.info("report: %s", report)
        return report, (src_be, dst_be)

    def test_migrate_under_traffic(self):
        report, backends = self.scenario()
        self.assertEqual(report.problems, [])
        # The source really left work behind, and the destination took it
        # up where the source stopped.
        self.assertEqual(report.resumed_tx_base, 20 + 5 + 2)
        self.assertEqual((report.tx_by_source, report.tx_by_destination),
                         (27, 8 + 10))
        self.assertEqual((report.rx_by_source, report.rx_by_destination),
                         (30, 6))

    def test_migrate_under_traffic_packed(self):
        """The same with packed virtqueues: the base carries positions and
        wrap counters."""
        report, backends = self.scenario(packed=True)
        self.assertEqual(report.problems, [])
        self.assertEqual(report.resumed_tx_base,
                         packed_base(27, True, 27, True))
        self.assertEqual((report.tx_by_source, report.tx_by_destination),
                         (27, 8 + 10))

    def test_negative_control_base_zero(self):
        """A source that answers GET_VRING_BASE with 0: the destination
        replays the transmit ring, and the checks must say so."""
        report, _ = self.scenario(src_base_override=0)
        self.log.info("negative control found: %s", report.problems)
        # QEMU itself refuses such a state on the destination ("VQ 0 size
        # 0x40 < last_avail_idx 0x0 - used_idx 0x1e"); a QEMU that took it
        # would replay the ring, and the duplicate check would fire.
        self.assertTrue(report.problems, "a replayed ring went unnoticed")
        self.assertTrue(any("migration failed" in p or "came out" in p
                            for p in report.problems), report.problems)

    def test_negative_control_no_logging(self):
        """A source that does not log its writes: frames it wrote after
        their pages were sent are lost, and the checks must say so."""
        report, _ = self.scenario(src_skips_logging=True)
        self.log.info("negative control found: %s", report.problems)
        self.assertTrue(report.problems, "lost writes went unnoticed")


if __name__ == "__main__":
    main()
