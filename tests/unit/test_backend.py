"""The back-end thread against a front-end written in the test.

Every request type, every reply, the fd rules, malformed input, conformance
violations, faults and waits -- over a real socketpair with real SCM_RIGHTS
fds and real memfd mappings.  Every test also checks (in tearDown) that no
fd was leaked.
"""

import os
import select
import socket
import struct
import threading
import time
import unittest

from avocado_vhost.vhost_user import (BackendConfig, BackendFailure,
                                      DisconnectCause, Fault, FaultAction,
                                      Side,
                                      Request, RingEvent, VhostUserBackend,
                                      WaitTimeout)
from avocado_vhost.vhost_user.connection import close_fds
from avocado_vhost.vhost_user.inflight import InflightArea, region_size
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.vhost_user.message import (
    FLAG_REPLY, HEADER, VERSION, ConfigSpace, IotlbMsg, InflightDescription,
    LogDescription, MemoryRegion, MemoryTable, ProtocolFeature, SingleRegion,
    U64, VirtioFeature, VringAddr, VringState, encode)

from avocado_vhost.vhost_user import conformance
from avocado_vhost.vhost_user.message import Header
from avocado_vhost.vhost_user.state import DeviceState

from helpers import ALL_PROTOCOL, BackendTestCase, memfd, open_fds

UVA = 0x7F0000000000


class Negotiation(BackendTestCase):

    def test_get_features_reply(self):
        request, flags, payload = self.fe.call(Request.GET_FEATURES)
        self.assertEqual(request, Request.GET_FEATURES)
        self.assertEqual(flags, VERSION | FLAG_REPLY)
        self.assertEqual(U64.unpack(payload).value,
                         self.backend.config.features)

    def test_protocol_features_and_owner(self):
        self.negotiate()
        state = self.backend.state
        self.assertTrue(state.owner)
        self.assertEqual(state.acked_protocol_features, int(ALL_PROTOCOL))
        self.check_clean()

    def test_get_queue_num_and_max_mem_slots(self):
        self.negotiate()
        _, _, payload = self.fe.call(Request.GET_QUEUE_NUM)
        self.assertEqual(U64.unpack(payload).value, 1)
        _, _, payload = self.fe.call(Request.GET_MAX_MEM_SLOTS)
        self.assertEqual(U64.unpack(payload).value, 32)
        self.check_clean()

    def test_reply_ack(self):
        self.negotiate()
        _, flags, payload = self.fe.call(Request.SET_OWNER, need_reply=True)
        self.assertEqual(flags, VERSION | FLAG_REPLY)
        self.assertEqual(U64.unpack(payload).value, 0)

    def test_no_protocol_features_enables_rings(self):
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_FEATURES, U64(int(VirtioFeature.VERSION_1)))
        self.fe.send(Request.SET_VRING_NUM, VringState(0, 256))
        self.sync()
        self.assertTrue(self.backend.state.vrings[0].enabled)

    def check_clean(self):
        self.backend.check()


class Memory(BackendTestCase):

    def test_mem_table_maps_and_translates(self):
        self.negotiate()
        fds = [memfd(1 << 20), memfd(2 << 20)]
        os.pwrite(fds[1], b"hello", 0x1234)
        table = MemoryTable((MemoryRegion(0, 1 << 20, UVA, 0),
                             MemoryRegion(0x200000, 2 << 20, UVA + 0x400000,
                                          0)))
        self.fe.send(Request.SET_MEM_TABLE, table, fds=fds)
        for fd in fds:
            os.close(fd)
        self.sync()
        mem = self.backend.state.memory
        self.assertEqual(len(mem), 2)
        self.assertEqual(mem.read(0x201234, 5), b"hello")
        self.assertEqual(mem.uva_to_gpa(UVA + 0x400010), 0x200010)
        with self.assertRaises(LookupError):
            mem.read(0x100000, 16)  # the hole between the regions
        self.backend.check()

    def test_mmap_offset_is_honoured(self):
        self.negotiate()
        fd = memfd(3 << 20)
        os.pwrite(fd, b"offset!", 0x101000)
        self.fe.send(Request.SET_MEM_TABLE, MemoryTable(
            (MemoryRegion(0x100000, 2 << 20, UVA, 0x100000),)), fds=[fd])
        os.close(fd)
        self.sync()
        self.assertEqual(self.backend.state.memory.read(0x101000, 7),
                         b"offset!")

    def test_add_and_remove_region(self):
        self.negotiate()
        fd = memfd(1 << 20)
        region = MemoryRegion(0x100000, 1 << 20, UVA, 0)
        _, _, reply = self.fe.call(Request.ADD_MEM_REG, SingleRegion(region),
                                   fds=[fd], need_reply=True)
        os.close(fd)
        self.assertEqual(U64.unpack(reply).value, 0)
        self.assertEqual(len(self.backend.state.memory), 1)
        _, _, reply = self.fe.call(Request.REM_MEM_REG, SingleRegion(region),
                                   need_reply=True)
        self.assertEqual(U64.unpack(reply).value, 0)
        self.assertEqual(len(self.backend.state.memory), 0)
        self.backend.check()

    def test_rem_mem_reg_with_tolerated_fd(self):
        self.negotiate()
        fd = memfd(1 << 20)
        region = MemoryRegion(0, 1 << 20, UVA, 0)
        self.fe.call(Request.ADD_MEM_REG, SingleRegion(region), fds=[fd],
                     need_reply=True)
        self.fe.call(Request.REM_MEM_REG, SingleRegion(region), fds=[fd],
                     need_reply=True)
        os.close(fd)
        self.backend.check()

    def test_log_base_and_mark(self):
        self.negotiate()
        self.mem_table(size=1 << 20)
        log_fd = memfd(4096, "log")
        _, _, reply = self.fe.call(Request.SET_LOG_BASE,
                                   LogDescription(32, 0), fds=[log_fd])
        self.assertEqual(U64.unpack(reply).value, 0)
        self.backend.mark_dirty(0x5000, 0x2000)
        bits = os.pread(log_fd, 4, 0)
        os.close(log_fd)
        self.assertEqual(bits[0], 0b01100000)
        self.assertEqual(self.backend.state.log.dirty_pages(), [5, 6])
        self.backend.check()

    def test_log_fd(self):
        self.negotiate()
        efd = os.eventfd(0)
        self.fe.send(Request.SET_LOG_FD, fds=[efd])
        os.close(efd)
        self.sync()
        self.assertIsNotNone(self.backend.state.log_fd)


