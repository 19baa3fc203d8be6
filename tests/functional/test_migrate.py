"""
migrate: dirty log and ring handoff across live migration.

What the 2014 seed test checks, made deterministic and given teeth, one
claim per test over one story (:func:`.scenarios.migration.dirty_log_handoff`):
QEMU stops the source's rings (GET_VRING_BASE) on the way into the final
migration stage, then syncs the vhost log; the source back-end holds its
answer to the first GET_VRING_BASE, and meanwhile writes two pages through
its own mapping and logs only one.

``test_logging_messages`` judges the messages that make logging possible,
each against its spec sentence (``avocado_vhost.checks.migration_log``): LOG_ALL in
SET_FEATURES, VHOST_VRING_F_LOG and a ``log_guest_addr`` equal to the used
ring's guest address in every ring's SET_VRING_ADDR, and a log that covers
all of guest RAM.  Its negative controls feed the same checks QEMU's real
messages, each broken one way, and require a finding.
"""

from avocado_vhost.checks import migration_log
from avocado_vhost.scenarios import migration
from avocado_vhost.scenarios.migration import NEW, OLD
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import RingEvent
from avocado_vhost.virtio.ring import split_sizes


class Migrate(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration
    """

    def migrated(self):
        report = migration.dirty_log_handoff(self)
        self.assertIsNone(report.failure, report.failure)
        return report

    def test_the_dirty_log_has_one_bit_per_page(self):
        """"The log ... one bit per page of guest memory": a log of
        4096 bytes for 128 MiB from address 0."""
        report = self.migrated()
        expected = migration.expected_log_size(report.ram_top)
        self.assertEqual(report.log_size, expected,
                         f"a {report.log_size}-byte log for RAM up to "
                         f"0x{report.ram_top:x}: one bit per 4 KiB page "
                         f"from address 0, in 64-bit words, is {expected}")

    def test_a_logged_page_reaches_the_destination(self):
        """A page the back-end writes and logs after migration sent it
        arrives: QEMU honours the dirty log.

        :avocado: tags=quick
        """
        report = self.migrated()
        self.assertEqual(report.logged_on_dst, bytes([NEW]) * 4096,
                         f"page 0x{report.logged_page:x}, written and "
                         "logged by the source back-end, reads "
                         f"{report.logged_on_dst[:8].hex()}.. on the "
                         f"destination instead of {NEW:02x}..")
        # ... and the destination back-end maps the destination's memory.
        self.assertEqual(report.logged_on_dst_backend, report.logged_on_dst)

    def test_an_unlogged_page_stays_stale(self):
        """Negative control: the same write without a log bit does not
        arrive, so the test above can tell a working log from a broken
        one.

        :avocado: tags=quick
        """
        report = self.migrated()
        self.assertEqual(report.unlogged_on_dst, bytes([OLD]) * 4096,
                         f"page 0x{report.unlogged_page:x}, written but not "
                         f"logged, reads {report.unlogged_on_dst[:8].hex()}"
                         ".. on the destination: the log check is vacuous")

    def test_writes_at_the_edges_of_memory_arrive(self):
        """Where log mistakes hide -- the first and last page of every RAM
        region, its top and bottom 256 KiB, the pages on either side of a
        log word's boundary: each page the source back-end wrote and
        logged there is on the destination, byte for byte."""
        report = self.migrated()
        self.assertGreater(len(report.edges), 100)
        self.assertEqual([hex(p) for p in report.edges_lost], [])

    def test_writes_at_the_edges_of_a_hot_plugged_dimm_arrive(self):
        """The same with a DIMM hot-plugged into the running source (the
        destination starts with it): the edges of its region, written and
        logged by the source back-end, are on the destination too."""
        self.require_device("pc-dimm")
        report = migration.dirty_log_handoff(self, dimm=True)
        self.assertIsNone(report.failure, report.failure)
        start, size = report.dimm
        dimm = [p for p in report.edges if start <= p < start + size]
        self.log.info("%d edge pages, %d of them in the DIMM at 0x%x",
                      len(report.edges), len(dimm), start)
        self.assertGreater(len(dimm), 100, "the DIMM's region was not "
                           "among the edges written")
        self.assertEqual([hex(p) for p in report.edges_lost], [])

    def test_negative_control_an_unlogged_dimm_page_is_lost(self):
        """Negative control: the DIMM's last page (the highest of guest
        RAM) written but not logged is named, and only it."""
        self.require_device("pc-dimm")
        report = migration.dirty_log_handoff(self, dimm=True,
                                             unlogged_edges=(-1,))
        self.assertIsNone(report.failure, report.failure)
        start, size = report.dimm
        self.assertEqual(report.edges_lost, [start + size - 4096])

    def test_negative_control_an_unlogged_edge_is_lost(self):
        """Negative control: the same writes with two of them left out of
        the log -- the 64th edge page and the last page of RAM; the check
        above must name exactly those."""
        report = migration.dirty_log_handoff(self, unlogged_edges=(63, -1))
        self.assertIsNone(report.failure, report.failure)
        self.assertEqual(sorted(report.edges_lost),
                         sorted([report.edges[63], report.edges[-1]]))

    def test_no_ring_runs_on_both_sides(self):
        """The destination starts a ring only after the source stopped it
        (judged at every start and stop, on either side).

        :avocado: tags=quick
        """
        report = self.migrated()
        self.assertEqual(report.monitor.problems(), [],
                         report.monitor.timeline())

    def test_every_ring_is_handed_over(self):
        """The source stops both rings and the destination starts both,
        each where the source's GET_VRING_BASE said.

        :avocado: tags=quick
        """
        report = self.migrated()
        events = report.monitor.events
        stopped = sorted(e.ring for e in events if e.side == "source"
                         and e.event is RingEvent.STOPPED)
        started = sorted(e.ring for e in events if e.side == "destination"
                         and e.event is RingEvent.STARTED)
        self.assertEqual((stopped, started), ([0, 1], [0, 1]),
                         report.monitor.timeline())

    def test_logging_messages(self):
        """While migrating, the front-end turns logging on as the spec says:
        VHOST_F_LOG_ALL, VHOST_VRING_F_LOG with the used ring's guest
        address, and a log covering all guest RAM.

        :avocado: tags=quick
        """
        pair = migration.start_pair(self)
        migration.migrate(self, pair.src, pair.dst, pair.uri)
        failure = migration.wait_migration(self, pair.src, pair.dst)
        self.assertIsNone(failure, failure)

        queues = pair.src.device.queues
        used_gpa = {q.index: q.used for q in queues}
        used_len = {q.index: split_sizes(q.size)[2] for q in queues}
        top = max(g + s for g, s in pair.src_backend.state.memory.ram_ranges())
        messages = migration_log.connection_messages(
            pair.src_backend.trace.entries, 1)
        findings = migration_log.check_logging(messages, used_gpa, used_len,
                                               top)
        self.assertEqual(findings, [], "\n".join(findings))

        # Negative controls: the same checks on QEMU's messages, each broken
        # in one way, must find it.
        for name, breaker in (
                ("LOG_ALL cleared", migration_log.break_log_all),
                ("VHOST_VRING_F_LOG cleared",
                 migration_log.break_ring_log_flag),
                ("log_guest_addr one page off",
                 migration_log.break_ring_log_addr),
                ("log one word short", migration_log.break_log_size)):
            broken = migration_log.check_logging(breaker(messages), used_gpa,
                                                 used_len, top)
            self.assertTrue(broken, f"negative control '{name}': the checks "
                            "found nothing wrong in a broken message")
            self.log.info("negative control '%s' caught: %s", name, broken[0])


if __name__ == "__main__":
    main()
