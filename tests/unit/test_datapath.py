"""The back-end's ring processing on shared memory, without QEMU: chains,
indirect tables, wrap-around, bad chains, notification suppression, and the
dirty log of buffer and used-ring writes."""

import fcntl
import mmap
import os
import select
import struct
import unittest

from avocado_vhost.vhost_user import VhostUserBackend
from avocado_vhost.vhost_user.error import BackendFailure
from avocado_vhost.vhost_user.frontend import FrontEnd
from avocado_vhost.vhost_user.message import (
    LogDescription, MemoryRegion, MemoryTable, ProtocolFeature, Request,
    U64, VirtioFeature, VringAddr, VringState)
from avocado_vhost.vhost_user.net import NetDevice, Port, SentFrame
from avocado_vhost.virtio import NET_HDR_LEN

from helpers import open_fds

NUM = 8
MEM = 1 << 20
UVA = 0x7F0000000000
RINGS = {0: (0x1000, 0x2000, 0x3000), 1: (0x4000, 0x5000, 0x6000)}
BUFS = 0x10000
HDR = bytes(NET_HDR_LEN)
U16 = struct.Struct("<H")
DESC = struct.Struct("<QIHH")


class RingTest(unittest.TestCase):

    def setUp(self):
        self.fds_before = open_fds()
        self.port = Port()
        self.device = NetDevice(self.port)
        self.backend = VhostUserBackend("unit", device=self.device).start()
        self.fe, conn = FrontEnd.pair()
        self.backend.adopt(conn)
        self.memfd = os.memfd_create("guest")
        os.ftruncate(self.memfd, MEM)
        self.mem = mmap.mmap(self.memfd, MEM)
        self.avail = {0: 0, 1: 0}
        self.kicks = {}
        self.calls = {}
        fe = self.fe
        fe.call(Request.GET_FEATURES)
        fe.send(Request.SET_PROTOCOL_FEATURES, U64(int(
            ProtocolFeature.LOG_SHMFD | ProtocolFeature.REPLY_ACK)))
        fe.send(Request.SET_OWNER)
        fe.send(Request.SET_FEATURES, U64(int(
            VirtioFeature.VERSION_1 | VirtioFeature.PROTOCOL_FEATURES
            | VirtioFeature.RING_INDIRECT_DESC)))
        fe.send(Request.SET_MEM_TABLE, MemoryTable(
            (MemoryRegion(0, MEM, UVA, 0),)), fds=[self.memfd])
        for index, (desc, avail, used) in RINGS.items():
            fe.send(Request.SET_VRING_NUM, VringState(index, NUM))
            fe.send(Request.SET_VRING_BASE, VringState(index, 0))
            fe.send(Request.SET_VRING_ADDR, VringAddr(
                index, 1, UVA + desc, UVA + used, UVA + avail, used))
            fe.send(Request.SET_VRING_ENABLE, VringState(index, 1))
            self.kicks[index] = os.eventfd(0)
            self.calls[index] = os.eventfd(0, os.EFD_NONBLOCK)
            fe.send(Request.SET_VRING_CALL, U64(index),
                    fds=[self.calls[index]])
            fe.send(Request.SET_VRING_KICK, U64(index),
                    fds=[self.kicks[index]])
        fe.call(Request.GET_FEATURES)
        self.backend.wait_rings_started(2, timeout=2)

    def tearDown(self):
        self.fe.close()
        self.backend.stop()
        self.mem.close()
        for fd in [self.memfd, *self.kicks.values(), *self.calls.values()]:
            os.close(fd)
        self.assertEqual(open_fds() - self.fds_before, set())

    def desc(self, ring, i, addr, length, flags=0, nxt=0):
        DESC.pack_into(self.mem, RINGS[ring][0] + 16 * i, addr, length,
                       flags, nxt)

    def offer(self, ring, heads, kick=True):
        _, avail, _ = RINGS[ring]
        for head in heads:
            U16.pack_into(self.mem, avail + 4 + 2 * (self.avail[ring] % NUM),
                          head)
            self.avail[ring] = (self.avail[ring] + 1) & 0xFFFF
        U16.pack_into(self.mem, avail + 2, self.avail[ring])
        if kick:
            os.eventfd_write(self.kicks[ring], 1)

    def used(self, ring):
        return U16.unpack_from(self.mem, RINGS[ring][2] + 2)[0]

    def test_tx_wraps_the_ring(self):
        frames = [bytes([i]) * (60 + i) for i in range(3 * NUM)]
        for batch in range(3):
            heads = []
            for i in range(NUM):
                frame = frames[batch * NUM + i]
                self.mem[BUFS + 2048 * i:BUFS + 2048 * i + len(frame) + 12] \
                    = HDR + frame
                self.desc(1, i, BUFS + 2048 * i, len(frame) + 12)
                heads.append(i)
            self.offer(1, heads)
            self.port.wait_sent((batch + 1) * NUM, 2)
        self.assertEqual([s.data for s in self.port.sent], frames)
        self.assertEqual(self.used(1), 3 * NUM)
        self.assertEqual(self.backend.state.vrings[1].position, 3 * NUM)

    def interrupts(self, ring):
        try:
            return os.eventfd_read(self.calls[ring])
        except BlockingIOError:
            return 0

    def send_one(self, slot, text=b"frame..."):
        self.mem[BUFS:BUFS + 12 + len(text)] = HDR + text
        self.desc(1, slot, BUFS, 12 + len(text))
        self.offer(1, [slot])

    def test_call_and_no_interrupt_flag(self):
        """The device signals the call eventfd after completing, unless the
        driver set VRING_AVAIL_F_NO_INTERRUPT."""
        self.send_one(0)
        self.port.wait_sent(1, 2)
        # The frame is handed over before the call is signalled: wait for
        # the eventfd itself.
        ready, _, _ = select.select([self.calls[1]], [], [], 2)
        self.assertTrue(ready, "no interrupt after a completion")
        self.assertEqual(self.interrupts(1), 1)
        U16.pack_into(self.mem, RINGS[1][1], 1)  # avail->flags
        self.send_one(1)
        self.port.wait_sent(2, 2)
        # Served after the kick's processing (one thread, in order): any
        # signal would be there by now.
        self.fe.call(Request.GET_FEATURES)
        self.assertEqual(self.interrupts(1), 0, "interrupt despite "
                         "VRING_AVAIL_F_NO_INTERRUPT")

    def test_chain_and_indirect(self):
        self.mem[BUFS:BUFS + 12] = HDR
        self.mem[BUFS + 100:BUFS + 104] = b"abcd"
        self.desc(1, 0, BUFS, 12, 1, 1)           # NEXT -> 1
        self.desc(1, 1, BUFS + 100, 4)
        table = 0x8000
        DESC.pack_into(self.mem, table, BUFS, 12, 1, 1)
        DESC.pack_into(self.mem, table + 16, BUFS + 100, 4, 0, 0)
        self.desc(1, 2, table, 32, 4)              # INDIRECT
        self.offer(1, [0, 2])
        self.port.wait_sent(2, 2)
        self.assertEqual([s.data for s in self.port.sent], [b"abcd"] * 2)

    def test_loop_is_an_error_not_a_hang(self):
        self.desc(1, 0, BUFS, 12, 1, 1)
        self.desc(1, 1, BUFS, 12, 1, 0)
        self.offer(1, [0])
        self.backend.wait_for(lambda: self.backend.errors, "an error", 2)
        self.assertIn("loops", self.backend.errors[0].text)
        self.backend.errors.clear()

    def test_chain_bounds(self):
        """A buffer over the per-chain bound and an indirect table longer
        than the queue are refused with a recorded error, before any memory
        is touched for them."""
        self.desc(1, 0, BUFS, 2 << 20)  # 2 MiB in one descriptor
        self.offer(1, [0])
        self.backend.wait_for(lambda: self.backend.errors, "an error", 2)
        self.assertIn("describes 2097152 bytes", self.backend.errors[0].text)
        self.assertEqual(self.port.sent, [])
        self.backend.errors.clear()

    def test_indirect_table_longer_than_the_queue(self):
        self.desc(1, 0, 0x8000, 16 * (NUM + 1), 4)  # VRING_DESC_F_INDIRECT
        self.offer(1, [0])
        self.backend.wait_for(lambda: self.backend.errors, "an error", 2)
        self.assertIn("more than the queue size", self.backend.errors[0].text)
        self.backend.errors.clear()

    def test_avail_index_beyond_the_ring_breaks_the_ring(self):
        """An avail idx more than the ring size ahead (a stale base after a
        reconnect, or garbage) is an error naming the ring and its indexes,
        and the ring is left alone after it: nothing is replayed."""
        self.mem[BUFS:BUFS + 12 + 4] = HDR + b"abcd"
        for i in range(NUM):
            self.desc(1, i, BUFS, 16)
        _, avail, _ = RINGS[1]
        U16.pack_into(self.mem, avail + 2, 15000)
        os.eventfd_write(self.kicks[1], 1)
        self.backend.wait_for(lambda: self.backend.errors, "an error", 2)
        self.assertIn("ring 1 broken", self.backend.errors[0].text)
        self.assertIn("15000 entries ahead", self.backend.errors[0].text)
        self.assertEqual(self.port.sent, [], "entries were replayed")
        self.assertEqual(self.used(1), 0, "the used ring was touched")
        # Kicked again: still broken, still untouched, no new error.
        os.eventfd_write(self.kicks[1], 1)
        self.backend.wait_for(lambda: self.backend.state.vrings[1].started,
                              "the ring", 2)
        self.fe.call(Request.GET_FEATURES)  # the kick was handled before
        self.assertEqual(len(self.backend.errors), 1)
        self.assertEqual(self.port.sent, [])
        self.backend.errors.clear()

    def test_guest_memory_that_shrinks_is_not_touched(self):
        """This memfd cannot be sealed (no MFD_ALLOW_SEALING), so the
        back-end measures it again before each pass: once the front-end
        has shrunk it, the ring is broken with the reason, and the process
        is not killed by a SIGBUS."""
        self.desc(1, 0, BUFS, len(HDR) + 60)
        self.assertFalse(self.backend.state.memory._regions[0].sealed)
        self.mem.close()
        os.ftruncate(self.memfd, 4096)
        os.eventfd_write(self.kicks[1], 1)  # the avail idx is gone too
        self.backend.wait_for(lambda: bool(self.backend.errors),
                              "an error about the shrunk file", 5)
        self.assertIn("shrank to 4096 bytes", self.backend.errors[0].text)
        self.assertIn(1, self.device.broken)
        self.assertEqual(self.port.sent_total, 0)
        self.backend.errors.clear()
        self.mem = mmap.mmap(-1, 4096)  # for tearDown

    def responsive(self):
        """The back-end still answers (its thread neither died nor hung)."""
        self.fe.call(Request.GET_FEATURES)
        self.assertFalse(any("crashed" in e.text for e in self.backend.errors),
                         self.backend.errors)

    def test_saturated_blocking_call_eventfd(self):
        """A call eventfd at its maximum count, handed over blocking: a
        blocking signal would hang the thread forever; the back-end made
        the fd non-blocking and moves on."""
        call = os.eventfd(0)  # blocking, as a hostile front-end sends it
        os.eventfd_write(call, 0xFFFFFFFFFFFFFFFE)
        try:
            self.fe.send(Request.SET_VRING_CALL, U64(1), fds=[call])
            self.desc(1, 0, BUFS, len(HDR) + 60)
            self.offer(1, [0])
            self.port.wait_sent(1, 2)
            self.responsive()
            self.backend.stop(timeout=5)
        finally:
            os.close(call)

    def test_kick_eventfd_is_made_non_blocking(self):
        """A kick fd drained by someone else between poll and read would
        block the thread's read forever: the back-end reads it
        non-blocking (the fd was handed over blocking)."""
        flags = fcntl.fcntl(self.kicks[1], fcntl.F_GETFL)
        self.assertTrue(flags & os.O_NONBLOCK)

    def test_kick_after_a_failed_memory_table(self):
        """SET_MEM_TABLE that fails under started rings (a region beyond
        its file), then a kick: the rings are not processed over unmapped
        memory; errors are recorded and the back-end answers on."""
        small = os.memfd_create("small")
        try:
            self.fe.send(Request.SET_MEM_TABLE, MemoryTable(
                (MemoryRegion(0, MEM, UVA, 0),)), fds=[small])
            os.eventfd_write(self.kicks[1], 1)
            os.eventfd_write(self.kicks[0], 1)
            self.responsive()
        finally:
            os.close(small)
        self.assertTrue(self.backend.errors)
        self.backend.errors.clear()

    def test_work_without_progress_is_a_stall(self):
        """A transmit entry left available (its kick lost) is recorded as a
        stall naming the ring and its indexes, once; the thread looks."""
        self.device.stall_after = 0.3
        self.desc(1, 0, BUFS, len(HDR) + 60)
        self.offer(1, [0], kick=False)
        self.backend.wait_for(lambda: bool(self.device.stalls),
                              "a stall record", 5)
        stall = self.device.stalls[0]
        self.assertEqual(stall.ring, 1)
        self.assertIn("avail idx 1, next avail 0, used idx 0",
                      stall.indexes)
        with self.assertRaisesRegex(BackendFailure, "stalled rings"):
            self.backend.check()
        os.eventfd_write(self.kicks[1], 1)
        self.port.wait_sent(1, 2)
        self.assertEqual(len(self.device.stalls), 1)

    def test_what_is_not_a_stall(self):
        """Not stalls: an empty ring, a frame held by the test's transmit
        budget, a receive ring with buffers but nothing on the wire."""
        self.device.tx_budget = 0
        self.desc(1, 0, BUFS, len(HDR) + 60)
        self.desc(0, 0, BUFS + 4096, 2048, flags=2)  # VRING_DESC_F_WRITE
        self.offer(1, [0])
        self.offer(0, [0])
        self.backend.wait_for(lambda: self.device.descriptors == 0,
                              "nothing taken", 1)
        with self.backend.lock():
            for t in (1000.0, 1001.0, 1100.0):
                self.device.check_stalls(t)
            self.assertEqual(self.device.stalls, [])
            self.device.tx_budget = None  # now the held frame is work
            for t in (1000.0, 1001.0, 1100.0):
                self.device.check_stalls(t)
        self.assertEqual([s.ring for s in self.device.stalls], [1])

    def test_rx_and_dirty_log(self):
        log_fd = os.memfd_create("log")
        os.ftruncate(log_fd, MEM // 4096 // 8)
        self.fe.call(Request.SET_LOG_BASE, LogDescription(MEM // 4096 // 8, 0),
                     fds=[log_fd])
        self.fe.send(Request.SET_FEATURES, U64(int(
            VirtioFeature.VERSION_1 | VirtioFeature.PROTOCOL_FEATURES
            | VirtioFeature.LOG_ALL)))
        self.fe.call(Request.GET_FEATURES)
        for i in range(2):
            self.desc(0, i, BUFS + 0x3000 * i, 2048, 2)   # WRITE
        self.offer(0, [0, 1])
        with self.port.cond:
            self.port.wire.extend([b"x" * 100, b"y" * 200])
        self.backend.poke()
        self.port.wait_received(2, 2)
        self.assertEqual(self.mem[BUFS + 12:BUFS + 112], b"x" * 100)
        log = mmap.mmap(log_fd, MEM // 4096 // 8)
        dirty = {i * 8 + b for i, byte in enumerate(log[:]) for b in range(8)
                 if byte & (1 << b)}
        log.close()
        os.close(log_fd)
        self.assertIn(BUFS // 4096, dirty)                # buffer 0
        self.assertIn((BUFS + 0x3000) // 4096, dirty)     # buffer 1
        self.assertIn(RINGS[0][2] // 4096, dirty)         # used ring, F_LOG
        self.assertNotIn(RINGS[1][2] // 4096, dirty)      # untouched ring

    def test_disabled_ring_drops(self):
        self.fe.send(Request.SET_VRING_ENABLE, VringState(1, 0))
        self.fe.call(Request.GET_FEATURES)
        self.mem[BUFS:BUFS + 20] = HDR + b"gone!!!!"
        self.desc(1, 0, BUFS, 20)
        self.offer(1, [0])
        self.port.wait_dropped(1, 2)
        self.assertEqual(self.port.sent, [])
        self.assertEqual(self.used(1), 1)

    def test_stopped_ring_is_not_touched(self):
        self.fe.call(Request.GET_VRING_BASE, VringState(1, 0))
        self.mem[BUFS:BUFS + 20] = HDR + b"later..."
        self.desc(1, 0, BUFS, 20)
        self.offer(1, [0])
        self.backend.poke()
        self.fe.call(Request.GET_FEATURES)  # the poke has been served
        self.assertEqual(self.used(1), 0)
        self.assertEqual(self.port.sent, [])


if __name__ == "__main__":
    unittest.main()


class PortBoundsTest(unittest.TestCase):
    """Both frame queues of a port are bounded, and what they turn away is
    counted: a driver sending millions of frames cannot grow memory."""

    def test_sent_keeps_the_latest_frames(self):
        port = Port(capacity=4)
        for i in range(0, 20, 2):
            with port.cond:
                port.record_sent([SentFrame(bytes([i]), "b", 1),
                                  SentFrame(bytes([i + 1]), "b", 1)])
        self.assertEqual(port.sent_total, 20)
        self.assertLessEqual(len(port.sent), 8)
        self.assertEqual(port.forgotten + len(port.sent), 20)
        self.assertEqual(port.sent[-1].data, bytes([19]))
        port.wait_sent(20, 0)

    def test_offer_refuses_beyond_capacity(self):
        port = Port(capacity=4)
        self.assertEqual(port.offer([b"a"] * 3), 3)
        self.assertEqual(port.offer([b"b"] * 3), 1)
        self.assertEqual((len(port.wire), port.refused), (4, 2))


class EventIdxTest(unittest.TestCase):
    """VIRTIO_F_EVENT_IDX: interrupt only when used_event is crossed."""

    def test_avail_event(self):
        """With EVENT_IDX the device writes used->avail_event (the next
        entry it will take), and reports entries that came meanwhile."""
        from avocado_vhost.vhost_user.memory import GuestMemory
        from avocado_vhost.vhost_user.virtq import SplitRing
        memory = GuestMemory()
        fd = os.memfd_create("ring")
        os.ftruncate(fd, MEM)
        memory.add(MemoryRegion(0, MEM, UVA, 0), fd)
        avail_event = 0x3000 + 4 + 8 * NUM
        try:
            ring = SplitRing(memory, NUM, 0x1000, 0x2000, 0x3000, 5,
                             event_idx=True)
            memory.write(0x2000 + 2, U16.pack(5))  # nothing pending
            self.assertFalse(ring.publish_avail_event())
            self.assertEqual(U16.unpack(memory.read(avail_event, 2))[0], 5)
            memory.write(0x2000 + 2, U16.pack(6))  # the driver added one
            self.assertTrue(ring.publish_avail_event())
            plain = SplitRing(memory, NUM, 0x1000, 0x2000, 0x3000, 6)
            memory.write(avail_event, U16.pack(0))
            self.assertFalse(plain.publish_avail_event())  # no EVENT_IDX
            self.assertEqual(U16.unpack(memory.read(avail_event, 2))[0], 0)
        finally:
            memory.clear()

    def test_used_event(self):
        from avocado_vhost.vhost_user.memory import GuestMemory
        from avocado_vhost.vhost_user.virtq import SplitRing
        memory = GuestMemory()
        fd = os.memfd_create("ring")
        os.ftruncate(fd, MEM)
        memory.add(MemoryRegion(0, MEM, UVA, 0), fd)
        try:
            ring = SplitRing(memory, NUM, 0x1000, 0x2000, 0x3000, 0,
                             event_idx=True)
            memory.write(0x2000 + 4 + 2 * NUM, U16.pack(2))  # used_event
            ring.push(0, 0)
            self.assertFalse(ring.should_notify())  # 1 does not pass 2
            ring.push(1, 0)
            ring.push(2, 0)
            self.assertTrue(ring.should_notify())   # 1 -> 3 crosses 2
            self.assertFalse(ring.should_notify())  # nothing new
        finally:
            memory.clear()