class Rings(BackendTestCase):

    def setUp(self):
        super().setUp()
        self.negotiate()
        self.mem_table(size=1 << 20)

    def start_ring(self, index, base=0):
        fe = self.fe
        fe.send(Request.SET_VRING_NUM, VringState(index, 256))
        fe.send(Request.SET_VRING_BASE, VringState(index, base))
        fe.send(Request.SET_VRING_ADDR, VringAddr(index, 0, UVA, UVA + 0x2000,
                                                  UVA + 0x1000, 0))
        for req in (Request.SET_VRING_KICK, Request.SET_VRING_CALL,
                    Request.SET_VRING_ERR):
            efd = os.eventfd(0)
            fe.send(req, U64(index), fds=[efd])
            os.close(efd)
        fe.send(Request.SET_VRING_ENABLE, VringState(index, 1))
        self.sync()

    def test_ring_lifecycle_and_base(self):
        self.start_ring(0, base=7)
        ring = self.backend.state.vrings[0]
        self.assertTrue(ring.started and ring.enabled)
        self.assertEqual((ring.num, ring.base), (256, 7))
        _, _, reply = self.fe.call(Request.GET_VRING_BASE, VringState(0, 0))
        self.assertEqual(VringState.unpack(reply), VringState(0, 7))
        self.assertFalse(ring.started)
        self.backend.check()

    def test_wait_rings_started(self):
        self.start_ring(0)
        self.start_ring(1)
        self.backend.wait_rings_started(2, timeout=1)

    def test_nofd_kick_means_polling(self):
        self.fe.send(Request.SET_VRING_KICK, U64(0x100 | 2))
        self.sync()
        self.assertTrue(self.backend.state.vrings[2].polling)
        self.assertTrue(self.backend.state.vrings[2].started)

    def test_inband_kick_starts_ring(self):
        self.fe.send(Request.VRING_KICK, VringState(3, 0))
        self.sync()
        self.assertTrue(self.backend.state.vrings[3].started)

    def test_endian_and_disable(self):
        self.fe.send(Request.SET_VRING_ENDIAN, VringState(0, 1))
        self.fe.send(Request.SET_VRING_ENABLE, VringState(0, 0))
        self.sync()
        ring = self.backend.state.vrings[0]
        self.assertTrue(ring.big_endian)
        self.assertFalse(ring.enabled)

    def test_reset_device(self):
        self.start_ring(0)
        self.fe.send(Request.RESET_DEVICE)
        self.sync()
        self.assertEqual(self.backend.state.vrings, {})
        self.backend.check()

    def test_reset_owner(self):
        self.start_ring(0)
        self.fe.send(Request.RESET_OWNER)
        self.sync()
        self.assertFalse(self.backend.state.owner)

    def test_ring_listener_sees_events(self):
        seen = []
        self.backend.ring_listeners.append(
            lambda be, ring, event: seen.append((ring.index, event)))
        self.start_ring(1)
        self.fe.call(Request.GET_VRING_BASE, VringState(1, 0))
        self.assertIn((1, RingEvent.STARTED), seen)
        self.assertIn((1, RingEvent.STOPPED), seen)


