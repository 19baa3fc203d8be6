"""An event that QEMU sends before its qmp_capabilities reply (QEMU 10's
race) is accepted and delivered, where qemu.qmp 0.0.6 alone fails."""

import json
import os
import socket
import tempfile
import threading
import unittest

from qemu.qmp.legacy import QEMUMonitorProtocol

from avocado_vhost.peers.qemu.machine import tolerate_early_events

GREETING = {"QMP": {"version": {"qemu": {"micro": 13, "minor": 0,
                                         "major": 10}, "package": ""},
                    "capabilities": []}}
EVENT = {"event": "NETDEV_VHOST_USER_CONNECTED",
         "data": {"netdev-id": "net0", "chardev-id": "vu0"},
         "timestamp": {"seconds": 1, "microseconds": 0}}


class FakeQemu(threading.Thread):
    """A QMP server that answers qmp_capabilities after an event."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(10)

    def run(self):
        conn, _ = self.sock.accept()
        with conn:
            pending = ""
            decoder = json.JSONDecoder()

            def receive():
                """One JSON message (qemu.qmp sends no newline)."""
                nonlocal pending
                while True:
                    try:
                        obj, end = decoder.raw_decode(pending.lstrip())
                        pending = pending.lstrip()[end:]
                        return obj
                    except ValueError:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return None
                        pending += chunk.decode()

            def send(obj):
                conn.sendall(json.dumps(obj).encode() + b"\n")
            send(GREETING)
            receive()  # qmp_capabilities
            send(EVENT)
            send({"return": {}})
            request = receive()  # query-status
            if request is not None:
                send({"return": {"status": "running", "running": True},
                      "id": request.get("id")})
            receive()  # until the client hangs up


class EarlyEventTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="avh-unit-")
        self.path = os.path.join(self.tmp, "qmp.sock")
        self.server = FakeQemu(self.path)
        self.server.start()

    def tearDown(self):
        self.server.sock.close()
        self.server.join(10)
        os.unlink(self.path)
        os.rmdir(self.tmp)

    def test_event_before_the_reply_is_kept_and_delivered(self):
        conn = QEMUMonitorProtocol(self.path)
        tolerate_early_events(conn)
        try:
            conn.connect(negotiate=True)
            self.assertEqual(conn.cmd("query-status")["status"], "running")
            self.assertEqual([e["event"] for e in conn._qmp.early_events],
                             ["NETDEV_VHOST_USER_CONNECTED"])
            self.assertEqual(conn.get_events()[0]["event"],
                             "NETDEV_VHOST_USER_CONNECTED")
        finally:
            conn.close()

    def test_negative_control_plain_client_fails(self):
        """qemu.qmp alone: the same server makes negotiation fail (if it
        ever stops failing, the workaround can go)."""
        conn = QEMUMonitorProtocol(self.path)
        try:
            with self.assertRaises(Exception) as caught:
                conn.connect(negotiate=True)
            self.assertIn("Negotiation", repr(caught.exception))
        finally:
            conn.close()


if __name__ == "__main__":
    unittest.main()
