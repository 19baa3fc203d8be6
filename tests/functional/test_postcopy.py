"""
Postcopy live migration with a vhost-user back-end (PAGEFAULT).

In postcopy the destination VM runs before its memory has arrived, and
the destination back-end touches guest memory QEMU does not have yet.
The spec's sequence, judged as it runs: POSTCOPY_ADVISE (the back-end
answers with a userfaultfd), POSTCOPY_LISTEN, a memory table whose reply
gives the back-end's own addresses, the front-end's acknowledgement, then
faults on the back-end's mappings that QEMU serves by fetching the page
from the source, and POSTCOPY_END.

The story: the source back-end sends nothing (its transmit budget is 0),
so 64 frames wait in the transmit ring in guest memory; 64 receive
buffers are posted.  The migration is throttled to 1 KiB/s and switched
to postcopy at once, and 3 MiB of non-zero RAM lie ahead of the rings in
the stream's path (zero pages cost it nothing), so those pages are still
on the source when the destination starts.  The destination back-end transmits the 64 frames and
writes 64 received frames; the claims are that every frame comes out once
and intact both ways, that the back-end faulted pages in through its
userfaultfd (counted before each touch), and that the sequence above was
followed.  Time to switch-over is logged.

What QEMU needs (read in ``migration/postcopy-ram.c`` and
``hw/virtio/vhost-user.c``): the postcopy-ram capability on both sides,
the back-end's PAGEFAULT, shared guest memory, a userfaultfd in the
back-end, and an answer to POSTCOPY_LISTEN -- QEMU always asks for one,
whether or not REPLY_ACK was negotiated.
"""

import random
import time
from dataclasses import replace

from avocado_vhost.peers.qemu.driver import NET_HDR
from avocado_vhost.peers.qemu.platform import SCRATCH_WINDOW
from avocado_vhost.scenarios import migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature, Request
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.virtio import NET_HDR_LEN

FRAMES = 64
THROTTLE = 1024  # bytes per second: pages come only when asked for