class DeviceRequests(BackendTestCase):

    def setUp(self):
        super().setUp()
        self.negotiate()

    def test_config_get_and_set(self):
        _, _, reply = self.fe.call(Request.GET_CONFIG, ConfigSpace(
            4, 4, 0, bytes(4)))
        self.assertEqual(ConfigSpace.unpack(reply).data, bytes([4, 5, 6, 7]))
        self.fe.send(Request.SET_CONFIG, ConfigSpace(0, 2, 0, b"\xaa\xbb"))
        _, _, reply = self.fe.call(Request.GET_CONFIG, ConfigSpace(
            0, 3, 0, bytes(3)))
        self.assertEqual(ConfigSpace.unpack(reply).data, b"\xaa\xbb\x02")
        self.backend.check()

    def test_config_beyond_space_answers_size_zero(self):
        _, _, reply = self.fe.call(Request.GET_CONFIG, ConfigSpace(
            60, 8, 0, bytes(8)))
        self.assertEqual(len(reply), 12)  # header only: the spec's error
        self.assertTrue(self.backend.errors)
        self.backend.errors.clear()

    def test_status(self):
        self.fe.send(Request.SET_STATUS, U64(0xF))
        _, _, reply = self.fe.call(Request.GET_STATUS)
        self.assertEqual(U64.unpack(reply).value, 0xF)

    def test_rarp_mtu_backend_req(self):
        self.fe.send(Request.SEND_RARP, U64(0x525400123456))
        self.fe.send(Request.NET_SET_MTU, U64(1500))
        a, channel = socket.socketpair()
        self.fe.send(Request.SET_BACKEND_REQ_FD, fds=[a.fileno()])
        a.close()
        channel.close()
        self.sync()
        state = self.backend.state
        self.assertEqual(state.rarp, [0x525400123456])
        self.assertEqual(state.mtu, 1500)
        self.assertIsNotNone(state.backend_channel)
        self.backend.check()

    def test_get_inflight_fd_answers_a_fresh_area(self):
        """GET_INFLIGHT_FD: an area in the spec's layout for the queues
        asked, on an fd that comes with the answer, every region
        initialised (version 1, nothing in flight)."""
        _, _, raw, fds = self.fe.call_for_fds(
            Request.GET_INFLIGHT_FD, InflightDescription(0, 0, 2, 256))
        try:
            answer = InflightDescription.unpack(raw)
            self.assertEqual(answer.mmap_size, 2 * region_size(256))
            self.assertEqual(len(fds), 1)
            area = InflightArea(os.dup(fds[0]), answer)
            try:
                for index in (0, 1):
                    self.assertEqual(area.queue(index).version, 1)
                    self.assertEqual(area.queue(index).in_flight(), [])
            finally:
                area.close()
        finally:
            close_fds(fds)
        self.backend.check()

    def test_unimplemented_request_without_ack_closes(self):
        a, b = os.pipe()
        self.fe.send(Request.GPU_SET_SOCKET, fds=[a])
        os.close(a)
        os.close(b)
        self.assertTrue(self.fe.closed_by_peer())
        self.assertIn("GPU_SET_SOCKET", self.backend.refused[0].text)

    def test_iotlb_is_acked(self):
        self.fe.send(Request.SET_FEATURES, U64(int(
            VirtioFeature.VERSION_1 | VirtioFeature.ACCESS_PLATFORM
            | VirtioFeature.PROTOCOL_FEATURES)))
        # ACCESS_PLATFORM is not offered by default: a violation, but the
        # message itself is answered.
        _, _, reply = self.fe.call(Request.IOTLB_MSG,
                                   IotlbMsg(0x1000, 0x1000, UVA, 3, 2))
        self.assertEqual(U64.unpack(reply).value, 0)
        self.assertIn("features-subset", self.rules())


class BadInput(BackendTestCase):
    """Each malformed message: an error recorded, fds closed, no crash."""

    def expect_error(self, text):
        self.backend.wait_for(lambda: self.backend.errors, "an error", 2)
        self.assertRegex(self.backend.errors[0].text, text)
        with self.assertRaises(BackendFailure):
            self.backend.check()
        self.backend.errors.clear()

    def test_bad_version(self):
        self.fe.send_raw(HEADER.pack(Request.GET_FEATURES, 0x2, 0))
        self.expect_error("bad version")
        self.assertTrue(self.fe.closed_by_peer())  # a GET cannot be answered

    def test_reply_flag_on_request(self):
        self.fe.send_raw(HEADER.pack(Request.SET_OWNER, 0x5, 0))
        self.expect_error("REPLY flag")
        self.sync()  # framing intact: the connection goes on

    def test_wrong_size(self):
        self.fe.send_raw(HEADER.pack(Request.SET_FEATURES, 1, 4) + bytes(4))
        self.expect_error("payload of 4 bytes, expected 8")
        self.sync()

    def test_oversized_closes(self):
        self.fe.send_raw(HEADER.pack(Request.SET_FEATURES, 1, 1 << 20))
        self.expect_error("exceeds the maximum")
        self.assertTrue(self.fe.closed_by_peer())

    def test_unknown_request_closes(self):
        self.fe.send_raw(HEADER.pack(99, 1, 0))
        self.expect_error("unknown request number 99")
        self.assertTrue(self.fe.closed_by_peer())

    def test_wrong_fd_count_closes_the_fds(self):
        efd = os.eventfd(0)
        self.fe.send(Request.SET_OWNER, fds=[efd, efd])
        os.close(efd)
        self.expect_error("carries 2 fds, expected 0")
        self.sync()

    def test_missing_fd(self):
        self.fe.send(Request.SET_VRING_KICK, U64(0))
        self.expect_error("carries 0 fds, expected 1")

    def test_too_many_regions(self):
        data = struct.pack("=II", 9, 0) + bytes(32 * 9)
        self.fe.send_raw(HEADER.pack(Request.SET_MEM_TABLE, 1, len(data))
                         + data)
        self.expect_error("payload of 296 bytes")

    def test_region_beyond_file(self):
        self.negotiate()
        fd = memfd(4096)
        self.fe.send(Request.SET_MEM_TABLE, MemoryTable(
            (MemoryRegion(0, 1 << 20, UVA, 0),)), fds=[fd])
        os.close(fd)
        self.expect_error("needs 1048576 bytes of its file")
        self.assertEqual(len(self.backend.state.memory), 0)

    def test_unmappable_region(self):
        self.negotiate()
        a, b = os.pipe()
        self.fe.send(Request.SET_MEM_TABLE, MemoryTable(
            (MemoryRegion(0, 4096, UVA, 0),)), fds=[a])
        os.close(a)
        os.close(b)
        self.expect_error("memory region is pipe:.*not a regular file")

    def test_malformed_with_reply_ack_gets_nack(self):
        self.negotiate()
        self.fe.send_raw(HEADER.pack(Request.SET_FEATURES, 0x9, 4) + bytes(4))
        _, _, reply = self.fe.recv()
        self.assertEqual(U64.unpack(reply).value, 1)
        self.expect_error("expected 8")

    def test_peer_disconnects_mid_message(self):
        self.fe.send_raw(HEADER.pack(Request.SET_FEATURES, 1, 8) + b"\x01")
        self.fe.close()
        self.expect_error("cut short")
        self.backend.wait_disconnected(2)

    def test_partial_message_times_out(self):
        self.backend.config.message_timeout = 0.2
        self.fe.send_raw(HEADER.pack(Request.SET_FEATURES, 1, 8)[:5])
        self.expect_error("truncated message")

    def test_dribbled_message_times_out_as_a_whole(self):
        """One byte every 0.1 s never stalls 0.3 s, yet the message as a
        whole is over its bound long before the last byte."""
        self.backend.config.message_timeout = 0.3
        data = HEADER.pack(Request.SET_FEATURES, 1, 8) + bytes(8)
        sent = []
        stop = threading.Event()

        def dribble():
            for i in range(len(data)):
                if stop.wait(0.1):
                    return
                try:
                    self.fe.send_raw(data[i:i + 1])
                except OSError:
                    return  # the back-end hung up
                sent.append(i)
        thread = threading.Thread(target=dribble)
        thread.start()
        try:
            self.backend.wait_for(lambda: self.backend.errors, "an error", 5)
            bytes_sent = len(sent)
        finally:
            stop.set()
            thread.join()
        self.assertRegex(self.backend.errors[0].text, "truncated message")
        self.assertLess(bytes_sent, len(data),
                        "the back-end waited for the whole dribbled message")
        self.backend.errors.clear()


