"""The qtest link reports a QEMU that cannot answer (gone, or stopped by a
signal) within a slice, not at the answer's bound; a QEMU that answers is
unaffected by the slicing."""

import os
import shutil
import socket
import tempfile
import threading
import time
import unittest

from avocado_vhost.peers.qemu.qtest import SLICE, QtestError, QtestLink


class QtestLinkTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="avh-qt-")
        self.link = QtestLink(os.path.join(self.dir, "q.sock"), timeout=5)
        self.qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.qemu.connect(self.link.path)
        self.link.accept()

    def tearDown(self):
        self.link.close()
        self.qemu.close()
        shutil.rmtree(self.dir)

    def answer(self, *lines):
        def serve():
            for line in lines:
                self.qemu.recv(4096)
                # split across two writes: the link must join them
                self.qemu.sendall(line[:3].encode())
                time.sleep(0.01)
                self.qemu.sendall(line[3:].encode() + b"\n")
        thread = threading.Thread(target=serve)
        thread.start()
        return thread

    def test_answers_are_read_line_by_line(self):
        thread = self.answer("OK 0x2a", "OK")
        self.assertEqual(self.link.read(0x1000, 4), 0x2a)
        self.link.write(0x1000, 4, 1)
        thread.join()

    def test_a_fail_answer_names_the_command(self):
        thread = self.answer("FAIL")
        with self.assertRaisesRegex(QtestError, "readl 0x10' answered"):
            self.link.read(0x10, 4)
        thread.join()

    def test_a_qemu_that_cannot_answer_is_seen_within_a_slice(self):
        self.link.why_silent = lambda: "QEMU is stopped by a signal"
        start = time.monotonic()
        with self.assertRaisesRegex(QtestError, "stopped by a signal"):
            self.link.read(0x10, 4)
        self.assertLess(time.monotonic() - start, 2 * SLICE + 1)

    def test_negative_control_a_silent_qemu_that_may_answer_is_awaited(self):
        """Without a reason from the VM, the link waits to its bound."""
        self.link.timeout = 3 * SLICE
        start = time.monotonic()
        with self.assertRaisesRegex(QtestError, "QEMU still runs"):
            self.link.read(0x10, 4)
        self.assertGreaterEqual(time.monotonic() - start, 3 * SLICE)

    def test_a_closed_link_is_reported(self):
        self.qemu.close()
        with self.assertRaisesRegex(QtestError, "closed the link|reset|pipe"):
            self.link.read(0x10, 4)


if __name__ == "__main__":
    unittest.main()
