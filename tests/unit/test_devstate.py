"""Device-state transfer over a real pipe: the back-end's side streams
more than a pipe holds, never blocks its caller, and refuses a damaged
state; the judge wants the device stopped while the state moves."""

import os
import time
import unittest

from avocado_vhost.vhost_user import conformance
from avocado_vhost.vhost_user.devstate import (LOAD, SAVE, StateTransfer,
                                               frame, unframe)
from avocado_vhost.vhost_user.message import (DeviceStateParams, Header,
                                              Request)
from avocado_vhost.vhost_user.state import DeviceState

from helpers import open_fds

BIG = bytes(range(256)) * 1024  # 256 KiB: four times a pipe's buffer


class Frames(unittest.TestCase):

    def test_a_whole_frame_comes_back(self):
        self.assertEqual(unframe(frame(BIG)), BIG)
        self.assertEqual(unframe(frame(b"")), b"")

    def test_a_damaged_frame_is_refused(self):
        whole = frame(BIG)
        for damaged, why in ((whole[:len(whole) // 2], "arrived"),
                             (bytes(len(whole)), "no state header"),
                             (whole[:-1] + bytes([whole[-1] ^ 1]), "CRC"),
                             (b"", "shorter")):
            with self.assertRaises(ValueError) as ctx:
                unframe(damaged)
            self.assertIn(why, str(ctx.exception))


class Transfer(unittest.TestCase):

    def setUp(self):
        self.fds_before = open_fds()

    def tearDown(self):
        self.assertEqual(open_fds() - self.fds_before, set(), "fds leaked")

    def test_save_streams_more_than_a_pipe_holds(self):
        rd, wr = os.pipe()
        started = time.monotonic()
        transfer = StateTransfer(wr, SAVE, frame(BIG), timeout=5).start()
        self.assertLess(time.monotonic() - started, 0.5,
                        "start() waited for the reader")
        got = b""
        while chunk := os.read(rd, 65536):
            got += chunk
        os.close(rd)
        self.assertIsNone(transfer.finish(5))
        self.assertEqual(unframe(got), BIG)

    def test_load_reads_to_the_end(self):
        rd, wr = os.pipe()
        transfer = StateTransfer(rd, LOAD, timeout=5).start()
        data = frame(BIG)
        for i in range(0, len(data), 10000):
            os.write(wr, data[i:i + 10000])
        os.close(wr)
        self.assertIsNone(transfer.finish(5))
        self.assertEqual(unframe(transfer.received), BIG)

    def test_a_reader_that_never_reads_costs_one_timeout(self):
        rd, wr = os.pipe()
        transfer = StateTransfer(wr, SAVE, frame(BIG), timeout=0.3).start()
        why = transfer.finish(5)
        os.close(rd)
        self.assertIn("timed out", why)

    def test_a_load_beyond_the_limit_is_refused(self):
        rd, wr = os.pipe()
        transfer = StateTransfer(rd, LOAD, limit=1000, timeout=5).start()
        try:
            os.write(wr, bytes(5000))
        finally:
            os.close(wr)
        self.assertIn("more than 1000 bytes", transfer.finish(5))

    def test_close_ends_a_transfer_in_progress(self):
        rd, wr = os.pipe()
        transfer = StateTransfer(rd, LOAD, timeout=0.5).start()
        transfer.close()
        os.close(wr)
        self.assertIsNone(transfer.fd)


class StoppedDevice(unittest.TestCase):

    def test_the_state_moves_while_the_device_is_stopped(self):
        state = DeviceState()
        req = Request.SET_DEVICE_STATE_FD
        params = DeviceStateParams(0, 0)
        self.assertEqual(conformance.device_state_of_a_stopped_device(
            req, params, Header(req, 1, 8), state), None)
        state.vring(0).started = True  # negative control
        self.assertIn("while ring(s) [0] run",
                      conformance.device_state_of_a_stopped_device(
                          req, params, Header(req, 1, 8), state))


if __name__ == "__main__":
    unittest.main()