class Conformance(BackendTestCase):

    def test_clean_sequence_has_no_violation(self):
        self.negotiate()
        self.mem_table()
        self.assertEqual(self.backend.violations, [])

    def violation(self, rule):
        """The front-end broke ``rule``: recorded, and the verdict fails
        unless violations are allowed."""
        self.sync()
        self.assertIn(rule, self.rules(), self.backend.violations)
        self.assertTrue(all(v.side is Side.FRONT_END
                            for v in self.backend.violations))
        with self.assertRaises(BackendFailure):
            self.backend.check()
        self.backend.check(allow_violations=True)

    def test_unoffered_feature(self):
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_FEATURES, U64(1 << 41))
        self.violation("features-subset")

    def test_gated_request(self):
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_PROTOCOL_FEATURES, U64(0))
        self.fe.call(Request.GET_QUEUE_NUM)
        self.violation("protocol-feature-gate")

    def test_ring_index_out_of_range(self):
        """A violation of the front-end, and an error: no ring is made."""
        self.negotiate()
        self.fe.send(Request.SET_VRING_NUM, VringState(8, 256))
        self.sync()
        self.assertIn("ring-index-valid", self.rules())
        self.assertIn("ring index 8 is beyond the 8 rings",
                      self.backend.errors[0].text)
        self.assertNotIn(8, self.backend.state.vrings)
        self.backend.errors.clear()
        self.backend.violations.clear()


    def test_packed_base_without_used_half(self):
        # A connection takes the offer when it starts: offer packed rings,
        # then connect anew.
        self.backend.config.features |= int(VirtioFeature.RING_PACKED)
        self.fe.close()
        self.backend.wait_disconnected(timeout=5)
        self.fe = self.connect()
        self.backend.wait_connected(2, timeout=5)
        self.negotiate(features=VirtioFeature.VERSION_1
                       | VirtioFeature.PROTOCOL_FEATURES
                       | VirtioFeature.RING_PACKED)
        self.fe.send(Request.SET_VRING_BASE, VringState(0, 0x80008000))
        self.sync()
        self.assertEqual(self.backend.violations, [])  # both halves: fine
        self.fe.send(Request.SET_VRING_BASE, VringState(0, 0x8000))
        self.violation("packed-base-has-used-half")

    def test_reserved_num(self):
        self.negotiate()
        self.fe.call(Request.GET_VRING_BASE, VringState(0, 5))
        self.violation("reserved-num-zero")

    def test_bad_ring_size(self):
        self.negotiate()
        self.fe.send(Request.SET_VRING_NUM, VringState(0, 100))
        self.violation("ring-size-valid")

    def test_ring_addr_outside_memory(self):
        self.negotiate()
        self.mem_table()
        self.fe.send(Request.SET_VRING_ADDR, VringAddr(0, 0, 0x1000, 0x2000,
                                                       0x3000, 0))
        self.violation("ring-addr-mapped")

    def test_reconfigure_started_ring(self):
        self.negotiate()
        self.fe.send(Request.SET_VRING_KICK, U64(0x100))
        self.fe.send(Request.SET_VRING_NUM, VringState(0, 256))
        self.violation("no-reconfig-while-started")

    def test_inband_without_channel_closes(self):
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_PROTOCOL_FEATURES, U64(int(
            ProtocolFeature.INBAND_NOTIFICATIONS)))
        self.assertTrue(self.fe.closed_by_peer())
        self.assertIn("protocol-feature-needs", self.rules())
        self.backend.violations.clear()

    def test_postcopy_order(self):
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_PROTOCOL_FEATURES, U64(int(
            ProtocolFeature.PAGEFAULT)))
        self.fe.send(Request.POSTCOPY_LISTEN)
        self.sync()
        self.assertIn("postcopy-order", self.rules())
        self.assertIn("without a userfaultfd", self.backend.errors[-1].text)
        self.backend.violations.clear()
        self.backend.errors.clear()

    def test_postcopy_in_order_is_no_violation(self):
        """The judge follows the front-end's postcopy phases whatever the
        back-end answered: ADVISE, LISTEN, END in order breaks no rule."""
        state = DeviceState(
            acked_protocol_features=int(ProtocolFeature.PAGEFAULT))
        for req in (Request.POSTCOPY_ADVISE, Request.POSTCOPY_LISTEN,
                    Request.POSTCOPY_END):
            self.assertEqual(conformance.check(req, None, Header(req, 1, 0),
                                               state), [], req.name)
            conformance.observe(req, None, state)
        # negative control: END again, after the end, is out of order
        self.assertTrue(conformance.check(
            Request.POSTCOPY_END, None, Header(Request.POSTCOPY_END, 1, 0),
            state))

    def judge(self, state, req, payload=None):
        """The rules ``req`` breaks in ``state``; then the judge
        remembers it as the session does."""
        found = [breach.rule for breach in
                 conformance.check(req, payload, Header(req, 1, 8), state)]
        conformance.observe(req, payload, state)
        if req is Request.SET_STATUS:
            state.status = payload.value
        return found

    def test_status_grows_and_driver_ok_needs_features_ok(self):
        """The driver "MUST NOT clear a device status bit" but by writing
        0, and sets FEATURES_OK before DRIVER_OK (virtio 3.1.1)."""
        state = DeviceState(acked_protocol_features=int(
            ProtocolFeature.STATUS))
        for value in (0x8, 0xF, 0x0, 0x8, 0xF):  # QEMU's sequence
            self.assertEqual(self.judge(state, Request.SET_STATUS,
                                        U64(value)), [], hex(value))
        # negative controls
        self.assertEqual(self.judge(state, Request.SET_STATUS, U64(0x7)),
                         ["status-only-grows"])  # clears bits
        state.status = 0
        self.assertEqual(self.judge(state, Request.SET_STATUS, U64(0x7)),
                         ["status-only-grows"])  # DRIVER_OK, no FEATURES_OK

    def test_ring_positions_are_fetched_before_the_status_reset(self):
        """Writing 0 to the status resets the device: GET_VRING_BASE must
        come first (QEMU 7.2 to 8.0 sent it after, 6f8be29ec1)."""
        fixed = DeviceState(acked_protocol_features=int(
            ProtocolFeature.STATUS))
        broken = DeviceState(acked_protocol_features=int(
            ProtocolFeature.STATUS))
        for state in (fixed, broken):
            self.judge(state, Request.SET_STATUS, U64(0xF))
        self.assertEqual(self.judge(fixed, Request.GET_VRING_BASE,
                                    VringState(0, 0)), [])
        self.judge(fixed, Request.SET_STATUS, U64(0))
        self.judge(broken, Request.SET_STATUS, U64(0))
        self.assertEqual(self.judge(broken, Request.GET_VRING_BASE,
                                    VringState(0, 0)),
                         ["no-ring-state-after-reset"])
        # a device set up again after the reset has ring state again
        self.judge(broken, Request.SET_VRING_BASE, VringState(0, 0))
        self.assertEqual(self.judge(broken, Request.GET_VRING_BASE,
                                    VringState(0, 0)), [])

    def test_inflight_base_needs_inflight_shmfd(self):
        """GET_VRING_BASE_INFLIGHT "must only be negotiated if
        VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD is also negotiated"."""
        def judged(bits):
            return conformance.protocol_feature_needs(
                Request.SET_PROTOCOL_FEATURES, U64(int(bits)),
                Header(Request.SET_PROTOCOL_FEATURES, 1, 8), DeviceState())
        self.assertIn("INFLIGHT_SHMFD", judged(
            ProtocolFeature.GET_VRING_BASE_INFLIGHT) or "")
        self.assertIsNone(judged(ProtocolFeature.GET_VRING_BASE_INFLIGHT
                                 | ProtocolFeature.INFLIGHT_SHMFD))
        self.assertIn(conformance.protocol_feature_needs,
                      conformance.RULES)

    def test_fds_after_the_first_byte(self):
        """fds should come with the header's first byte: a front-end that
        sends them with the payload is judged."""
        self.negotiate()
        fd = os.eventfd(0)
        try:
            message = encode(Request.SET_VRING_KICK, U64(0))
            self.fe.send_raw(message[:12])
            self.fe.send_raw(message[12:], [fd])
            self.violation(conformance.FDS_WITH_THE_HEADER)
        finally:
            os.close(fd)

    def test_negative_control_fds_with_the_first_byte(self):
        self.negotiate()
        fd = os.eventfd(0)
        try:
            self.fe.send(Request.SET_VRING_KICK, U64(0), fds=[fd])
            self.sync()
            self.assertNotIn(conformance.FDS_WITH_THE_HEADER, self.rules())
        finally:
            os.close(fd)


