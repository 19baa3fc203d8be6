"""
The suite's scenarios against an external back-end, through the
conformance proxy: the conformance kit's verdicts.

``-p backend=NAME`` names a real back-end of the kit (dpdk, qsd,
vhost-user-blk, vhost-user-bridge: ``avocado_vhost/peers/external/backends.py``);
``-p backend_cmd='COMMAND ... {socket} ...'`` one of your own (with ``-p
backend_device=net|blk``).  Without either these tests CANCEL, and so do
the scenarios of the other device type.  The proxy sits between QEMU and
the back-end, so every message is decoded and both sides judged: a rule
broken by either side fails the scenario, unless it is listed with ``-p
backend_allow=FILE`` (side, text, why).  The scenarios need no hook inside
the back-end: what it does is seen from the driver's side (the test's
virtio driver over qtest), from the disk image, and from the proxy's
trace.  The net traffic scenario needs a back-end that loops frames back
(DPDK's vhost PMD in testpmd's io forwarding does; the vhost-user bridge
with its UDP side sent to itself does).  ``scripts/test-all`` runs them
against all four back-ends of the kit.
"""

import os
import sys
import time

from avocado_vhost.peers.external import launch as external
from avocado_vhost.peers.external.backends import DISK_SIZE
from avocado_vhost.peers.qemu.driver import NET_HDR
from avocado_vhost.scenarios.migration import migrate, wait_migration
from avocado_vhost.scenarios.proxied import check_proxy, make_proxy
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import Request, VirtioFeature
from avocado_vhost.vhost_user.blk import HEADER, S_OK, SECTOR, T_IN, T_OUT
from avocado_vhost.virtio import fuse

QUEUE_SIZE = 64