class Postcopy(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration,postcopy
    """

    def setUp(self):
        super().setUp()
        self.require_protocol(ProtocolFeature.REPLY_ACK, "QEMU waits for an "
                              "answer to POSTCOPY_LISTEN and POSTCOPY_END")

    def cross(self, register=True):
        """The story; what went wrong (empty: nothing), the pages the
        destination back-end faulted in, and that back-end.  ``register=False`` is the
        negative control: a destination back-end that does not register
        its mappings with the userfaultfd."""
        rng = random.Random(11)
        port = Port()
        config = BackendConfig()
        config.protocol_features |= int(ProtocolFeature.PAGEFAULT)
        src_dev, dst_dev = NetDevice(port), NetDevice(port)
        src_dev.tx_budget = 0  # the frames wait in guest memory
        src_be = self.make_backend("src", config, device=src_dev)
        dst_config = replace(config, postcopy_register=register)
        dst_be = self.make_backend("dst", dst_config, device=dst_dev)
        src = self.make_vm("src", src_be.listener_path)
        uri = "unix:" + self.socket_path("migration")
        dst = self.make_vm("dst", dst_be.listener_path, incoming=uri)
        self.start_vm(src, src_be, rings=2)
        dst.launch()
        # RAM ahead of the rings is not zero: a zero page costs the stream
        # nothing, and the throttled stream must not reach the frames
        start, end = src.spec.platform.window(SCRATCH_WINDOW)
        src.qtest.memset(start, end - start, 0xA5)
        rxq, txq = src.net_queues()
        sent = [rng.randbytes(1400) for _ in range(FRAMES)]
        txq.post_out([NET_HDR + f for f in sent])
        rxq.post_in(FRAMES)

        for vm in (src, dst):
            vm.qmp("migrate-set-capabilities", capabilities=[
                {"capability": c, "state": True}
                for c in ("events", "postcopy-ram")])
        src.qmp("migrate-set-parameters", **{
            "max-bandwidth": THROTTLE, "max-postcopy-bandwidth": THROTTLE})
        migration.need_log_fd(self)
        src.qmp("migrate", uri=uri)
        started = time.monotonic()
        src.qmp("migrate-start-postcopy")
        if dst.events_or_exit([("RESUME", None)], self.scaled(30),
                              "the destination to run (postcopy)") is None:
            return [f"the destination died at the switch-over: "
                    f"{dst.log_tail(6)}"], 0, dst_be
        switchover = time.monotonic() - started
        dst_be.wait_rings_started(2, timeout=self.scaled(10))

        # The destination takes the frames the source left (faulting their
        # pages in) and fills the guest's receive buffers.
        problems = []
        received = [rng.randbytes(1000) for _ in range(FRAMES)]
        try:  # a second in a good run; what a blind back-end misses
            port.wait_sent(FRAMES, self.scaled(5))
            with port.cond:
                port.wire.extend(received)
            dst_be.poke()
            port.wait_received(FRAMES, self.scaled(5))
        except TimeoutError as exc:
            problems.append(str(exc))
        faults = dst_be.state.fault_in.pages \
            if dst_be.state.fault_in is not None else 0

        # Let the rest of the memory come, and the migration end.
        src.qmp("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
        try:  # a second in a good run
            end = src.events_or_exit(
                [("MIGRATION", {"data": {"status": s}}) for s in (
                    "completed", "failed", "cancelled", "postcopy-paused")],
                self.scaled(15), "the end of the migration")
            status = end["data"]["status"] if end else "source died"
        except TimeoutError:
            end = None
            status = ("not over after 15 s: "
                      + str(src.qmp("query-migrate").get("status")))
        ram = src.qmp("query-migrate").get("ram", {}) if end else {}
        self.log.info("switch-over %.2f s after migrate-start-postcopy; %d "
                      "pages faulted in through the destination back-end; "
                      "the source served %s page requests and sent %s pages "
                      "(%s zero); migration %s", switchover, faults,
                      ram.get("postcopy-requests"), ram.get("normal"),
                      ram.get("duplicate"), status)
        if status != "completed":
            problems.append(f"migration {status}: {dst.log_tail(3)}")
        out = [s.data for s in port.sent]
        damaged = sum(a != b for a, b in zip(out, sent))
        if damaged or len(out) != len(sent):
            problems.append(f"{damaged} of {len(sent)} transmitted frames "
                            f"damaged ({len(out)} came out)")
        if status == "completed":
            for queue in (rxq, txq):
                queue.move_to(dst.qtest)
            got = [rxq.read_buffer(h, n)[NET_HDR_LEN:] for h, n in rxq.reap()]
            if got != received:
                problems.append(f"{sum(a != b for a, b in zip(got, received))}"
                                f" of {len(received)} received frames damaged"
                                f" ({len(got)} arrived)")
        return problems, faults, dst_be

    def test_frames_cross_a_postcopy_migration(self):
        """Every frame waiting in guest memory on the source is sent once
        and intact by the destination, every frame sent to the guest
        arrives, with pages faulted in through the back-end, in the spec's
        sequence."""
        problems, faults, dst_be = self.cross()
        self.assertEqual(problems, [])
        self.assertGreater(faults, 0, "the destination back-end never met a "
                           "missing page: the check proved nothing")
        received_by_dst = dst_be.trace.received()
        for request in (Request.POSTCOPY_ADVISE, Request.POSTCOPY_LISTEN,
                        Request.POSTCOPY_END):
            self.assertIn(request, received_by_dst)
        self.check_backends()

    def test_negative_control_a_back_end_without_userfaults(self):
        """Negative control: a destination back-end that maps guest memory
        but does not register it with its userfaultfd reads pages that
        have not arrived -- as zeros -- and the check above must see the
        damage (or the migration fail)."""
        problems, _, dst_be = self.cross(register=False)
        self.expect_failure(dst_be)  # blind on purpose
        self.log.info("negative control found: %s", problems)
        self.assertTrue(problems, "a back-end blind to missing pages went "
                        "unnoticed")

if __name__ == "__main__":
    main()