class Postcopy(BackendTestCase):
    """The back-end's side of a postcopy migration, against the sequence
    QEMU's vhost_user_postcopy_* and set_mem_table_postcopy send."""

    config = BackendConfig(
        protocol_features=int(ALL_PROTOCOL | ProtocolFeature.PAGEFAULT),
        max_rings=8)

    def test_the_postcopy_sequence(self):
        self.negotiate(protocol=ALL_PROTOCOL | ProtocolFeature.PAGEFAULT)
        _, _, raw, fds = self.fe.call_for_fds(Request.POSTCOPY_ADVISE)
        try:
            self.assertEqual((raw, len(fds)), (b"", 1))
            self.assertEqual(os.readlink(f"/proc/self/fd/{fds[0]}"),
                             "anon_inode:[userfaultfd]")
        finally:
            close_fds(fds)
        _, _, ack = self.fe.call(Request.POSTCOPY_LISTEN, need_reply=True)
        self.assertEqual(U64.unpack(ack).value, 0)
        mem = memfd(1 << 20)
        region = MemoryRegion(0, 1 << 20, 0x7F0000000000, 0)
        try:
            request, _, raw = self.fe.call(Request.SET_MEM_TABLE,
                                           MemoryTable((region,)),
                                           fds=[mem])
        finally:
            os.close(mem)
        self.assertEqual(request, Request.SET_MEM_TABLE)
        mapped = MemoryTable.unpack(raw).regions[0]
        self.assertEqual(mapped.guest_addr, 0)
        self.assertNotEqual(mapped.user_addr, region.user_addr,
                            "the reply must give the back-end's address")
        self.assertIsNone(self.backend.state.memory.fault_in,
                          "memory touched before QEMU's acknowledgement")
        self.fe.send_raw(HEADER.pack(int(Request.SET_MEM_TABLE), VERSION, 8)
                         + U64(0).pack())
        self.sync()
        self.assertIsNotNone(self.backend.state.memory.fault_in)
        _, _, end = self.fe.call(Request.POSTCOPY_END, need_reply=True)
        self.assertEqual(U64.unpack(end).value, 0)
        self.assertIsNone(self.backend.state.userfault)
        self.backend.check()


