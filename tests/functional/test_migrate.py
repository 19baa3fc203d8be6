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

The last point needs a moment when every page has been sent once and the
log is still read: QEMU stops the source's rings (GET_VRING_BASE) on the way
into the final migration stage, then syncs the vhost log.  The source
back-end holds its answer to the first GET_VRING_BASE; meanwhile the test
writes two pages through the source back-end's mapping and logs only one.
The unlogged page staying stale on the destination is the negative control:
it shows that the check would fail if logging were broken.
"""

from avocado_vhost.handoff import RingHandoffMonitor
from avocado_vhost.test import VhostUserTest

PAGE_A = 0x100000  # written and logged: must arrive
PAGE_B = 0x101000  # written, not logged: must stay stale (negative control)
OLD, NEW = 0x11, 0x42
LOG_CHUNK = 4096 * 64  # one u64 word of the log covers 64 pages


class Migrate(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,vhost-user,migration
    """

    def test_migrate(self):
        src_be = self.make_backend("src")
        dst_be = self.make_backend("dst")
        src = self.make_vm("src", src_be.listener_path)
        uri = "unix:" + self.socket_path("migration")
        dst = self.make_vm("dst", dst_be.listener_path, incoming=uri)
        self.start_vm(src, src_be, rings=2)
        dst.launch()
        monitor = RingHandoffMonitor(src_be, dst_be)

        for page in (PAGE_A, PAGE_B):
            src.qtest.memset(page, 4096, OLD)
        hold = self.migrate_holding_handoff(src, dst, src_be, uri)

        src_be.wait_log_base(timeout=self.scaled(10))
        log = src_be.state.log
        top = max(g + s for g, s in src_be.state.memory.ram_ranges())
        expected_log = ((top - 1) // LOG_CHUNK + 1) * 8
        self.log.info("dirty log: %d bytes for RAM up to 0x%x", log.size, top)
        self.assertEqual(log.size, expected_log)
        if src.spec.mem_mb == 256:
            self.assertEqual(log.size, 8192)

        self.assertTrue(hold.reached.wait(self.scaled(30)),
                        "QEMU never stopped the source rings (no "
                        "GET_VRING_BASE): " + src_be.describe())
        with src_be.lock():
            memory = src_be.state.memory
            for page in (PAGE_A, PAGE_B):
                memory.write(page, bytes([NEW]) * 4096)
            src_be.mark_dirty(PAGE_A, 4096)
        hold.release.set()

        src.machine.event_wait("STOP", timeout=self.scaled(30))
        failure = self.wait_migration(src, dst)
        self.assertIsNone(failure, failure)
        dst_be.wait_rings_started(2, timeout=self.scaled(10))

        page_a = dst.qtest.memread(PAGE_A, 4096)
        page_b = dst.qtest.memread(PAGE_B, 4096)
        self.log.info("destination: A=%02x.. B=%02x..", page_a[0], page_b[0])
        self.assertTrue(page_a == bytes([NEW]) * 4096,
                        f"page 0x{PAGE_A:x}, written and logged by the source "
                        f"back-end, reads {page_a[:8].hex()}.. on the "
                        f"destination instead of {NEW:02x}..: the dirty log "
                        "was not honoured")
        self.assertTrue(page_b == bytes([OLD]) * 4096,
                        f"negative control: page 0x{PAGE_B:x}, written but not "
                        f"logged, reads {page_b[:8].hex()}.. on the "
                        "destination; it should have stayed stale, so this "
                        "test cannot tell a working log from a broken one")
        # The destination back-end maps the destination's memory.
        self.assertEqual(dst_be.state.memory.read(PAGE_A, 4096), page_a)

        self.log.info("ring handoff:\n%s", monitor.timeline())
        monitor.check()
        stops = [e for e in monitor.events if e.side == "source"
                 and e.event == "stopped"]
        starts = [e for e in monitor.events if e.side == "destination"
                  and e.event == "started"]
        self.assertEqual(sorted(e.ring for e in stops), [0, 1])
        self.assertEqual(sorted(e.ring for e in starts), [0, 1])
        self.check_backends(src_be, dst_be)
