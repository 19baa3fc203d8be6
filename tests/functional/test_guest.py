"""
A real guest: Debian's Linux kernel drives the vhost-user virtio-net.

The qtest-driven tests play the guest themselves, one access at a time
with the vCPUs halted.  Here Linux's virtio-net driver runs (TCG), with
its interrupts, event suppression and buffer refills, concurrently with
the back-end's thread.  The back-end's host answers ARP and ICMP echo
(:mod:`avocado_vhost.peers.guest.netstack`), so traffic is counted on both
sides: what the guest's ping says, what the host saw, what the guest's
interface counted.
"""

from avocado_vhost.peers.guest.boot import GuestOptions, backend_config
from avocado_vhost.peers.guest.run import GuestFailure, GuestRun
from avocado_vhost.checks.handoff import RingHandoffMonitor
from avocado_vhost.checks.known_defects import DEFECTS
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.scenarios import migration
from avocado_vhost.scenarios.migration import migrate, wait_migration
from avocado_vhost.peers.guest.start import launch_guest_vm, start_guest
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import ProtocolFeature, Request

PINGS = 50
FRAMES = 200
CARRIER_CHANGES = "/sys/class/net/eth0/carrier_changes"
MIGRATION_PINGS = 300


class GuestTest(VhostUserTest):
    """What the guest tests share.

    :avocado: disable
    """

    timeout = 240

    def traffic(self, options):
        """Boot; every echo request answered once, nothing lost or doubled;
        frames from the host all counted by the guest, exactly."""
        guest = start_guest(self, options)
        self.log.info("guest up: %s", options.describe())
        sent, received = guest.ping(PINGS)
        self.assertEqual((sent, received), (PINGS, PINGS),
                         guest.explain("ping lost or doubled replies"))
        self.assertEqual(guest.responder.echo_anomalies(0, PINGS), "",
                         guest.explain("the host saw other echo requests"))
        counted = guest.send_to_guest(FRAMES)
        self.assertEqual(counted, FRAMES,
                         guest.explain("the guest counted another number "
                                       "of frames from the host"))
        self.log.info("counts: %s; guest counted %d of %d frames",
                      dict(guest.responder.counts), counted, FRAMES)
        self.check_backends()
        return guest

    def options(self, **kwargs):
        """The device for a feature test: MSI-X on (the device default)
        where QEMU survives it under TCG; off on a QEMU that carries the
        MSI-X crash (test_msix_on reports it), so that the feature is
        still tested there."""
        msix = not DEFECTS["msix-tcg-irqfd"].carried_by(
            self.caps.version_tuple)
        if not msix:
            self.log.info("MSI-X off: QEMU %s has the MSI-X crash under TCG "
                          "(test_msix_on reports it)", self.caps.version)
        return GuestOptions(msix=msix, **kwargs)



