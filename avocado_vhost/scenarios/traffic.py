"""
Frames both ways across a live migration, each counted exactly once.

The two back-ends share one :class:`~avocado_vhost.vhost_user.net.Port`,
like the two ends of a migration plugged into one switch port.  The source
back-end is made to leave transmit descriptors unprocessed (a transmit
budget), so the destination has to resume in the middle of the ring, at
the base the source reported -- a non-zero one.  And while QEMU waits for
the source's first GET_VRING_BASE answer (VM stopped, every page already
sent once) the source back-end still writes received frames into guest
buffers, so they reach the destination only through the dirty log.

:func:`migrate_under_traffic` returns a :class:`TrafficReport` whose
problems carry a :class:`Finding`: a negative control (a source that
answers GET_VRING_BASE with 0, or does not log its writes) asserts which
finding it must produce, on the same report the positive test reads.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Set

from avocado_vhost.checks.handoff import RingHandoffMonitor
from avocado_vhost.peers.qemu.driver import NET_HDR
from avocado_vhost.peers.qemu.spec import VMOptions
from avocado_vhost.vhost_user import BackendConfig, RingEvent, VhostUserBackend
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.virtio import NET_HDR_LEN, VirtioFeature
from avocado_vhost.scenarios import migration

if TYPE_CHECKING:
    from avocado_vhost.harness import Harness

__all__ = ["Finding", "TrafficProblem", "TrafficReport", "TrafficOptions",
           "migrate_under_traffic", "QUEUE_SIZE"]

QUEUE_SIZE = 64


class Finding(enum.Enum):
    """What can go wrong in the story."""

    MIGRATION_FAILED = "the migration failed"
    HANDOFF = "the ring handoff broke a rule"
    TX_LEFT_BEHIND = "transmit work left in the ring was never sent"
    TX_AFTER = "transmit after the migration failed"
    TX_NOT_ONCE = "a transmitted frame did not come out exactly once"
    RX_RING = "the receive ring could not be read"
    RX_LOST = "frames sent to the guest were lost or damaged"


@dataclass(frozen=True)
class TrafficProblem:
    finding: Finding
    detail: str

    def __str__(self) -> str:
        return f"{self.finding.value}: {self.detail}"


@dataclass(frozen=True)
class TrafficOptions:
    """The story's knobs; the defaults are a correct source back-end."""

    packed: bool = False
    #: answer GET_VRING_BASE with this (a broken source)
    src_base_override: Optional[int] = None
    #: do not mark the dirty log (a broken source)
    src_skips_logging: bool = False


@dataclass
class TrafficReport:
    """What the exactly-once and integrity checks found."""

    problems: List[TrafficProblem] = field(default_factory=list)
    tx_by_source: int = 0
    tx_by_destination: int = 0
    rx_by_source: int = 0
    rx_by_destination: int = 0
    #: where the destination started the transmit ring (-1: it did not)
    resumed_tx_base: int = -1

    def add(self, finding: Finding, detail: str) -> None:
        self.problems.append(TrafficProblem(finding, detail))

    def findings(self) -> Set[Finding]:
        return {p.finding for p in self.problems}


def _frames(rng: random.Random, count: int, tag: bytes) -> List[bytes]:
    return [tag + i.to_bytes(4, "big") + rng.randbytes(rng.choice(
        (56, 120, 500, 1400))) for i in range(count)]