class FaultsAndWaits(BackendTestCase):

    def test_disconnect_at_request(self):
        self.backend.faults.append(Fault(FaultAction.DISCONNECT,
                                         request=Request.SET_OWNER))
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.SET_OWNER)
        self.assertTrue(self.fe.closed_by_peer())
        self.backend.wait_disconnected(2)

    def test_disconnect_at_nth_message(self):
        self.backend.faults.append(Fault(FaultAction.DISCONNECT, nth=3))
        self.fe.call(Request.GET_FEATURES)
        self.fe.call(Request.GET_FEATURES)
        self.fe.send(Request.GET_FEATURES)
        self.assertTrue(self.fe.closed_by_peer())

    def test_wrong_reply(self):
        self.backend.faults.append(Fault(
            FaultAction.REPLY, request=Request.GET_FEATURES,
            reply_bytes=lambda req, p: encode(req, U64(0), 0x5)))
        _, _, payload = self.fe.call(Request.GET_FEATURES)
        self.assertEqual(U64.unpack(payload).value, 0)

    def test_a_misspelt_fault_action_is_refused(self):
        """A fault that could never fire is an error when it is made, not
        a test that silently checks nothing."""
        with self.assertRaisesRegex(ValueError, "fault action 'disconect'"):
            Fault("disconect", request=Request.SET_OWNER)
        with self.assertRaisesRegex(ValueError, "needs reply_bytes"):
            Fault("reply", request=Request.GET_FEATURES)

    def test_hold_and_release(self):
        hold = Fault(FaultAction.HOLD, request=Request.GET_FEATURES)
        self.backend.faults.append(hold)
        self.fe.send(Request.GET_FEATURES)
        self.assertTrue(hold.reached.wait(2))
        self.assertFalse(self.fe.closed_by_peer(timeout=0.05))
        hold.release.set()
        self.fe.recv()

    def test_stop_while_front_end_waits(self):
        hold = Fault(FaultAction.HOLD, request=Request.GET_FEATURES, hold_timeout=60)
        self.backend.faults.append(hold)
        self.fe.send(Request.GET_FEATURES)
        self.assertTrue(hold.reached.wait(2))
        stopper = threading.Thread(target=self.backend.stop)
        stopper.start()
        stopper.join(5)  # far less than the 60 s hold
        self.assertFalse(stopper.is_alive())
        self.assertTrue(self.fe.closed_by_peer())

    def test_a_held_message_holds_only_its_socket(self):
        """While an answer is held, the back-end's loop serves on: the
        test's drop of the connection is carried out at once, not after
        the hold, and the held message's fds go with the connection."""
        hold = Fault(FaultAction.HOLD, request=Request.GET_FEATURES, hold_timeout=60)
        self.backend.faults.append(hold)
        self.fe.send(Request.GET_FEATURES)
        self.assertTrue(hold.reached.wait(2))
        self.backend.disconnect()
        self.assertTrue(self.fe.closed_by_peer(timeout=5),
                        "the drop waited for the held answer")
        self.backend.wait_for(lambda: 1 in self.backend.disconnects,
                              "the end of connection 1", timeout=5)
        self.assertIs(self.backend.disconnects[1].cause,
                      DisconnectCause.DROPPED)

    def test_a_hold_that_times_out_is_answered_and_traced(self):
        hold = Fault(FaultAction.HOLD, request=Request.GET_FEATURES, hold_timeout=0.2)
        self.backend.faults.append(hold)
        self.fe.send(Request.GET_FEATURES)
        self.fe.recv()  # answered once the hold's time was up
        events = [e.detail for e in self.backend.trace.select("event")
                  if e.request == "HOLD-TIMEOUT"]
        self.assertEqual(events, ["GET_FEATURES held 0.2s"])

    def test_wait_timeout_says_what_it_saw(self):
        with self.assertRaises(WaitTimeout) as ctx:
            self.backend.wait_rings_started(2, timeout=0.1)
        text = str(ctx.exception)
        self.assertIn("2 started rings", text)
        self.assertIn("connections=1", text)
        self.assertIn("CONNECTED", text)

    def test_wait_fails_fast_on_error(self):
        waiter_error = []

        def wait():
            try:
                self.backend.wait_rings_started(1, timeout=10)
            except BackendFailure as exc:
                waiter_error.append(exc)
        thread = threading.Thread(target=wait)
        thread.start()
        self.fe.send_raw(HEADER.pack(Request.SET_FEATURES, 1, 3) + bytes(3))
        thread.join(5)
        self.assertTrue(waiter_error)
        self.assertIn("expected 8", str(waiter_error[0]))
        self.backend.errors.clear()

    def test_trace_records_both_directions(self):
        self.fe.call(Request.GET_FEATURES)
        kinds = [(e.kind, e.request) for e in self.backend.trace.entries]
        self.assertIn(("rx", "GET_FEATURES"), kinds)
        self.assertIn(("tx", "GET_FEATURES"), kinds)

    def test_reconnect_gets_fresh_state(self):
        self.negotiate()
        self.fe.close()
        self.backend.wait_disconnected(2)
        self.fe = self.connect()
        self.backend.wait_connected(2, timeout=2)
        self.assertFalse(self.backend.state.owner)


