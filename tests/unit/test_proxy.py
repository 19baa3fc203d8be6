"""The conformance proxy with a scripted front-end and the in-process
back-end on real UNIX sockets: what passes through, and what is judged."""

import os
import socket
import tempfile
import unittest

from avocado_vhost.vhost_user import (BackendConfig, ProtocolFeature, Request,
                                      Side, VhostUserBackend)
from avocado_vhost.vhost_user.frontend import FrontEnd
from avocado_vhost.vhost_user.message import (U64,
                                              VirtioFeature, VringState)
from avocado_vhost.vhost_user.devstate import PHASE_STOPPED, SAVE, frame
from avocado_vhost.vhost_user.message import DeviceStateParams
from avocado_vhost.vhost_user.proxy import Proxy

from helpers import open_fds


class ProxyTest(unittest.TestCase):

    def setUp(self):
        self.fds_before = open_fds()
        self.tmp = tempfile.mkdtemp(prefix="avh-")
        self.backend = VhostUserBackend("be", BackendConfig())
        self.backend.listen(os.path.join(self.tmp, "be.sock"))
        self.backend.start()
        self.proxy = Proxy(os.path.join(self.tmp, "fe.sock"),
                           os.path.join(self.tmp, "be.sock")).start()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.path.join(self.tmp, "fe.sock"))
        self.fe = FrontEnd(sock)

    def tearDown(self):
        self.fe.close()
        self.proxy.stop()
        self.backend.stop()
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
        os.rmdir(self.tmp)
        leaked = {fd for fd in open_fds() - self.fds_before
                  if os.path.exists(f"/proc/self/fd/{fd}")}
        self.assertFalse(leaked, f"fds leaked: {leaked}")

    def test_replies_pass_through_decoded(self):
        _, _, reply = self.fe.call(Request.GET_FEATURES)
        self.assertEqual(U64.unpack(reply).value,
                         self.backend.config.features)
        self.assertEqual([e.request for e in self.proxy.trace.select("tx")],
                         ["GET_FEATURES"])
        self.assertEqual(self.backend.trace.received(), [Request.GET_FEATURES])
        self.assertEqual(self.proxy.violations, [])

    def test_front_end_acking_what_was_not_offered_is_judged(self):
        """The judge knows what the back-end offered (from its real reply)
        and catches a front-end that acks more."""
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_FEATURES, U64(
            self.backend.config.features | int(VirtioFeature.RING_PACKED)))
        self.fe.call(Request.GET_FEATURES)
        self.proxy.wait_violations(1, 5)
        violation = self.proxy.violations[0]
        self.assertEqual((violation.side, violation.rule),
                         (Side.FRONT_END, "features-subset"))
        self.assertIn("RING_PACKED", violation.text)

    def test_the_judge_leaves_the_device_state_pipe_alone(self):
        """SET_DEVICE_STATE_FD through the proxy: the pipe carries exactly
        the real back-end's state (the judge holds a copy of the fd; it
        must neither write its own state into it nor read from it)."""
        self.backend.config.protocol_features |= int(
            ProtocolFeature.DEVICE_STATE)
        self.backend.config.device_state = b"state of the real back-end"
        self.fe.call(Request.GET_FEATURES)
        self.fe.call(Request.GET_PROTOCOL_FEATURES)
        self.fe.send(Request.SET_PROTOCOL_FEATURES,
                     U64(self.backend.config.protocol_features))
        read_end, write_end = os.pipe()
        self.fe.call(Request.SET_DEVICE_STATE_FD,
                     DeviceStateParams(SAVE, PHASE_STOPPED), [write_end])
        os.close(write_end)
        data = b""
        while True:
            chunk = os.read(read_end, 4096)  # EOF once both copies close
            if not chunk:
                break
            data += chunk
        os.close(read_end)
        self.assertEqual(data, frame(self.backend.config.device_state))

    def test_get_vring_base_of_a_ring_that_never_ran(self):
        """A ring given base 7 and never kicked must be reported at 7; a
        back-end that says otherwise is caught (negative control: the
        in-process back-end's answer is overridden)."""
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_VRING_NUM, VringState(0, 8))
        self.fe.send(Request.SET_VRING_BASE, VringState(0, 7))
        self.fe.call(Request.GET_VRING_BASE, VringState(0, 0))
        self.assertEqual(self.proxy.violations, [])
        self.fe.send(Request.SET_VRING_BASE, VringState(0, 7))
        self.backend.vring_base_override = 3
        self.fe.call(Request.GET_VRING_BASE, VringState(0, 0))
        self.proxy.wait_violations(1, 5)
        self.assertIn("ring 0 never started since its base was 7, the "
                      "reply says 3", self.proxy.violations[0].text)

    def test_a_back_end_that_goes_away_is_recorded(self):
        """A crash of the back-end ends the pair: the front-end sees its
        socket close, the proxy records why and lives on."""
        self.fe.call(Request.GET_FEATURES)
        self.backend.disconnect()
        self.assertTrue(self.fe.closed_by_peer(5))
        self.assertTrue(any(e.request == "DISCONNECTED"
                            and "back-end closed" in e.detail
                            for e in self.proxy.trace.select("event")))



class JudgeToTheEnd(unittest.TestCase):
    """The proxy's judge refuses what it does not implement (here
    GET_INFLIGHT_FD, which DPDK answers); the conversation goes on with the
    real back-end, so the judge must read on and judge what follows."""

    def judged_after_a_refusal(self, judge):
        acked = int(ProtocolFeature.REPLY_ACK)
        backend = VhostUserBackend("judge", BackendConfig(
            judge=judge, protocol_features=acked))
        fe, conn = FrontEnd.pair(5)
        backend.adopt(conn)
        backend.start()
        try:
            fe.call(Request.GET_FEATURES)
            fe.call(Request.GET_PROTOCOL_FEATURES)
            fe.send(Request.SET_PROTOCOL_FEATURES, U64(acked))
            a, b = socket.socketpair()
            fe.send(Request.GPU_SET_SOCKET,  # refused: no GPU here
                    fds=[a.fileno()])
            a.close()
            b.close()
            try:
                fe.send(Request.SET_VRING_NUM, VringState(0, 100))  # not 2^n
            except OSError:
                self.assertFalse(judge, "the judge hung up")  # closed already
            if judge:
                backend.wait_for(lambda: backend.violations, "the "
                                 "violation after the refusal", 5)
            else:
                backend.wait_disconnected(5)
            return ([v for v in backend.violations
                     if "SET_VRING_NUM" in v.text], backend.connected)
        finally:
            fe.close()
            backend.stop()

    def test_a_refusal_does_not_end_judging(self):
        violations, connected = self.judged_after_a_refusal(judge=True)
        self.assertTrue(connected)
        self.assertIn("SET_VRING_NUM", violations[0].text)

    def test_negative_control_a_back_end_ends_the_conversation(self):
        """Without ``judge``, the refusal ends the connection (the spec's
        answer when no ack was asked for) and the violation after it is
        never seen: what the proxy's judge did before."""
        violations, connected = self.judged_after_a_refusal(judge=False)
        self.assertFalse(connected)
        self.assertEqual(violations, [])


if __name__ == "__main__":
    unittest.main()