def migrate_under_traffic(test: "Harness",
                          options: TrafficOptions = TrafficOptions()
                          ) -> TrafficReport:
    """Run the story; every check's outcome is in the report (a wait that
    times out before the migration is the test's error, not a finding)."""
    rng = random.Random(7)
    port = Port()
    config = BackendConfig()
    config.features |= int(VirtioFeature.RING_INDIRECT_DESC)
    spec: VMOptions = {}
    if options.packed:
        config.features |= int(VirtioFeature.RING_PACKED)
        spec["device_opts"] = ["packed=on"]
    src_dev, dst_dev = NetDevice(port), NetDevice(port)
    src_be = test.make_backend("src", config, device=src_dev)
    dst_be = test.make_backend("dst", BackendConfig(features=config.features),
                               device=dst_dev)
    src = test.make_vm("src", src_be.listener_path, **spec)
    uri = "unix:" + test.socket_path("migration")
    dst_spec: VMOptions = {**spec, "incoming": uri}
    dst = test.make_vm("dst", dst_be.listener_path, **dst_spec)
    src.launch()
    device = src.drive_device(
        features=VirtioFeature.RING_PACKED if options.packed else 0,
        queues=2, queue_size=QUEUE_SIZE)
    test.assertEqual(device.packed, options.packed)
    src_be.wait_rings_started(2, timeout=test.scaled(10))
    dst.launch()
    rxq, txq = src.net_queues()
    monitor = RingHandoffMonitor(src_be, dst_be)
    report = TrafficReport()
    tx_posted: List[bytes] = []
    rx_injected: List[bytes] = []

    def inject(frames: List[bytes], backend: VhostUserBackend) -> None:
        rx_injected.extend(frames)
        with port.cond:
            port.wire.extend(frames)
        backend.poke()

    def transmit(frames: List[bytes]) -> None:
        tx_posted.extend(frames)
        txq.post_out([NET_HDR + f for f in frames])

    # Before: both directions through the source.
    transmit(_frames(rng, 20, b"T0"))
    port.wait_sent(20, test.scaled(10))
    txq.reap()
    rxq.post_in(20)
    inject(_frames(rng, 20, b"R0"), src_be)
    port.wait_received(20, test.scaled(10))

    # Leave transmit work in the ring: the source takes 5 of 12.
    src_dev.tx_budget = 5
    transmit(_frames(rng, 12, b"T1"))
    port.wait_sent(25, test.scaled(10))
    rxq.post_in(16)

    # Migrate, holding the source's first GET_VRING_BASE answer.
    src_be.vring_base_override = options.src_base_override
    src_dev.skip_logging = options.src_skips_logging
    if options.src_base_override is not None or options.src_skips_logging:
        test.expect_failure(src_be)  # broken on purpose: the report judges
    hold = migration.migrate(test, src, dst, uri, hold=src_be)
    assert hold is not None
    src_be.wait_for(lambda: src_be.state.feature_acked(
        VirtioFeature.LOG_ALL), "dirty logging on", test.scaled(10))

    # During: 3 more to transmit (the source takes 2), 4 received.
    transmit(_frames(rng, 3, b"T2"))
    with src_be.lock():
        src_dev.tx_budget = 2
    src_be.poke()
    port.wait_sent(27, test.scaled(10))
    inject(_frames(rng, 4, b"R1"), src_be)
    port.wait_received(24, test.scaled(10))

    # The VM is stopped, every page sent once, QEMU waits for the source's
    # answer: 6 more frames land in guest buffers now.
    if not hold.reached.wait(test.scaled(30)):
        raise AssertionError("no GET_VRING_BASE: " + src_be.describe())
    late = _frames(rng, 6, b"R2")
    rx_injected.extend(late)
    with src_be.lock():
        with port.cond:
            port.wire.extend(late)
        src_dev.process_all()
    hold.release.set()

    failure = migration.wait_migration(test, src, dst)
    if failure:
        report.add(Finding.MIGRATION_FAILED, failure)
        for text in monitor.problems():
            report.add(Finding.HANDOFF, text)
        return report
    dst_be.wait_rings_started(2, timeout=test.scaled(10))
    report.resumed_tx_base = next(
        e.base for e in monitor.events if e.side == "destination"
        and e.event is RingEvent.STARTED and e.ring == 1 and e.base is not None)

    # After: the driver (guest state) continues on the destination.
    assert dst.qtest is not None
    for queue in (rxq, txq):
        queue.move_to(dst.qtest)
    after_tx = _frames(rng, 10, b"T3")
    try:
        port.wait_sent(len(tx_posted), test.scaled(10))
    except TimeoutError as exc:
        report.add(Finding.TX_LEFT_BEHIND, str(exc))
    try:
        txq.reap()
        transmit(after_tx)
        port.wait_sent(len(tx_posted), test.scaled(10))
        txq.reap()
    except (AssertionError, TimeoutError, RuntimeError) as exc:
        report.add(Finding.TX_AFTER, str(exc))
    inject(_frames(rng, 6, b"R3"), dst_be)
    try:
        port.wait_received(len(rx_injected), test.scaled(10))
    except TimeoutError as exc:
        report.add(Finding.RX_LOST, str(exc))

    # Exactly once, byte for byte.
    sent = [s.data for s in port.sent]
    for i, frame in enumerate(tx_posted):
        count = sent.count(frame)
        if count != 1:
            report.add(Finding.TX_NOT_ONCE, f"frame {frame[:6]!r} (#{i}) "
                       f"came out {count} times")
    report.tx_by_source = sum(s.backend == "src" for s in port.sent)
    report.tx_by_destination = sum(s.backend == "dst" for s in port.sent)
    report.rx_by_source = port.received.get("src", 0)
    report.rx_by_destination = port.received.get("dst", 0)
    try:
        got = [rxq.read_buffer(h, n) for h, n in rxq.reap()]
    except AssertionError as exc:
        report.add(Finding.RX_RING, str(exc))
        got = []
    frames_in = [g[NET_HDR_LEN:] for g in got]
    if frames_in != rx_injected:
        missing = [f[:6] for f in rx_injected if f not in frames_in]
        report.add(Finding.RX_LOST, f"the guest received {len(frames_in)} "
                   f"frames, {len(rx_injected)} were sent to it; missing or "
                   f"damaged: {missing}")
    for text in monitor.problems():
        report.add(Finding.HANDOFF, text)
    test.log.info("ring handoff:\n%s", monitor.timeline())
    test.log.info("report: %s", report)
    return report