class Untrusted(BackendTestCase):
    """What a hostile front-end sends gets a recorded error, never a crash,
    a hang or memory without bound."""

    config = BackendConfig(protocol_features=int(ALL_PROTOCOL))  # no max

    def test_ring_indexes_are_bounded_without_max_rings(self):
        self.negotiate()
        for index in (1023, 1024, 70000, 0xFFFFFFFF):
            self.fe.send(Request.SET_VRING_NUM, VringState(index, 256))
        self.sync()
        self.assertEqual(sorted(self.backend.state.vrings), [1023])
        self.assertEqual(len(self.backend.errors), 3)
        self.backend.errors.clear()

    def test_front_end_that_reads_no_replies(self):
        """Replies pile up unread: the back-end gives up on the connection
        within its message timeout instead of blocking forever, and stop()
        returns."""
        self.backend.config.message_timeout = 0.3
        self.fe.sock.setblocking(False)
        request = HEADER.pack(Request.GET_FEATURES, 1, 0)
        writable = select.poll()
        writable.register(self.fe.sock, select.POLLOUT)
        # Keep requests coming until the back-end hangs up or stops reading
        # them: the front-end's own buffer may fill before the back-end's
        # (the kernel charges each small message far more than its bytes),
        # and a back-end with nothing left to read is not stuck.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                self.fe.send_raw(request)
            except BlockingIOError:
                if not writable.poll(1000):
                    break  # the back-end reads no more: it is stuck or gone
            except (BrokenPipeError, ConnectionResetError):
                break  # the back-end hung up
        self.backend.wait_for(
            lambda: any(r.cause is DisconnectCause.PEER_STUCK for r in
                        self.backend.disconnects.values()),
            "the back-end to drop a front-end that reads no replies", 5)
        self.assertFalse(self.backend.connected)
        self.backend.stop(timeout=5)

    def test_guest_memory_cannot_shrink_under_the_mapping(self):
        """A memfd the front-end would truncate after SET_MEM_TABLE: the
        back-end sealed it against shrinking, so the truncate fails instead
        of the next access killing the process with SIGBUS."""
        self.negotiate()
        fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 1 << 20)
        try:
            self.fe.send(Request.SET_MEM_TABLE, MemoryTable(
                (MemoryRegion(0, 1 << 20, 0x7F0000000000, 0),)), fds=[fd])
            self.sync()
            with self.assertRaises(PermissionError):
                os.ftruncate(fd, 4096)
            self.assertEqual(self.backend.state.memory.read(0xFFFF0, 16),
                             bytes(16))
        finally:
            os.close(fd)

    def test_regions_that_wrap_or_share_user_addresses(self):
        self.negotiate()
        fd = memfd(1 << 20)
        try:
            self.fe.send(Request.SET_MEM_TABLE, MemoryTable((MemoryRegion(
                0, 1 << 20, (1 << 64) - 4096, 0),)), fds=[fd])
            self.sync()
            self.assertIn("wrap past 2^64", self.backend.errors[0].text)
            self.fe.send(Request.SET_MEM_TABLE, MemoryTable((
                MemoryRegion(0, 1 << 19, 0x7F0000000000, 0),
                MemoryRegion(1 << 19, 1 << 19, 0x7F0000000000, 1 << 19))),
                fds=[fd, fd])
            self.sync()
        finally:
            os.close(fd)
        self.assertIn("mem-regions-disjoint", self.rules())
        self.backend.errors.clear()
        self.backend.violations.clear()

    def test_dirty_log_cannot_shrink_under_the_mapping(self):
        """As guest memory: the log memfd is sealed against shrinking, so a
        truncate fails instead of the next mark killing the process."""
        self.negotiate()
        fd = os.memfd_create("log", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 4096)
        try:
            self.fe.call(Request.SET_LOG_BASE, LogDescription(4096, 0),
                         fds=[fd])
            with self.assertRaises(PermissionError):
                os.ftruncate(fd, 0)
            self.backend.mark_dirty(0x7000)
        finally:
            os.close(fd)
        self.assertEqual(self.backend.errors, [])

    def test_call_fd_that_is_no_eventfd(self):
        """A pipe, a directory or a memfd as call/kick/err fd: refused with
        its kind named, the fd closed, the back-end still serving."""
        self.negotiate()
        read_end, write_end = os.pipe()
        directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        mem = memfd(4096)
        try:
            for request, fd in ((Request.SET_VRING_CALL, write_end),
                                (Request.SET_VRING_KICK, directory),
                                (Request.SET_VRING_ERR, mem)):
                self.fe.send(request, U64(0), fds=[fd])
            self.sync()
        finally:
            for fd in (read_end, write_end, directory, mem):
                os.close(fd)
        self.assertEqual(len(self.backend.errors), 3, self.backend.errors)
        self.assertIn("pipe:", self.backend.errors[0].text)
        self.assertIn("not an eventfd", self.backend.errors[1].text)
        ring = self.backend.state.vrings[0]
        self.assertEqual((ring.call_fd, ring.kick_fd, ring.err_fd),
                         (None, None, None))
        self.assertFalse(ring.started)
        self.backend.errors.clear()