class ExternalScenarios(VhostUserTest):
    """What the scenarios of every device type share."""

    #: the device type the class's scenarios are written for
    DEVICE = "net"
    #: the VM's device options for it
    VM_SPEC = {}

    #: a back-end of the test's own instead of the parameters' (for the
    #: verdict's negative controls)
    own_backend = None

    def start_backend(self, name="ext", queues=1):
        return external.start_backend(self, name, queues, self.DEVICE,
                                      self.own_backend)

    def through_proxy(self, queues=1, **spec):
        _, sock = self.start_backend("ext", queues)
        proxy = make_proxy(self, "proxy", sock)
        vm = self.make_vm("vm", self.socket_path("proxy"), queues=queues,
                          **dict(self.VM_SPEC, **spec))
        return proxy, vm

    def verdict(self, proxy):
        """What either side did against the spec is the scenario's verdict:
        a rule broken fails it, unless it is a known QEMU defect or a
        deviation of the back-end listed with ``-p backend_allow=``."""
        self.log.info("verdict through the proxy: %s", proxy.violations
                      or "no violation on either side")
        return check_proxy(self, proxy)

    def wait_requests(self, proxy, request, count, timeout=20.0):
        """Until the proxy relayed ``count`` ``request`` messages."""
        proxy.wait_for(lambda: len(proxy.trace.payloads(request)) >= count,
                       f"{count} {request}", self.scaled(timeout))

    def reconnect_after_kill(self, rings, **spec):
        """The back-end dies (SIGKILL) and a new one starts on the same
        socket: QEMU reconnects through the proxy and starts the device
        again from scratch; the proxy records both conversations."""
        delay = 50 if self.caps.reconnect_ms else 1
        proc, _ = self.start_backend("ext")
        proxy = make_proxy(self, "proxy", self.socket_path("ext"))
        vm = self.make_vm("vm", self.socket_path("proxy"), reconnect=delay,
                          **dict(self.VM_SPEC, **spec))
        vm.launch()
        vm.drive_device(queues=rings, queue_size=QUEUE_SIZE)
        self.wait_requests(proxy, "SET_VRING_KICK", rings)
        proc.kill()
        proc.wait(self.scaled(10))
        proxy.wait_for(lambda: any(
            e.request == "DISCONNECTED" for e in proxy.trace.select("event")),
            "the proxy to see the back-end go", self.scaled(10))
        self.start_backend("ext")  # a new one, same socket
        # QEMU goes before this back-end does: killed under a running QEMU,
        # it would have QEMU reconnect into a proxy with nothing behind it
        self.cleanup(vm.shutdown)
        proxy.wait_for(lambda: proxy.connections >= 2 and len(
            proxy.trace.payloads(Request.SET_VRING_KICK)) >= 2 * rings,
            "QEMU to reconnect and start the rings again",
            self.scaled(30))
        return proxy, vm

    def migrate_between_two(self, rings, **spec):
        """Live migration between two back-ends, each behind a proxy:
        from the proxies' traces, the source's rings are stopped
        (GET_VRING_BASE answered) before the destination's start, and the
        destination starts each ring at the base the source reported."""
        _, src_sock = self.start_backend("ext-src")
        _, dst_sock = self.start_backend("ext-dst")
        src_proxy = make_proxy(self, "src-proxy", src_sock)
        dst_proxy = make_proxy(self, "dst-proxy", dst_sock)
        spec = dict(self.VM_SPEC, **spec)
        src = self.make_vm("src", self.socket_path("src-proxy"), **spec)
        uri = "unix:" + self.socket_path("migration")
        dst = self.make_vm("dst", self.socket_path("dst-proxy"),
                           incoming=uri, **spec)
        src.launch()
        src.drive_device(queues=rings, queue_size=QUEUE_SIZE)
        self.wait_requests(src_proxy, "SET_VRING_KICK", rings)
        dst.launch()
        migrate(self, src, dst, uri)
        self.assertIsNone(wait_migration(self, src, dst))
        self.wait_requests(dst_proxy, "SET_VRING_KICK", rings)
        stops = [e for e in src_proxy.trace.select("tx")
                 if e.request == "GET_VRING_BASE"]
        starts = [e for e in dst_proxy.trace.select("rx")
                  if e.request == "SET_VRING_KICK"]
        self.assertEqual(len(stops), rings, src_proxy.trace.tail(20))
        self.assertLess(max(e.wall for e in stops),
                        min(e.wall for e in starts),
                        "a destination ring started before the source's "
                        "rings were stopped")
        # keyed by the ring asked for (a reply naming another ring is the
        # verdict's business, below)
        asked = [e.payload.index for e in src_proxy.trace.select("rx")
                 if e.request == "GET_VRING_BASE"]
        reported = {ring: e.payload.num for ring, e in zip(asked, stops)}
        resumed = {p.index: p.num
                   for p in dst_proxy.trace.payloads(Request.SET_VRING_BASE)}
        self.assertEqual(resumed, reported,
                         "the destination did not resume where the source "
                         "stopped")
        self.verdict(src_proxy)
        self.verdict(dst_proxy)


class Verdict(ExternalScenarios):
    """
    The verdict's negative controls: this project's own back-end run as an
    external process (``python -m avocado_vhost serve``) with a planted
    deviation or crash; the same scenarios must fail on it -- and pass
    when the deviation is allowed, reporting it.

    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,kit
    """

    def serve(self, planted):
        self.own_backend = external.ExternalBackend(
            "custom", "net", f"{sys.executable} -m avocado_vhost serve "
            f"{{socket}} --quiet {planted}")

    def test_a_deviation_of_the_back_end_fails_the_scenario(self):
        """GET_VRING_BASE's reply naming another ring: QEMU lets it pass,
        the proxy does not, and neither does the verdict."""
        self.serve("--misname-ring")
        with self.assertRaisesRegex(AssertionError, "rules broken"):
            self.migrate_between_two(rings=2)
        self.assertIn("vring-base-of-the-ring-asked",
                      [v.rule for p in self.proxies for v in p.violations])

    def test_an_allowed_deviation_passes_and_is_reported(self):
        self.serve("--misname-ring")
        allow = os.path.join(self.workdir_short, "allow.txt")
        with open(allow, "w") as f:
            f.write("back-end | vring-base-of-the-ring-asked | the planted "
                    "deviation of this test\n")
        self.allow_list = allow
        self.migrate_between_two(rings=2)
        self.assertTrue(self.found.accepted_deviations)
        self.assertTrue(all("allowed: the planted deviation" in a
                            for a in self.found.accepted_deviations))

    def test_a_back_end_that_crashes_fails_the_scenario(self):
        """The back-end aborts at SET_VRING_ENABLE, as the device starts:
        the start-up scenario's verdict names the crash."""
        self.serve("--crash-on SET_VRING_ENABLE")
        proxy, vm = self.through_proxy()
        vm.launch()
        vm.drive_device(queues=2, queue_size=QUEUE_SIZE)
        proxy.wait_for(lambda: external.deaths(self),
                       "the back-end to die", self.scaled(10))
        with self.assertRaisesRegex(AssertionError, "SIGABRT"):
            self.verdict(proxy)


