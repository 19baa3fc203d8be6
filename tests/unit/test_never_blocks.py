"""
The back-end never blocks and never grows, whatever a peer does: the
front-end's side of each case is written here, against a real back-end
thread on a socketpair.

* a peer shares the file description of every fd it hands over, so it can
  clear O_NONBLOCK behind the back-end's back: no syscall on such an fd may
  wait (a saturated call eventfd, a kick eventfd the peer drains itself);
* ``stop()`` returns within a bound, with the thread gone;
* what the back-end records is bounded, with counters of what it dropped;
* every fd is checked for its kind when it arrives, and a memory table
  that would take the address space is refused.
"""

import fcntl
import os
import socket
import tempfile
import threading
import time
import unittest

from avocado_vhost.vhost_user import (BackendConfig, Fault, FaultAction,
                                      VhostUserBackend)
from avocado_vhost.vhost_user.frontend import FrontEnd
from avocado_vhost.vhost_user.message import (
    InflightDescription, LogDescription, MemoryRegion, MemoryTable, Request,
    U64, VringAddr, VringState)
from avocado_vhost.vhost_user.net import NetDevice, Port

from helpers import ALL_PROTOCOL, BackendTestCase, memfd, open_fds

#: how long stop() may take, whatever the peer did
STOP_BOUND = 3.0
MEM = 1 << 20
UVA = 0x7F0000000000


