"""
migrate: dirty log and ring handoff across live migration.

What the 2014 seed test checks, made deterministic and given teeth:

* the dirty log QEMU hands over has one bit per guest page (8192 bytes for
  256 MiB);
* no ring runs on source and destination at once -- judged at every ring
  start and stop on either side (:class:`RingHandoffMonitor`), not polled;
* the destination resumes each ring where the source's GET_VRING_BASE said;
* a page the source back-end writes *after* migration has sent it reaches
  the destination when, and only when, its dirty-log bit is set.

``test_logging_messages`` judges the messages that make logging possible,
each against its spec sentence (``avocado_vhost.migration_log``): LOG_ALL in
SET_FEATURES, VHOST_VRING_F_LOG and a ``log_guest_addr`` equal to the used
ring's guest address in every ring's SET_VRING_ADDR, and a log that covers
all of guest RAM.  Its negative controls feed the same checks QEMU's real
messages, each broken one way, and require a finding.

The dirty-log point needs a moment when every page has been sent once and the
log is still read: QEMU stops the source's rings (GET_VRING_BASE) on the way
into the final migration stage, then syncs the vhost log.  The source
back-end holds its answer to the first GET_VRING_BASE; meanwhile the test
writes two pages through the source back-end's mapping and logs only one.
The unlogged page staying stale on the destination is the negative control:
it shows that the check would fail if logging were broken.
"""

from avocado_vhost import migration_log
from avocado_vhost.handoff import RingHandoffMonitor
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import RingEvent
from avocado_vhost.virtio.ring import split_sizes

# Offsets into guest RAM (its base differs between targets).
PAGE_A = 0x100000  # written and logged: must arrive
PAGE_B = 0x101000  # written, not logged: must stay stale (negative control)
OLD, NEW = 0x11, 0x42
LOG_CHUNK = 4096 * 64  # one u64 word of the log covers 64 pages


class Migrate(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration
    """

    def migration_pair(self):
        """A started source and a destination waiting for it, each with its
        own back-end; the migration URI."""
        src_be = self.make_backend("src")
        dst_be = self.make_backend("dst")
        src = self.make_vm("src", src_be.listener_path)
        uri = "unix:" + self.socket_path("migration")
        dst = self.make_vm("dst", dst_be.listener_path, incoming=uri)
        self.start_vm(src, src_be, rings=2)
        dst.launch()
        return src_be, dst_be, src, dst, uri

    def test_migrate(self):
        page_a = self.platform.ram(PAGE_A)
        page_b = self.platform.ram(PAGE_B)
        src_be, dst_be, src, dst, uri = self.migration_pair()
        monitor = RingHandoffMonitor(src_be, dst_be)

        for page in (page_a, page_b):
            src.qtest.memset(page, 4096, OLD)
        hold = self.migrate_holding_handoff(src, dst, src_be, uri)

        src_be.wait_log_base(timeout=self.scaled(10))
        log = src_be.state.log
        top = max(g + s for g, s in src_be.state.memory.ram_ranges())
        expected_log = ((top - 1) // LOG_CHUNK + 1) * 8
        self.log.info("dirty log: %d bytes for RAM up to 0x%x", log.size, top)
        self.assertEqual(log.size, expected_log,
                         f"a {log.size}-byte log for RAM up to 0x{top:x}: "
                         "one bit per 4 KiB page from address 0, in 64-bit "
                         f"words, is {expected_log} bytes")
        if src.spec.mem_mb == 256 and self.platform.ram_base == 0:
            self.assertEqual(log.size, 8192)

        self.assertTrue(hold.reached.wait(self.scaled(30)),
                        "QEMU never stopped the source rings (no "
                        "GET_VRING_BASE): " + src_be.describe())
        with src_be.lock():
            memory = src_be.state.memory
            for page in (page_a, page_b):
                memory.write(page, bytes([NEW]) * 4096)
            src_be.mark_dirty(page_a, 4096)
        hold.release.set()

        src.machine.event_wait("STOP", timeout=self.scaled(30))
        failure = self.wait_migration(src, dst)
        self.assertIsNone(failure, failure)
        dst_be.wait_rings_started(2, timeout=self.scaled(10))

        seen_a = dst.qtest.memread(page_a, 4096)
        seen_b = dst.qtest.memread(page_b, 4096)
        self.log.info("destination: A=%02x.. B=%02x..", seen_a[0], seen_b[0])
        self.assertTrue(seen_a == bytes([NEW]) * 4096,
                        f"page 0x{page_a:x}, written and logged by the source "
                        f"back-end, reads {seen_a[:8].hex()}.. on the "
                        f"destination instead of {NEW:02x}..: the dirty log "
                        "was not honoured")
        self.assertTrue(seen_b == bytes([OLD]) * 4096,
                        f"negative control: page 0x{page_b:x}, written but not "
                        f"logged, reads {seen_b[:8].hex()}.. on the "
                        "destination; it should have stayed stale, so this "
                        "test cannot tell a working log from a broken one")
        # The destination back-end maps the destination's memory.
        self.assertEqual(dst_be.state.memory.read(page_a, 4096), seen_a)

        self.log.info("ring handoff:\n%s", monitor.timeline())
        monitor.check()
        stops = [e for e in monitor.events if e.side == "source"
                 and e.event is RingEvent.STOPPED]
        starts = [e for e in monitor.events if e.side == "destination"
                  and e.event is RingEvent.STARTED]
        self.assertEqual(sorted(e.ring for e in stops), [0, 1])
        self.assertEqual(sorted(e.ring for e in starts), [0, 1])

    def test_logging_messages(self):
        """While migrating, the front-end turns logging on as the spec says:
        VHOST_F_LOG_ALL, VHOST_VRING_F_LOG with the used ring's guest
        address, and a log covering all guest RAM."""
        src_be, dst_be, src, dst, uri = self.migration_pair()
        for vm in (src, dst):
            vm.qmp("migrate-set-capabilities", capabilities=[
                {"capability": "events", "state": True}])
        src.qmp("migrate", uri=uri)
        failure = self.wait_migration(src, dst)
        self.assertIsNone(failure, failure)

        queues = src.device.queues
        used_gpa = {q.index: q.used for q in queues}
        used_len = {q.index: split_sizes(q.size)[2] for q in queues}
        top = max(g + s for g, s in src_be.state.memory.ram_ranges())
        messages = migration_log.connection_messages(src_be.trace.entries, 1)
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