class ExternalNet(ExternalScenarios):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,external
    """

    DEVICE = "net"

    def test_start_up(self):
        """QEMU starts the device through the proxy: every ring gets its
        kick fd, and the conversation is judged."""
        proxy, vm = self.through_proxy()
        vm.launch()
        vm.drive_device(queues=2, queue_size=QUEUE_SIZE)
        self.wait_requests(proxy, "SET_VRING_KICK", 2)
        self.verdict(proxy)

    def test_two_queue_pairs(self):
        """With VIRTIO_NET_F_MQ, both queue pairs' rings start (a back-end
        that does not offer it has no such scenario: CANCEL)."""
        proxy, vm = self.through_proxy(queues=2)
        vm.launch()
        self.wait_requests(proxy, "GET_FEATURES", 1)
        offered = proxy.trace.select("tx")
        offer = next(e.payload.value for e in offered
                     if e.request == "GET_FEATURES")
        if not offer & VirtioFeature.NET_F_MQ:
            self.verdict(proxy)
            self.cancel(f"the back-end does not offer VIRTIO_NET_F_MQ "
                        f"(features {offer:#x}): one queue pair only")
        vm.drive_device(queues=5, queue_size=QUEUE_SIZE,
                        features=VirtioFeature.NET_F_MQ
                        | VirtioFeature.NET_F_CTRL_VQ)
        self.wait_requests(proxy, "SET_VRING_KICK", 4)
        rings = {p.index for p in proxy.trace.payloads(Request.SET_VRING_ENABLE)}
        self.assertEqual(rings, {0, 1, 2, 3})
        self.verdict(proxy)

    def test_loopback_traffic(self):
        """Frames the test's driver transmits come back into its receive
        buffers byte for byte: the external back-end read and wrote the
        guest memory QEMU gave it (through the proxy's fds)."""
        proxy, vm = self.through_proxy()
        vm.launch()
        vm.drive_device(queues=2, queue_size=QUEUE_SIZE)
        self.wait_requests(proxy, "SET_VRING_KICK", 2)
        rxq, txq = vm.net_queues()
        frames = [bytes([0xff] * 6 + [2, 0, 0, 0, 0, 1, 0x88, 0xb5])
                  + i.to_bytes(4, "big") + bytes(range(40)) for i in range(32)]
        rxq.post_in(32)
        back = []
        for chunk in range(0, 32, 8):
            txq.post_out([NET_HDR + f for f in frames[chunk:chunk + 8]])
            deadline = time.monotonic() + self.scaled(10)
            while len(back) < chunk + 8 and time.monotonic() < deadline:
                for head, length in rxq.reap():  # a qtest round trip each
                    back.append(rxq.read_buffer(head, length)[len(NET_HDR):])
            txq.reap()
        self.assertEqual(back, frames, "frames lost, changed or reordered "
                         "by the external back-end's loopback")
        self.verdict(proxy)

    def test_reconnect(self):
        self.verdict(self.reconnect_after_kill(rings=2)[0])

    def test_migrate(self):
        self.migrate_between_two(rings=2)


def pattern(number):
    """The sector request ``number`` writes."""
    return bytes((number * 29 + i) & 0xFF for i in range(SECTOR))


class ExternalBlk(ExternalScenarios):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,external,blk
    """

    DEVICE = "blk"
    VM_SPEC = {"device": "vhost-user-blk-pci",
               "device_opts": ["num-queues=1"]}
    REQUESTS = 8
    #: sectors apart: each request has a 4 KiB block of its own
    STRIDE = 8

    def setUp(self):
        super().setUp()
        self.require_device("vhost-user-blk-pci")

    def started(self, vm, proxy):
        vm.launch()
        vm.drive_device(queues=1, queue_size=QUEUE_SIZE)
        self.wait_requests(proxy, "SET_VRING_KICK", 1)
        return vm.net_queues()[0]

    def complete(self, queue, heads, what):
        """Reap until every chain of ``heads`` came back, bounded."""
        done = []
        deadline = time.monotonic() + self.scaled(20)
        while len(done) < len(heads) and time.monotonic() < deadline:
            done += [head for head, _ in queue.reap()]  # a qtest round trip
        self.assertEqual(sorted(done), sorted(heads),
                         f"{what}: requests not completed by the back-end")

    def write_and_read(self, queue, first=0):
        """Write ``REQUESTS`` sectors, then read each back through the
        ring: every status OK and every sector as written."""
        posted = {}
        for number in range(first, first + self.REQUESTS):
            descs = queue.post_chain([HEADER.pack(T_OUT, 0, number *
                                                  self.STRIDE),
                                      pattern(number)], [1])
            posted[descs[0]] = (number, descs[-1])
        self.complete(queue, list(posted), "writes")
        statuses = {n: queue.read_buffer(d, 1)[0] for n, d in posted.values()}
        self.assertEqual(statuses, {n: S_OK for n in statuses},
                         "write statuses")
        reads = {}
        for number in range(first, first + self.REQUESTS):
            descs = queue.post_chain([HEADER.pack(T_IN, 0, number *
                                                  self.STRIDE)],
                                     [SECTOR, 1])
            reads[descs[0]] = (number, descs[1], descs[2])
        self.complete(queue, list(reads), "reads")
        wrong = [n for n, data, status in reads.values()
                 if queue.read_buffer(status, 1)[0] != S_OK
                 or queue.read_buffer(data, SECTOR) != pattern(n)]
        self.assertEqual(wrong, [], "sectors that did not read back as "
                         "written")

    def disk_holds(self, name, first=0):
        """The back-end's disk image itself holds what the driver wrote
        (the data went to the disk, not only through the ring)."""
        disk = os.path.join(self.workdir_short,
                            f"{os.path.basename(self.workdir_short)}-"
                            f"{name}.img")
        if not os.path.exists(disk):
            self.log.info("no {disk} image (a backend_cmd of its own): "
                          "the image is not checked")
            return
        with open(disk, "rb") as f:
            for number in range(first, first + self.REQUESTS):
                f.seek(number * self.STRIDE * SECTOR)
                self.assertEqual(f.read(SECTOR), pattern(number),
                                 f"sector of request {number} in the image")

    def test_start_up(self):
        """QEMU starts the device through the proxy; the capacity the
        driver reads in the configuration space is the disk's."""
        proxy, vm = self.through_proxy()
        self.started(vm, proxy)
        capacity = (vm.device.config_read(0, 4)
                    | vm.device.config_read(4, 4) << 32)
        self.log.info("capacity read by the driver: %d sectors", capacity)
        if self.found.external_backend != "custom":  # it serves the kit's {disk}
            self.assertEqual(capacity * SECTOR, DISK_SIZE,
                             "the capacity is not the disk image's size")
        self.verdict(proxy)

    def test_io(self):
        """Eight writes and eight reads through the ring: every request
        completes with status OK, reads return what was written, and the
        disk image holds it."""
        proxy, vm = self.through_proxy()
        queue = self.started(vm, proxy)
        self.write_and_read(queue)
        self.disk_holds("ext")
        self.verdict(proxy)

    def test_reconnect(self):
        """After a kill and a new back-end on the same socket, I/O works
        again (and the in-flight area, if negotiated, was handed over)."""
        proxy, vm = self.reconnect_after_kill(rings=1)
        if proxy.trace.payloads(Request.GET_INFLIGHT_FD):
            self.assertTrue(proxy.trace.payloads(Request.SET_INFLIGHT_FD),
                            "QEMU did not hand the in-flight area to the "
                            "new back-end")
        self.write_and_read(vm.net_queues()[0], first=self.REQUESTS)
        self.verdict(proxy)

    def test_migrate(self):
        self.migrate_between_two(rings=1)


class ExternalFs(ExternalScenarios):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,external,fs
    """

    DEVICE = "fs"
    VM_SPEC = {"device": "vhost-user-fs-pci",
               "device_opts": ["tag=kit", "queue-size=64"]}
    #: a file the back-end shares, and what the driver must read from it
    NAME = "hello.txt"
    CONTENT = bytes(range(256)) * 8

    def setUp(self):
        super().setUp()
        self.require_device("vhost-user-fs-pci")

    def share(self):
        """Put the file in the folder ``{share}`` names (one for all the
        back-ends of the test), before they start."""
        folder = os.path.join(self.workdir_short, "share")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, self.NAME), "wb") as f:
            f.write(self.CONTENT)

    def started(self, vm, proxy):
        """The device to DRIVER_OK: its hiprio queue and one request
        queue; the request queue's driver."""
        vm.launch()
        vm.drive_device(queues=2, queue_size=QUEUE_SIZE)
        self.wait_requests(proxy, "SET_VRING_KICK", 2)
        return vm.net_queues()[1]

    def call(self, queue, message, reply_size):
        """One FUSE request through the ring; its reply's body."""
        descs = queue.post_chain([message],
                                 [fuse.OUT_HEADER.size + reply_size])
        deadline = time.monotonic() + self.scaled(20)
        done = []
        while not done and time.monotonic() < deadline:
            done = queue.reap()  # a qtest round trip each
        self.assertEqual([head for head, _ in done], [descs[0]],
                         f"FUSE opcode {message[4]} not completed")
        length, error, unique, body = fuse.reply(queue.read_buffer(
            descs[1], fuse.OUT_HEADER.size + reply_size))
        self.assertEqual((error, unique), (0, int.from_bytes(
            message[8:16], "little")), f"FUSE opcode {message[4]}")
        return body[:length - fuse.OUT_HEADER.size]

    def read_through_the_ring(self, queue):
        """INIT, LOOKUP, OPEN, READ: the file's bytes as the driver sees
        them, checked against what the test wrote on the host."""
        body = self.call(queue, fuse.init(1), fuse.INIT_OUT_SIZE)
        self.assertEqual(int.from_bytes(body[:4], "little"), 7,
                         "FUSE major version")
        found = fuse.entry(self.call(queue, fuse.lookup(2, self.NAME),
                                     fuse.ENTRY_OUT_SIZE))
        self.assertEqual(found.size, len(self.CONTENT), "the file's size")
        fh = int.from_bytes(self.call(queue, fuse.open_file(3, found.nodeid),
                                      fuse.OPEN_OUT_SIZE)[:8], "little")
        data = self.call(queue, fuse.read(4, found.nodeid, fh,
                                          len(self.CONTENT)),
                         len(self.CONTENT))
        self.assertEqual(data, self.CONTENT, "the file read through the "
                         "ring is not the file on the host")

    def test_start_up(self):
        """QEMU starts the device through the proxy: both rings get their
        kick fd; the driver reads the tag from the configuration space."""
        self.share()
        proxy, vm = self.through_proxy()
        self.started(vm, proxy)
        tag = bytes(vm.device.config_read(i, 1) for i in range(3))
        self.assertEqual(tag, b"kit", "the tag in the configuration space")
        self.verdict(proxy)

    def test_io(self):
        """A file read through the request queue (FUSE INIT, LOOKUP, OPEN,
        READ) is byte for byte the file the back-end shares."""
        self.share()
        proxy, vm = self.through_proxy()
        self.read_through_the_ring(self.started(vm, proxy))
        self.verdict(proxy)

    def test_reconnect(self):
        """QEMU's vhost-user-fs has no reconnect: with a reconnecting
        chardev it does not wait for the back-end at realize and fails
        ("Failed to set msg fds", 10.2.2); nothing to run."""
        self.cancel("QEMU's vhost-user-fs-pci does not support a "
                    "reconnecting chardev (no scenario)")

    def test_migrate(self):
        """Both back-ends share the same folder (as with shared storage);
        the device state goes from one to the other through QEMU."""
        self.share()
        self.migrate_between_two(rings=2)


if __name__ == "__main__":
    main()
