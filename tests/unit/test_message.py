"""Wire format: every payload encodes and decodes; sizes are enforced."""

import dataclasses
import struct
import unittest

from avocado_vhost.vhost_user.error import MalformedMessage, UnknownRequest
from avocado_vhost.vhost_user.message import (
    FD_RULES, HEADER_SIZE, MAX_MEM_REGIONS, PAYLOAD_TYPES, REPLY_TYPES,
    ConfigSpace, Fixed,
    DeviceStateParams, Empty, InflightDescription, IotlbMsg, LogDescription,
    MemoryRegion, MemoryTable, Opaque, ProtocolFeature, Request,
    SharedObject, SharedObjectQuery, SingleRegion, U64, VirtioFeature,
    VringAddr, VringState,
    decode_header, decode_payload, decode_reply, encode, fd_rule,
    feature_names)

SAMPLES = {
    Empty: Empty(),
    U64: U64(0x123456789ABCDEF0),
    VringState: VringState(3, 256),
    VringAddr: VringAddr(1, 1, 0x1000, 0x2000, 0x3000, 0x4000),
    MemoryTable: MemoryTable(tuple(
        MemoryRegion(i << 20, 1 << 20, 0x7F00 << 32 | i << 20, i << 12)
        for i in range(3))),
    SingleRegion: SingleRegion(MemoryRegion(0x100000, 0x1000, 0x5000, 0)),
    LogDescription: LogDescription(8192, 0),
    IotlbMsg: IotlbMsg(0x1000, 0x2000, 0x3000, 3, 2),
    ConfigSpace: ConfigSpace(4, 8, 0, bytes(range(8))),
    InflightDescription: InflightDescription(4096, 0, 2, 256),
    SharedObject: SharedObject(bytes(range(16))),
    SharedObjectQuery: SharedObjectQuery(bytes(range(16))),
    DeviceStateParams: DeviceStateParams(0, 0),
    Opaque: Opaque(b"\x01\x02"),
}


class PayloadTest(unittest.TestCase):

    def test_every_request_has_a_payload_type(self):
        for request in Request:
            if request is Request.NONE:
                continue
            self.assertIn(request, PAYLOAD_TYPES, request.name)

    def test_every_request_round_trips(self):
        for request, ptype in PAYLOAD_TYPES.items():
            with self.subTest(request=request.name):
                payload = SAMPLES[ptype]
                data = encode(request, payload)
                header = decode_header(data[:HEADER_SIZE])
                self.assertEqual(header.request, request)
                self.assertEqual(header.version, 1)
                self.assertFalse(header.is_reply)
                req, decoded = decode_payload(header.request,
                                              data[HEADER_SIZE:])
                self.assertEqual(req, request)
                self.assertEqual(decoded, payload)

    def test_every_reply_round_trips(self):
        """Reply types sit beside request types, and decode_reply reads
        what the back-end writes."""
        for request, ptype in REPLY_TYPES.items():
            with self.subTest(request=request.name):
                payload = SAMPLES[ptype]
                self.assertEqual(decode_reply(request, payload.pack()),
                                 payload)
        # Any other reply is a u64 REPLY_ACK.
        self.assertEqual(decode_reply(Request.SET_OWNER, U64(1).pack()),
                         U64(1))
        with self.assertRaisesRegex(MalformedMessage, "GET_VRING_BASE"):
            decode_reply(Request.GET_VRING_BASE, bytes(4))

    def test_a_fixed_struct_is_its_fields_in_order(self):
        """The one description (``fmt``) and the dataclass agree: as many
        struct members as fields, and each field lands in its member."""
        for ptype in {t for t in SAMPLES if issubclass(t, Fixed)}:
            with self.subTest(payload=ptype.__name__):
                names = [f.name for f in dataclasses.fields(ptype)]
                values = list(range(1, len(names) + 1))
                packed = ptype(*values).pack()
                self.assertEqual(
                    ptype.STRUCT.unpack_from(packed)[:len(names)],
                    tuple(values))
                self.assertEqual(len(ptype.STRUCT.unpack_from(packed)),
                                 len(names))

    def test_a_struct_with_a_member_missing_is_caught(self):
        """Negative control for the check above: a format one member
        short cannot pack the fields."""
        @dataclasses.dataclass(frozen=True)
        class Short(Fixed, fmt="=I"):
            index: int
            num: int
        with self.assertRaises(struct.error):
            Short(1, 2).pack()

    def test_wrong_size_is_malformed_for_every_fixed_request(self):
        for request, ptype in PAYLOAD_TYPES.items():
            sizes = ptype.sizes()
            bad = max(sizes) + 1
            if ptype is Opaque:
                continue
            with self.subTest(request=request.name):
                with self.assertRaisesRegex(MalformedMessage, request.name):
                    decode_payload(request, bytes(bad))

    def test_unknown_request(self):
        for number in (0, 44, 1000, 0xFFFFFFFF):
            with self.assertRaises(UnknownRequest):
                decode_payload(number, b"")

    def test_short_header(self):
        with self.assertRaisesRegex(MalformedMessage, "short header"):
            decode_header(b"\x01\x00\x00")

    def test_too_many_regions(self):
        table = MemoryTable.HEAD.pack(MAX_MEM_REGIONS + 1, 0) + bytes(
            32 * MAX_MEM_REGIONS)
        with self.assertRaisesRegex(MalformedMessage, "at most 8"):
            MemoryTable.unpack(table)

    def test_region_count_beyond_payload(self):
        table = MemoryTable.HEAD.pack(3, 0) + bytes(32 * 2)
        with self.assertRaises(MalformedMessage):
            decode_payload(Request.SET_MEM_TABLE, table)

    def test_config_size_mismatch(self):
        data = ConfigSpace.HEAD.pack(0, 10, 0) + bytes(4)
        with self.assertRaisesRegex(MalformedMessage, "size 10"):
            decode_payload(Request.GET_CONFIG, data)

    def test_fd_rules(self):
        self.assertEqual(fd_rule(Request.SET_VRING_KICK, U64(0)).allowed,
                         (1,))
        self.assertEqual(fd_rule(Request.SET_VRING_KICK, U64(0x100)).allowed,
                         (0,))
        self.assertEqual(fd_rule(Request.SET_MEM_TABLE,
                                 SAMPLES[MemoryTable]).allowed, (3,))
        self.assertEqual(fd_rule(Request.GET_FEATURES, Empty()).allowed, (0,))
        self.assertEqual(fd_rule(Request.REM_MEM_REG,
                                 SAMPLES[SingleRegion]).tolerated, (1,))
        for request in (Request.SET_LOG_FD, Request.SET_BACKEND_REQ_FD,
                        Request.SET_INFLIGHT_FD, Request.ADD_MEM_REG):
            self.assertIn(request, FD_RULES)

    def test_feature_names(self):
        self.assertEqual(feature_names(
            int(VirtioFeature.LOG_ALL | VirtioFeature.VERSION_1),
            VirtioFeature), "LOG_ALL|VERSION_1")
        self.assertEqual(feature_names(1 << 63, ProtocolFeature), "bit63")
        self.assertEqual(feature_names(0, ProtocolFeature), "0")


if __name__ == "__main__":
    unittest.main()