class Guest(GuestTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,guest
    """

    def test_msix_on(self):
        """MSI-X on, the device default (QEMU < 8.0: the known defect
        msix-tcg-irqfd, reported as such, never a pass)."""
        self.traffic(GuestOptions(msix=True))

    def test_msix_off(self):
        """INTx instead of MSI-X (``vectors=0``)."""
        self.traffic(GuestOptions(msix=False))

    def test_packed(self):
        self.traffic(self.options(packed=True))

    def test_two_queue_pairs(self):
        """Two pairs, two vCPUs: a ping from each CPU leaves by that CPU's
        transmit queue (XPS), and both queues carried frames."""
        guest = self.traffic(self.options(queues=2))
        guest.run("ethtool -L eth0 combined 2 2>/dev/null; true")
        for cpu in (0, 1):
            out = guest.run(f"taskset -c {cpu} ping -c 5 -i 0.02 10.0.2.1 "
                            "| tail -n 2")
            self.assertIn("5 packets received", out, guest.explain(out))
        rings = {frame.ring for frame in guest.port.sent}
        self.assertEqual(rings, {1, 3},
                         guest.explain("not both transmit queues carried "
                                       f"frames: rings {sorted(rings)}"))

    def test_no_mergeable_buffers(self):
        self.traffic(self.options(mrg_rxbuf=False))

    def test_no_event_idx(self):
        self.traffic(self.options(event_idx=False))

    def test_driver_reload(self):
        """rmmod and insmod virtio_net: the driver resets the device, QEMU
        stops the rings (GET_VRING_BASE) and starts them again; the
        conformance rules judge every message; traffic resumes."""
        guest = self.traffic(self.options())
        stops = guest.backend.trace.payloads(Request.GET_VRING_BASE)
        resets = self.resets(guest)
        guest.run("rmmod virtio_net && insmod /lib/modules/virtio_net.ko")
        guest.link_up(self.scaled(30))
        self.assertGreater(
            len(guest.backend.trace.payloads(Request.GET_VRING_BASE)),
            len(stops), guest.explain("the rings were never stopped"))
        self.assert_reset_reached_the_back_end(guest, resets)
        sent, received = guest.ping(PINGS)
        self.assertEqual((sent, received), (PINGS, PINGS),
                         guest.explain("no traffic after the reload"))

    def resets(self, guest):
        return len(guest.backend.trace.select("rx", Request.RESET_DEVICE))

    def assert_reset_reached_the_back_end(self, guest, before):
        """With RESET_DEVICE offered, QEMU 9.1+ passes the driver's virtio
        reset on (2688e8df60, "virtio: Always reset vhost devices")."""
        if (guest.backend.state.protocol_negotiated(
                ProtocolFeature.RESET_DEVICE)
                and self.caps.version_tuple >= (9, 1, 0)):
            self.assertGreater(self.resets(guest), before, guest.explain(
                "the guest reset the device; the back-end got no "
                "RESET_DEVICE"))

    def test_backend_reconnect(self):
        """The back-end drops the connection while the guest runs: QEMU
        (the client) reconnects, the guest sees the link go down and up,
        and traffic resumes with nothing lost or doubled."""
        delay = 50 if self.caps.reconnect_ms else 1
        guest = start_guest(self, self.options(), reconnect=delay)
        self.assertEqual(guest.ping(PINGS), (PINGS, PINGS),
                         guest.explain("no traffic before the drop"))
        changes = int(guest.run(f"cat {CARRIER_CHANGES}").split()[-1])
        guest.backend.disconnect()
        guest.backend.wait_for(
            lambda: guest.backend.connections >= 2 and sum(
                r.started for r in guest.backend.state.vrings.values()) == 2,
            "QEMU to reconnect and restart both rings", self.scaled(30))
        guest.link_up(self.scaled(30))
        now = int(guest.run(f"cat {CARRIER_CHANGES}").split()[-1])
        self.assertGreaterEqual(now - changes, 2, guest.explain(
            "the guest never saw the link go down and up"))
        seqs = len(guest.responder.echo_seqs)
        self.assertEqual(guest.ping(PINGS), (PINGS, PINGS),
                         guest.explain("no traffic after the reconnect"))
        self.assertEqual(guest.responder.echo_anomalies(seqs, PINGS), "",
                         guest.explain("echo requests lost or doubled"))
        self.assertEqual(guest.send_to_guest(FRAMES), FRAMES,
                         guest.explain("frames from the host lost or "
                                       "doubled after the reconnect"))

    def test_reboot(self):
        """The guest reboots (``reboot -f``): the device is reset, the
        kernel boots again, and traffic resumes."""
        guest = self.traffic(self.options())
        resets = self.resets(guest)
        mark = guest.console.position
        guest.console.write("reboot -f\n")
        guest.wait_ready(self.scaled(90), since=mark)
        self.assert_reset_reached_the_back_end(guest, resets)
        sent, received = guest.ping(PINGS)
        self.assertEqual((sent, received), (PINGS, PINGS),
                         guest.explain("no traffic after the reboot"))


class GuestMigration(GuestTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,guest,migration
    """

    def test_migrate_while_pinging(self):
        self.migrate_while_pinging()

    def test_negative_control_base_zero(self):
        """The same migration with a source back-end that answers
        GET_VRING_BASE with 0: the destination starts the rings at 0,
        replays old requests and overwrites used entries, and the checks
        above must notice (duplicates, lost replies or a broken guest)."""
        with self.assertRaises(AssertionError) as caught:
            self.migrate_while_pinging(base_override=0)
        # Both back-ends see the broken handoff (a ring resumed at 0 is
        # "ahead" by everything the guest posted): that is the point.
        for backend in self.backends:
            self.expect_failure(backend)
        self.log.info("caught, as it must be: %s",
                      str(caught.exception).splitlines()[0])

    def test_negative_control_an_unlogged_byte_is_seen(self):
        """The same migration, and one byte of the source's RAM changed
        through its back-end's mapping, unlogged, once the migration has
        completed: the comparison of the two RAMs must name that page.
        (Unlogged writes to the receive buffers during the migration do
        not show: this guest's own writes to those pages carry them.)"""
        with self.assertRaises(AssertionError) as caught:
            self.migrate_while_pinging(unlogged_write=0x1234567)
        self.log.info("caught: %s", caught.exception)
        ram = next(self.backends[0].state.memory.ram_ranges())[0]
        # (other pages may be named too, on a QEMU that loses them: the
        # test above reports that)
        self.assertIn(f"\n  page 0x{ram + 0x1234000:x} (first difference "
                      "at +0x567; ", str(caught.exception),
                      "the comparison did not name the page changed")
        for backend in self.backends:
            self.expect_failure(backend)

    @staticmethod
    def missing_replies(run):
        """Which echo replies the guest's ping never saw (its per-reply
        lines name each seq; the ring handoff times are in the log)."""
        out = run.run("grep -o 'seq=[0-9]*' /tmp/ping.txt | "
                      "tr -d 'seq=' | tr '\\n' ' '")
        seen = {int(n) for n in out.split() if n.isdigit()}
        missing = sorted(set(range(MIGRATION_PINGS)) - seen)
        return (f"missing seq {missing[:20]} (0.02 s apart from the "
                "first)" if missing else "every seq answered once")

    def migrate_while_pinging(self, base_override=None, unlogged_write=None):
        """Live migration while the guest pings the host every 20 ms and
        the host sends the guest a frame with every reply.

        The ring handoff is judged at every ring event (never both sides'
        rings at once).  The bound on loss is 0: a request the source had
        not taken is in its ring, which the destination resumes from the
        source's GET_VRING_BASE; a reply waiting on the wire is delivered
        by whichever back-end owns the receive ring; what the source wrote
        into guest buffers is in the dirty log.  So every request is
        answered once, and the guest counts every frame the host sent.
        """
        migration.need_log_fd(self)
        options = self.options()
        port = Port()
        src = start_guest(self, options, name="src", backend_name="src",
                          port=port)
        dst_be = self.make_backend("dst", backend_config(options),
                                   device=NetDevice(port))
        src.responder.poke = lambda: (src.backend.poke(), dst_be.poke())
        src.backend.vring_base_override = base_override
        uri = "unix:" + self.socket_path("migration")
        # paused on arrival (-S): its RAM is compared with the source's
        # before the guest runs there
        dst, dst_console = launch_guest_vm(self, "dst", dst_be, options,
                                           incoming=uri, extra=["-S"])
        monitor = RingHandoffMonitor(src.backend, dst_be)
        rx_before = src.rx_packets()
        replies_before = src.responder.counts["replies"]
        seqs_before = len(src.responder.echo_seqs)
        src.responder.chatter = 1
        src.run(f"ping -c {MIGRATION_PINGS} -i 0.02 -W 5 10.0.2.1 "
                "> /tmp/ping.txt 2>&1 & true")
        src.responder.wait_echoes(20, self.scaled(30))
        migrate(self, src.vm, dst, uri)
        arrived = dst.events_wait(
            [("MIGRATION", {"data": {"status": status}})
             for status in ("completed", "failed")], self.scaled(120))
        self.assertEqual((arrived or {}).get("data"), {"status": "completed"},
                         src.explain("the migration did not complete"))
        if unlogged_write is not None:  # an offset into the guest's RAM
            memory = src.backend.state.memory
            gpa = next(memory.ram_ranges())[0] + unlogged_write
            memory.write(gpa, bytes([memory.read(gpa, 1)[0] ^ 0xFF]))
        differ = migration.ram_differences(self, src.backend, dst)
        self.assertFalse(differ, src.explain(
            "the destination's RAM is not the source's after the migration "
            "(both stopped): these pages were not carried -- written by the "
            "source back-end and missing from the dirty log, or a log QEMU "
            "did not read:\n  " + "\n  ".join(differ)))
        dst.qmp("cont")
        failure = wait_migration(self, src.vm, dst, timeout=120)
        self.assertIsNone(failure, src.explain(str(failure)))
        # The handoff first: a broken one is what a crashed guest or lost
        # frames below would come from.
        dst_be.wait_rings_started(2, timeout=self.scaled(10))
        self.log.info("ring events:\n%s", monitor.timeline())
        monitor.check()
        # The same guest, on the destination's console now.
        on_dst = GuestRun(dst, dst_console, dst_be, port, src.responder,
                          options)
        out = on_dst.run("wait; tail -n 3 /tmp/ping.txt", self.scaled(60))
        sent, received = on_dst.ping_summary(out)
        self.log.info("ping across the migration: %d sent, %d received; "
                      "host: %s; ring events:\n%s", sent, received,
                      dict(src.responder.counts), monitor.timeline())
        monitor.check()
        if received != MIGRATION_PINGS:
            host_sent = (src.responder.counts["replies"] - replies_before
                         + MIGRATION_PINGS)
            try:  # which ones, and did the NIC count them?
                detail = (f"{self.missing_replies(on_dst)}; the guest's NIC "
                          f"counted {on_dst.rx_packets() - rx_before} frames"
                          f", the host sent {host_sent}")
            except GuestFailure as exc:
                detail = f"the guest no longer answers: {exc}"
            self.fail(on_dst.explain(
                f"echo replies lost across the migration: {sent} sent, "
                f"{received} received; {detail}"))
        self.assertEqual(sent, MIGRATION_PINGS, "pings not sent")
        self.assertEqual(src.responder.echo_anomalies(seqs_before,
                                                      MIGRATION_PINGS), "",
                         on_dst.explain("echo requests lost or doubled"))
        src.responder.chatter = 0
        with port.cond:
            self.assertEqual(len(port.wire), 0, "frames never delivered")
        host_sent = (src.responder.counts["replies"] - replies_before
                     + MIGRATION_PINGS)
        self.assertEqual(on_dst.rx_packets() - rx_before, host_sent,
                         on_dst.explain("the guest counted another number "
                                        "of frames than the host sent"))
        self.assertGreater(sum(dst_be.device.port.received.get(n, 0)
                               for n in ("dst",)), 0,
                           "the destination delivered nothing")


if __name__ == "__main__":
    main()
