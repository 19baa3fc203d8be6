"""Transport: framing across partial reads, SCM_RIGHTS fds, excess fds."""

import os
import socket
import threading
import unittest

from avocado_vhost.vhost_user.connection import (MAX_FDS, Listener, connect,
                                                 socketpair)
from avocado_vhost.vhost_user.error import ConnectionClosed, MalformedMessage
from avocado_vhost.vhost_user.frontend import FrontEnd
from avocado_vhost.vhost_user.message import Request, U64, encode

from helpers import open_fds


class ConnectionTest(unittest.TestCase):

    def setUp(self):
        self.fds_before = open_fds()
        self.conn, sock = socketpair(message_timeout=1)
        self.fe = FrontEnd(sock)

    def tearDown(self):
        self.conn.close()
        self.fe.close()
        self.assertEqual(open_fds() - self.fds_before, set())

    def test_message_in_pieces(self):
        data = encode(Request.SET_FEATURES, U64(0xABCDEF))

        def dribble():
            for byte in data:
                self.fe.sock.send(bytes([byte]))
        writer = threading.Thread(target=dribble)
        writer.start()
        header, payload, fds = self.conn.recv()
        writer.join()
        self.assertEqual((header.request, header.size), (2, 8))
        self.assertEqual(U64.unpack(payload).value, 0xABCDEF)
        self.assertEqual(fds, [])

    def test_fds_arrive(self):
        efd = os.eventfd(7)
        self.fe.send(Request.SET_VRING_KICK, U64(0), fds=[efd])
        os.close(efd)
        _, _, fds = self.conn.recv()
        self.assertEqual(len(fds), 1)
        self.assertEqual(os.eventfd_read(fds[0]), 7)
        os.close(fds[0])

    def test_excess_fds_are_closed(self):
        efds = [os.eventfd(0) for _ in range(MAX_FDS + 4)]
        self.fe.send(Request.SET_OWNER, fds=efds)
        for fd in efds:
            os.close(fd)
        with self.assertRaisesRegex(MalformedMessage, "more than 16 fds"):
            self.conn.recv()

    def test_eof_mid_message(self):
        self.fe.send_raw(encode(Request.SET_FEATURES, U64(1))[:14])
        self.fe.sock.shutdown(socket.SHUT_WR)
        with self.assertRaises(ConnectionClosed) as ctx:
            self.conn.recv()
        self.assertTrue(ctx.exception.partial)

    def test_clean_eof(self):
        self.fe.sock.shutdown(socket.SHUT_WR)
        with self.assertRaises(ConnectionClosed) as ctx:
            self.conn.recv()
        self.assertFalse(ctx.exception.partial)


class ListenerTest(unittest.TestCase):

    def test_listen_accept_and_unlink(self):
        import tempfile
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            path = os.path.join(tmp, "vu.sock")
            listener = Listener(path)
            client = connect(path)
            server = listener.accept()
            client.send(encode(Request.GET_FEATURES))
            header, _, _ = server.recv()
            self.assertEqual(header.request, Request.GET_FEATURES)
            for end in (client, server):
                end.close()
            listener.close()
            self.assertFalse(os.path.exists(path))

    def test_path_too_long(self):
        with self.assertRaisesRegex(ValueError, "limit is 107"):
            Listener("/tmp/" + "x" * 120)


if __name__ == "__main__":
    unittest.main()
