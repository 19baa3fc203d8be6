"""
The conformance proxy between QEMU and a back-end: every message and fd
passes through unchanged (the back-end sees exactly what QEMU sent, the
guest memory included), both directions are decoded and both sides judged.
"""

from avocado_vhost.scenarios.memory import assert_guest_memory_agrees
from avocado_vhost.peers.dpdk import start_testpmd
from avocado_vhost.scenarios.proxied import check_proxy, make_proxy
from avocado_vhost.test import VhostUserTest, main

#: what DPDK 22.11's vhost PMD prints once a device is started
DPDK_READY = r"virtio is now ready for processing"


class Proxy(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,proxy
    """

    def test_transparent_to_the_backend(self):
        """Through the proxy, the in-process back-end gets the same
        requests in the same order, with working fds (its rings start, it
        reads the guest memory QEMU shows), and the proxy finds no fault
        on either side."""
        backend = self.make_backend("backend")
        proxy = make_proxy(self, "proxy", backend.listener_path)
        vm = self.make_vm("vm", self.socket_path("proxy"))
        self.start_vm(vm, backend)
        assert_guest_memory_agrees(self, vm, backend)
        seen_by_proxy = [e.request for e in proxy.trace.select("rx")]
        self.assertEqual(seen_by_proxy,
                         [r.name for r in backend.trace.received()])
        self.assertEqual(len(proxy.trace.select("tx")),
                         len(backend.trace.select("tx")))
        self.assertEqual(proxy.violations + proxy.errors, [],
                         proxy.trace.tail(30))

    def test_a_backend_that_answers_wrongly_is_judged(self):
        """Negative control: a back-end that replies to GET_FEATURES with
        another request number is caught by the proxy's reply rules.

        :avocado: tags=quick
        """
        from avocado_vhost.vhost_user import Fault, FaultAction, Request, Side
        from avocado_vhost.vhost_user.message import HEADER, VERSION
        backend = self.make_backend("backend")
        backend.faults.append(Fault(
            FaultAction.REPLY, request=Request.GET_FEATURES,
            reply_bytes=lambda r, p: HEADER.pack(
                int(Request.GET_PROTOCOL_FEATURES), VERSION | 0x4, 8)
            + bytes(8)))
        proxy = make_proxy(self, "proxy", backend.listener_path)
        vm = self.make_vm("vm", self.socket_path("proxy"))
        vm.launch()
        backend.wait_for(lambda: len(proxy.violations) > 0,
                         "the proxy to judge the wrong reply",
                         self.scaled(10))
        first = proxy.violations[0]
        self.assertEqual((first.side, first.rule),
                         (Side.BACK_END, "reply-names-request"), str(first))
        self.assertIn("GET_PROTOCOL_FEATURES", first.text)
        # ... and the verdict the external scenarios assert fails on it
        with self.assertRaises(AssertionError) as ctx:
            check_proxy(self, proxy)
        self.assertIn("rules broken through the proxy", str(ctx.exception))

    def test_dpdk_vhost_pmd_behind_the_proxy(self):
        """An external back-end nobody here wrote, DPDK's vhost PMD, behind
        the proxy: QEMU starts the device through it, and what either side
        did against the rules is listed (the verdict), decoded."""
        sock = self.socket_path("dpdk-vhost")
        testpmd = start_testpmd(
            self, "testpmd", f"net_vhost0,iface={sock},queues=1",
            ["--forward-mode=io"])
        proxy = make_proxy(self, "proxy", sock)
        vm = self.make_vm("vm", self.socket_path("proxy"))
        vm.launch()
        vm.drive_device(queues=2)
        testpmd.wait_output(DPDK_READY, self.scaled(20),
                            "the vhost PMD's device ready")
        requests = [e.request for e in proxy.trace.select("rx")]
        self.log.info("through the proxy: %d requests, %d replies; "
                      "verdict: %s", len(requests),
                      len(proxy.trace.select("tx")),
                      proxy.violations or "no violation")
        self.assertIn("SET_MEM_TABLE", requests)
        self.assertIn("SET_VRING_KICK", requests)
        self.assertEqual(proxy.errors, [])


if __name__ == "__main__":
    main()