def clear_nonblock(fd):
    """What a hostile front-end does to the fd it shares with us."""
    fcntl.fcntl(fd, fcntl.F_SETFL,
                fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


class NeverBlocks(BackendTestCase):

    stop_hung = False

    def setUp(self):
        super().setUp()
        #: the front-end's own fds, closed before the leak check
        self.own = []

    def tearDown(self):
        for fd in self.own:
            os.close(fd)
        if self.stop_hung:  # the thread is stuck: nothing more can be done
            self.fe.close()
            return
        super().tearDown()

    def eventfd(self, flags=0):
        fd = os.eventfd(0, flags)
        self.own.append(fd)
        return fd

    def stop_within_bound(self):
        """stop(), run aside so that a hang fails the test instead of
        hanging it; returns the seconds it took."""
        started = time.monotonic()
        stopper = threading.Thread(target=self.backend.stop, daemon=True)
        stopper.start()
        stopper.join(STOP_BOUND + 1)
        took = time.monotonic() - started
        self.stop_hung = stopper.is_alive()
        self.assertFalse(self.stop_hung,
                         f"stop() had not returned after {took:.1f}s")
        self.assertFalse(self.backend.thread_alive,
                         "stop() returned with the back-end thread alive")
        return took

    def start_ring(self, index, kick, call):
        """Ring ``index`` of a net device over 1 MiB of guest memory."""
        fe = self.fe
        mem = memfd(MEM)
        self.own.append(mem)
        fe.send(Request.SET_MEM_TABLE, MemoryTable(
            (MemoryRegion(0, MEM, UVA, 0),)), fds=[mem])
        fe.send(Request.SET_VRING_NUM, VringState(index, 8))
        fe.send(Request.SET_VRING_ADDR, VringAddr(
            index, 0, UVA + 0x1000, UVA + 0x3000, UVA + 0x2000, 0))
        fe.send(Request.SET_VRING_ENABLE, VringState(index, 1))
        fe.send(Request.SET_VRING_CALL, U64(index), fds=[call])
        fe.send(Request.SET_VRING_KICK, U64(index), fds=[kick])
        self.sync()
        return mem

    def test_a_saturated_call_fd_made_blocking_again(self):
        """The front-end clears O_NONBLOCK on the call eventfd it handed
        over and fills its counter: the back-end's next signal must not
        wait (it is recorded), and stop() returns."""
        self.negotiate()
        kick, call = self.eventfd(), self.eventfd()
        self.start_ring(0, kick, call)
        clear_nonblock(call)
        os.eventfd_write(call, 0xFFFFFFFFFFFFFFFE)
        signal = threading.Thread(target=self.backend.signal_call, args=(0,),
                                  daemon=True)
        signal.start()
        signal.join(STOP_BOUND)
        self.stop_hung = signal.is_alive()
        self.assertFalse(self.stop_hung, "signalling the call fd hangs")
        took = self.stop_within_bound()
        text = " ".join(str(e) for e in self.backend.errors)
        self.assertIn("call fd of ring 0", text)
        self.assertIn("O_NONBLOCK", text)
        self.assertIn("maximum", text)
        print(f"\n  saturated blocking call fd: stop() in {took:.3f}s; "
              f"recorded: {text[:160]}")
        self.backend.errors.clear()

    def test_a_kick_fd_the_front_end_drains_itself(self):
        """The front-end keeps a copy of the kick eventfd and makes it
        blocking.  The back-end's poll finds a message and a kick ready at
        once; while it handles the message, the front-end drains the kick
        itself.  The back-end's read of the kick then finds nothing, and
        must not wait for the next kick.

        The front-end acts "meanwhile" from inside the back-end's thread:
        a fault's predicate runs while the thread handles a message (these
        faults never fire; their predicates return False)."""
        self.negotiate()
        kick, call = self.eventfd(), self.eventfd(os.EFD_NONBLOCK)
        self.start_ring(0, kick, call)
        clear_nonblock(kick)
        busy, go, drained = threading.Event(), threading.Event(), []

        def keep_busy(request, payload):
            if request is Request.GET_QUEUE_NUM:
                busy.set()
                go.wait(STOP_BOUND)
            return False

        def drain_kick(request, payload):
            if request is Request.GET_PROTOCOL_FEATURES:
                drained.append(os.preadv(kick, [bytearray(8)], -1,
                                         os.RWF_NOWAIT))
            return False

        self.backend.faults += [Fault(FaultAction.DISCONNECT, match=keep_busy),
                                Fault(FaultAction.DISCONNECT, match=drain_kick)]
        self.fe.send(Request.GET_QUEUE_NUM)
        self.assertTrue(busy.wait(STOP_BOUND))
        # The thread is busy: the next message and a kick are ready at its
        # next poll, the message first.
        self.fe.send(Request.GET_PROTOCOL_FEATURES)
        os.eventfd_write(kick, 1)
        go.set()
        self.fe.recv()
        self.fe.recv()
        self.assertEqual(drained, [8], "the back-end read the kick before "
                         "the message")
        self.sync()  # a back-end stuck in its read of the kick answers no more
        took = self.stop_within_bound()
        print(f"\n  kick fd drained by the front-end: stop() in {took:.3f}s")

    def test_a_front_end_that_never_reads_cannot_hold_stop(self):
        """A front-end that sends requests needing replies and never reads
        them: stop() still returns within its bound."""
        self.negotiate()
        self.fe.sock.setblocking(False)
        try:
            for _ in range(100000):
                self.fe.send(Request.GET_FEATURES)
        except BlockingIOError:
            pass  # our own buffer is full too
        self.stop_within_bound()


class Lifecycle(unittest.TestCase):

    def test_listen_after_start_serves_the_first_connection(self):
        """listen() on a running back-end: the first front-end is served
        at once, not when something else wakes the thread."""
        folder = tempfile.mkdtemp(prefix="avh-unit-")
        self.addCleanup(os.rmdir, folder)  # last: stop() unlinks the socket
        backend = VhostUserBackend("late").start()
        self.addCleanup(backend.stop)
        path = os.path.join(folder, "late.sock")
        backend.listen(path)
        fe = FrontEnd(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        self.addCleanup(fe.close)
        fe.sock.connect(path)
        fe.sock.settimeout(2.0)
        _, _, reply = fe.call(Request.GET_FEATURES)
        self.assertEqual(len(reply), 8)


class Bounded(BackendTestCase):

    config = BackendConfig(protocol_features=int(ALL_PROTOCOL),
                           max_rings=8, max_records=50, max_trace=400)

    def test_records_and_trace_keep_a_bounded_window(self):
        """10,000 malformed messages: the records keep the first 50 of each
        kind and count the rest; the trace keeps its first and its last
        entries and counts what it dropped; the verdict says so."""
        for _ in range(10000):
            self.fe.send(Request.SET_OWNER, U64(1))  # payload on SET_OWNER
        self.sync()
        records = self.backend.records
        self.assertEqual(len(records.errors), 50)
        self.assertEqual(records.errors_total, 10000)
        trace = self.backend.trace
        self.assertLessEqual(len(trace.entries), 400)
        self.assertGreater(trace.dropped, 0)
        self.assertEqual(trace.entries[0].request, "CONNECTED")
        self.assertEqual(trace.entries[-1].request, "GET_FEATURES")
        with self.assertRaises(Exception) as failure:
            self.backend.check()
        self.assertIn("9950 more not kept", str(failure.exception))
        records.clear()


class FdKinds(BackendTestCase):

    def test_each_fd_is_checked_for_its_kind(self):
        """A pipe where an eventfd, a socket or a file belongs: an error
        naming what it is, the fd closed, the back-end serving on."""
        self.negotiate()
        read_end, write_end = os.pipe()
        try:
            self.fe.send(Request.SET_LOG_FD, fds=[write_end])
            self.fe.send(Request.SET_BACKEND_REQ_FD, fds=[write_end])
            self.fe.send(Request.SET_LOG_BASE, LogDescription(4096, 0),
                         fds=[write_end])
            self.fe.send(Request.SET_MEM_TABLE, MemoryTable(
                (MemoryRegion(0, 4096, UVA, 0),)), fds=[write_end])
            self.sync()
        finally:
            os.close(read_end)
            os.close(write_end)
        texts = [e.text for e in self.backend.errors]
        self.assertEqual(len(texts), 4, texts)
        for text, what in zip(texts, ("an eventfd", "a socket",
                                      "a regular file", "a regular file")):
            self.assertIn("pipe:", text)
            self.assertIn(what, text)
        self.assertIsNone(self.backend.state.log_fd)
        self.assertIsNone(self.backend.state.backend_channel)
        self.backend.errors.clear()

    def test_an_inflight_area_too_small_for_its_queues(self):
        """SET_INFLIGHT_FD of 4 KiB for two queues of 256 (which need
        8 KiB): refused with the reason, nothing mapped -- a region read
        past the file's end would be a SIGBUS."""
        self.negotiate()
        mem = memfd(4096)
        try:
            _, _, reply = self.fe.call(
                Request.SET_INFLIGHT_FD, InflightDescription(4096, 0, 2, 256),
                fds=[mem], need_reply=True)
        finally:
            os.close(mem)
        self.assertNotEqual(U64.unpack(reply).value, 0)
        self.assertIsNone(self.backend.state.inflight)
        self.assertIn("needs 8320", self.backend.errors[-1].text)
        self.backend.errors.clear()

    def test_a_table_that_would_take_the_address_space(self):
        """Seven 16 TiB regions (sparse memfds): refused with the reason,
        nothing mapped."""
        self.negotiate()
        size = 16 << 40
        fds = [memfd(size) for _ in range(7)]
        try:
            self.fe.send(Request.SET_MEM_TABLE, MemoryTable(tuple(
                MemoryRegion(i * size, size, UVA + i * size, 0)
                for i in range(7))), fds=fds)
            self.sync()
        finally:
            for fd in fds:
                os.close(fd)
        self.assertEqual(len(self.backend.state.memory), 0)
        text = " ".join(e.text for e in self.backend.errors)
        self.assertIn("max_mapped", text)
        self.backend.errors.clear()


class DeviceNeverBlocks(NeverBlocks):
    """The same with a net device processing the rings."""

    def setUp(self):
        super().setUp()
        self.backend.stop()
        self.fe.close()
        self.fds_before = open_fds()
        self.backend = VhostUserBackend(
            "unit", BackendConfig(protocol_features=int(ALL_PROTOCOL),
                                  max_rings=8), NetDevice(Port())).start()
        self.fe = self.connect()


if __name__ == "__main__":
    unittest.main()
