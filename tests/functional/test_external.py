"""
The suite's scenarios against an external back-end, through the
conformance proxy.

``-p backend_cmd='COMMAND ... {socket} ...'`` names a back-end nobody here
wrote (``{socket}`` is where it must listen, ``{queues}`` the queue pairs,
``{name}`` a unique name); without it these tests CANCEL.  The proxy sits
between QEMU and it, so every message is decoded and both sides judged.
The scenarios need no hook inside the back-end: what it does is seen from
the guest side (the test's driver) and from the proxy's trace.  The
traffic scenario needs a back-end that loops frames back (DPDK's vhost PMD
in testpmd's io forwarding does).  ``scripts/test-all`` runs them against
DPDK's vhost PMD (Debian's dpdk-dev).
"""

import time

from avocado_vhost.qemu.driver import NET_HDR
from avocado_vhost.scenarios.migration import migrate, wait_migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import Request

QUEUE_SIZE = 64


class External(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,external
    """

    def through_proxy(self, queues=1, **spec):
        _, sock = self.start_external_backend("ext", queues)
        proxy = self.make_proxy("proxy", sock)
        vm = self.make_vm("vm", self.socket_path("proxy"), queues=queues,
                          **spec)
        return proxy, vm

    def verdict(self, proxy):
        """What either side did against the spec is the scenario's verdict:
        a rule broken fails it, unless it is a known QEMU defect or a
        deviation of the back-end listed with ``-p backend_allow=``."""
        self.log.info("verdict through the proxy: %s", proxy.violations
                      or "no violation on either side")
        return self.check_proxy(proxy)

    def wait_requests(self, proxy, request, count, timeout=20.0):
        """Until the proxy relayed ``count`` ``request`` messages."""
        proxy.wait_for(lambda: len(proxy.trace.payloads(request)) >= count,
                       f"{count} {request}", self.scaled(timeout))

    def test_start_up(self):
        """QEMU starts the device through the proxy: every ring gets its
        kick fd, and the conversation is judged."""
        proxy, vm = self.through_proxy()
        vm.launch()
        vm.drive_device(queues=2, queue_size=QUEUE_SIZE)
        self.wait_requests(proxy, "SET_VRING_KICK", 2)
        self.verdict(proxy)

    def test_two_queue_pairs(self):
        proxy, vm = self.through_proxy(queues=2)
        vm.launch()
        vm.drive_device(queues=5, queue_size=QUEUE_SIZE,
                        features=(1 << 22) | (1 << 17))
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
        """The external back-end dies (SIGKILL) and a new one starts on the
        same socket: QEMU reconnects through the proxy and starts the
        device again from scratch; the proxy records both conversations."""
        delay = 50 if self.caps.reconnect_ms else 1
        proc, _ = self.start_external_backend("ext")
        proxy = self.make_proxy("proxy", self.socket_path("ext"))
        vm = self.make_vm("vm", self.socket_path("proxy"), reconnect=delay)
        vm.launch()
        vm.drive_device(queues=2, queue_size=QUEUE_SIZE)
        self.wait_requests(proxy, "SET_VRING_KICK", 2)
        proc.kill()
        proc.wait(self.scaled(10))
        proxy.wait_for(lambda: any(
            e.request == "DISCONNECTED" for e in proxy.trace.select("event")),
            "the proxy to see the back-end go", self.scaled(10))
        self.start_external_backend("ext")  # a new one, same socket
        proxy.wait_for(lambda: proxy.connections >= 2 and len(
            proxy.trace.payloads(Request.SET_VRING_KICK)) >= 4,
            "QEMU to reconnect and start both rings again",
            self.scaled(30))
        self.verdict(proxy)

    def test_migrate(self):
        """Live migration between two external back-ends, each behind a
        proxy: from the proxies' traces, the source's rings are stopped
        (GET_VRING_BASE answered) before the destination's start, and the
        destination starts each ring at the base the source reported."""
        _, src_sock = self.start_external_backend("ext-src")
        _, dst_sock = self.start_external_backend("ext-dst")
        src_proxy = self.make_proxy("src-proxy", src_sock)
        dst_proxy = self.make_proxy("dst-proxy", dst_sock)
        src = self.make_vm("src", self.socket_path("src-proxy"))
        uri = "unix:" + self.socket_path("migration")
        dst = self.make_vm("dst", self.socket_path("dst-proxy"),
                           incoming=uri)
        src.launch()
        src.drive_device(queues=2, queue_size=QUEUE_SIZE)
        self.wait_requests(src_proxy, "SET_VRING_KICK", 2)
        dst.launch()
        migrate(self, src, dst, uri)
        self.assertIsNone(wait_migration(self, src, dst))
        self.wait_requests(dst_proxy, "SET_VRING_KICK", 2)
        stops = [e for e in src_proxy.trace.select("tx")
                 if e.request == "GET_VRING_BASE"]
        starts = [e for e in dst_proxy.trace.select("rx")
                  if e.request == "SET_VRING_KICK"]
        self.assertEqual(len(stops), 2, src_proxy.trace.tail(20))
        self.assertLess(max(e.wall for e in stops),
                        min(e.wall for e in starts),
                        "a destination ring started before the source's "
                        "rings were stopped")
        reported = {e.payload.index: e.payload.num for e in stops}
        resumed = {p.index: p.num
                   for p in dst_proxy.trace.payloads(Request.SET_VRING_BASE)}
        self.assertEqual(resumed, reported,
                         "the destination did not resume where the source "
                         "stopped")
        self.verdict(src_proxy)
        self.verdict(dst_proxy)


if __name__ == "__main__":
    main()