class UntrustedWithDevice(BackendTestCase):
    """Hostile ring set-ups reaching the data path (a NetDevice)."""

    def setUp(self):
        self.fds_before = open_fds()
        config = BackendConfig(protocol_features=int(ALL_PROTOCOL),
                               max_rings=8)
        config.features |= int(VirtioFeature.RING_PACKED)
        self.backend = VhostUserBackend("unit", config,
                                        NetDevice(Port())).start()
        self.fe = self.connect()

    def test_packed_base_beyond_the_ring(self):
        """A packed SET_VRING_BASE whose position is past the ring size:
        refused with an error when the ring would start, never a crash."""
        self.negotiate(features=int(VirtioFeature.VERSION_1
                                    | VirtioFeature.PROTOCOL_FEATURES
                                    | VirtioFeature.RING_PACKED))
        self.mem_table(size=1 << 20)
        self.fe.send(Request.SET_VRING_NUM, VringState(0, 8))
        self.fe.send(Request.SET_VRING_BASE, VringState(0, 0x8000 | 100))
        kick = os.eventfd(0)
        try:
            self.fe.send(Request.SET_VRING_ADDR, VringAddr(
                0, 0, 0x7F0000001000, 0x7F0000003000, 0x7F0000002000, 0))
            self.fe.send(Request.SET_VRING_KICK, U64(0), fds=[kick])
            self.fe.call(Request.GET_FEATURES)
        finally:
            os.close(kick)
        self.assertFalse(any("crashed" in e.text for e in self.backend.errors),
                         self.backend.errors)
        self.assertTrue(any("ring 0" in e.text for e in self.backend.errors),
                        "a base past the ring went unnoticed: "
                        f"{self.backend.errors} {self.backend.violations}")
        self.backend.errors.clear()
        self.backend.violations.clear()


if __name__ == "__main__":
    unittest.main()


class Refusals(BackendTestCase):
    """Every request this back-end does not implement is refused the way
    the spec allows, and the refusal is on record."""

    def test_nack_with_reply_ack(self):
        """GPU_SET_SOCKET, the one request left unimplemented: a NACK when
        an ack is asked for, and the refusal on record."""
        self.negotiate()
        a, b = socket.socketpair()
        try:
            _, _, reply = self.fe.call(Request.GPU_SET_SOCKET,
                                       fds=[a.fileno()], need_reply=True)
        finally:
            a.close()
            b.close()
        self.assertNotEqual(U64.unpack(reply).value, 0)
        self.assertIs(self.backend.refused[-1].request,
                      Request.GPU_SET_SOCKET)


class CryptoSessions(BackendTestCase):
    """CREATE/CLOSE_CRYPTO_SESSION with QEMU's VhostUserCryptoSession."""

    def test_a_session_is_opened_and_closed(self):
        from avocado_vhost.vhost_user.message import Opaque
        self.negotiate()
        session = bytes(range(8)) + bytes(1064) + struct.pack("<q", -1)
        _, _, raw = self.fe.call(Request.CREATE_CRYPTO_SESSION,
                                 Opaque(session))
        self.assertEqual(raw[:-8], session[:-8])
        opened = struct.unpack("<q", raw[-8:])[0]
        self.assertGreater(opened, 0)
        self.fe.send(Request.CLOSE_CRYPTO_SESSION, U64(opened))
        self.sync()
        self.assertEqual(self.backend.state.crypto_sessions, {})
        self.fe.send(Request.CLOSE_CRYPTO_SESSION, U64(opened))  # again
        self.sync()
        self.assertIn("not open", self.backend.errors[-1].text)
        self.backend.errors.clear()
        self.backend.violations.clear()  # CRYPTO_SESSION is not offered

    def test_qemu_8_0_puts_the_id_first(self):
        """Up to QEMU 8.0 the session is 632 bytes with the id first."""
        from avocado_vhost.vhost_user.message import Opaque
        self.negotiate()
        session = struct.pack("<q", -1) + bytes(624)
        _, _, raw = self.fe.call(Request.CREATE_CRYPTO_SESSION,
                                 Opaque(session))
        self.assertEqual(struct.unpack_from("<q", raw)[0], 1)
        self.assertEqual(raw[8:], session[8:])
        self.backend.violations.clear()


    def test_device_state_fd_must_be_a_pipe(self):
        """SET_DEVICE_STATE_FD's fd "must behave like a pipe": a memfd is
        an error, answered as a failure; CHECK_DEVICE_STATE without a
        transfer is a failure too."""
        from avocado_vhost.vhost_user.message import DeviceStateParams
        self.negotiate()
        fd = memfd(4096)
        _, _, reply = self.fe.call(Request.SET_DEVICE_STATE_FD,
                                   DeviceStateParams(0, 0), fds=[fd])
        os.close(fd)
        self.assertNotEqual(U64.unpack(reply).value & 0xFF, 0)
        _, _, reply = self.fe.call(Request.CHECK_DEVICE_STATE)
        self.assertNotEqual(U64.unpack(reply).value, 0)
        errors = " ".join(e.text for e in self.backend.errors)
        self.assertIn("not a pipe", errors)
        self.assertIn("without a transfer", errors)
        self.backend.errors.clear()
        self.backend.violations.clear()
