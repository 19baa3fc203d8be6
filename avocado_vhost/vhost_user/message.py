"""
vhost-user wire format: request numbers, header flags, protocol feature
bits, request and reply payloads, fd rules.

Every vhost-user message is a 12-byte header followed by ``size`` payload
bytes, all in native byte order::

    +---------+-------+------+---------+
    | request | flags | size | payload |
    +---------+-------+------+---------+
      u32       u32     u32    size bytes

Flags bits 0-1 carry the protocol version (always 1), bit 2 marks a reply
(set on every back-end reply, clear on requests) and bit 3 asks for a
REPLY_ACK acknowledgement.  File descriptors travel beside the message as
SCM_RIGHTS ancillary data; how many a request may carry is part of its
definition here (:data:`FD_RULES`) because a wrong count is as malformed as
a wrong size.

This module only knows bytes and numbers: it does no I/O and keeps no state.
:mod:`.connection` moves messages, :mod:`.backend` acts on them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import (Any, Callable, ClassVar, Dict, Optional, Tuple, Type,
                    TypeVar, Union)

from ..virtio.features import VirtioFeature, feature_names
from .error import MalformedMessage, UnknownRequest

__all__ = [
    "HEADER", "HEADER_SIZE", "VERSION", "FLAG_VERSION_MASK", "FLAG_REPLY",
    "FLAG_NEED_REPLY", "MAX_PAYLOAD", "MAX_MEM_REGIONS", "VRING_IDX_MASK",
    "VRING_NOFD_FLAG", "VHOST_LOG_PAGE", "VRING_F_LOG",
    "Request", "BackendRequest", "VirtioFeature", "ProtocolFeature",
    "Header", "VringState", "VringAddr", "MemoryRegion", "MemoryTable",
    "SingleRegion", "LogDescription", "IotlbMsg", "ConfigSpace",
    "InflightDescription", "SharedObject", "SharedObjectQuery", "DeviceStateParams", "VringArea",
    "Payload",
    "PAYLOAD_TYPES", "REPLY_TYPES", "REPLY_BODY", "FD_RULES", "FdRule",
    "Fixed", "U64", "Empty", "Opaque", "fd_rule",
    "decode_header", "decode_payload", "decode_reply", "encode",
    "request_name",
    "feature_names",
]

HEADER = struct.Struct("=III")
HEADER_SIZE = HEADER.size
VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
#: Largest payload we accept: QEMU's VhostUserMsg union is bounded by the
#: memory table (8 + 8 * 32 bytes); config space is capped at 256 + 12.
MAX_PAYLOAD = 4096
MAX_MEM_REGIONS = 8
VRING_IDX_MASK = 0xFF
VRING_NOFD_FLAG = 0x100
VHOST_LOG_PAGE = 0x1000
#: SET_VRING_ADDR flags bit: log writes to the used ring at ``log`` address.
VRING_F_LOG = 0x1


class Request(enum.IntEnum):
    """Front-end to back-end requests (spec: "Front-end message types")."""

    NONE = 0
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class BackendRequest(enum.IntEnum):
    """Back-end to front-end requests, sent on the BACKEND_REQ channel."""

    NONE = 0
    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8


class ProtocolFeature(enum.IntFlag):
    """``VHOST_USER_PROTOCOL_F_*``: negotiated with GET/SET_PROTOCOL_FEATURES."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    NET_MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16
    XEN_MMAP = 1 << 17
    SHARED_OBJECT = 1 << 18
    DEVICE_STATE = 1 << 19
    GET_VRING_BASE_INFLIGHT = 1 << 20


@dataclass(frozen=True)
class Header:
    """The fixed 12-byte message header."""

    request: int
    flags: int
    size: int

    @property
    def version(self) -> int:
        return self.flags & FLAG_VERSION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


def decode_header(data: bytes) -> Header:
    """Decode a header without judging it; :func:`check_header` judges."""
    if len(data) != HEADER_SIZE:
        raise MalformedMessage(
            f"short header: {len(data)} of {HEADER_SIZE} bytes")
    return Header(*HEADER.unpack(data))


# --- payload types --------------------------------------------------------
# Each payload is a frozen dataclass with ``pack()``, ``unpack()`` and
# ``sizes()`` (the payload sizes the spec allows for it).  Most are one
# fixed C struct: they say so once, ``class X(Fixed, fmt="=II")``, and the
# codec follows from the format and the field order.

_P = TypeVar("_P", bound="Fixed")


class Fixed:
    """A payload that is exactly one C struct: the dataclass fields, in
    order, are the struct's members (``fmt`` in :mod:`struct` notation)."""

    STRUCT: ClassVar[struct.Struct]

    def __init_subclass__(cls, fmt: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if fmt:
            cls.STRUCT = struct.Struct(fmt)

    def pack(self) -> bytes:
        # A frozen dataclass keeps exactly its fields in __dict__, in
        # declaration order: the struct's order.
        return self.STRUCT.pack(*self.__dict__.values())

    @classmethod
    def unpack(cls: Type[_P], data: bytes) -> _P:
        return cls(*cls.STRUCT.unpack(data))

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return (cls.STRUCT.size,)


@dataclass(frozen=True)
class U64(Fixed, fmt="=Q"):
    """A single u64: features, kick/call/err fd index, status, MTU, ..."""

    value: int


@dataclass(frozen=True)
class VringState(Fixed, fmt="=II"):
    """``{u32 index, u32 num}``: ring number and a value (size, base, 0/1)."""

    index: int
    num: int


@dataclass(frozen=True)
class VringAddr(Fixed, fmt="=IIQQQQ"):
    """Ring addresses, in the front-end's virtual address space."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class MemoryRegion(Fixed, fmt="=QQQQ"):
    """One guest RAM region: where it is for the guest, for QEMU, in the fd."""

    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int

    def __str__(self) -> str:
        return (f"gpa=0x{self.guest_addr:x}+0x{self.size:x} "
                f"uva=0x{self.user_addr:x} off=0x{self.mmap_offset:x}")


@dataclass(frozen=True)
class LogDescription(Fixed, fmt="=QQ"):
    """SET_LOG_BASE with LOG_SHMFD: size and offset of the log in the fd."""

    size: int
    offset: int


@dataclass(frozen=True)
class IotlbMsg(Fixed, fmt="=QQQBB6x"):
    """``struct vhost_iotlb_msg`` (26 bytes of fields, 32 with padding)."""

    iova: int
    size: int
    user_addr: int
    perm: int
    type: int


@dataclass(frozen=True)
class VringArea(Fixed, fmt="=QQQ"):
    """``VhostUserVringArea`` (VRING_HOST_NOTIFIER_MSG): the ring index
    (bits 0-7) and the no-fd flag (bit 8), then the size and offset of the
    area in the fd that comes with the message."""

    u64: int
    size: int
    offset: int


@dataclass(frozen=True)
class DeviceStateParams(Fixed, fmt="=II"):
    """SET_DEVICE_STATE_FD: ``u32 direction`` (0 save, 1 load), ``u32 phase``."""

    direction: int
    phase: int


@dataclass(frozen=True)
class InflightDescription(Fixed, fmt="=QQHH"):
    """GET/SET_INFLIGHT_FD: area size/offset, number and size of queues."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int

    def pack(self) -> bytes:
        # QEMU's struct is padded to 24 bytes; send what it sends.
        return super().pack() + bytes(4)

    @classmethod
    def unpack(cls, data: bytes) -> "InflightDescription":
        return cls(*cls.STRUCT.unpack_from(data))

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return (cls.STRUCT.size, cls.STRUCT.size + 4)


@dataclass(frozen=True)
class MemoryTable:
    """SET_MEM_TABLE: ``u32 nregions, u32 padding`` then ``nregions`` regions.

    QEMU sends only the regions in use (8 + 32 * n bytes); the full
    8-region array (264 bytes) is accepted too.
    """

    regions: Tuple[MemoryRegion, ...]
    HEAD = struct.Struct("=II")

    def pack(self) -> bytes:
        return (self.HEAD.pack(len(self.regions), 0)
                + b"".join(r.pack() for r in self.regions))

    @classmethod
    def unpack(cls, data: bytes) -> "MemoryTable":
        nregions, _ = cls.HEAD.unpack_from(data)
        if nregions > MAX_MEM_REGIONS:
            raise MalformedMessage(
                f"memory table has {nregions} regions, at most "
                f"{MAX_MEM_REGIONS} are allowed")
        if len(data) < cls.HEAD.size + nregions * MemoryRegion.STRUCT.size:
            raise MalformedMessage(
                f"memory table of {nregions} regions needs "
                f"{cls.HEAD.size + nregions * MemoryRegion.STRUCT.size} "
                f"bytes, got {len(data)}")
        step = MemoryRegion.STRUCT.size
        regions = tuple(
            MemoryRegion.unpack(data[cls.HEAD.size + i * step:
                                     cls.HEAD.size + (i + 1) * step])
            for i in range(nregions))
        return cls(regions)

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        step = MemoryRegion.STRUCT.size
        return tuple(cls.HEAD.size + n * step
                     for n in range(MAX_MEM_REGIONS + 1))


@dataclass(frozen=True)
class SingleRegion:
    """ADD_MEM_REG / REM_MEM_REG: ``u64 padding`` and one region."""

    region: MemoryRegion

    def pack(self) -> bytes:
        return bytes(8) + self.region.pack()

    @classmethod
    def unpack(cls, data: bytes) -> "SingleRegion":
        return cls(MemoryRegion.unpack(data[8:]))

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return (8 + MemoryRegion.STRUCT.size,)


@dataclass(frozen=True)
class ConfigSpace:
    """GET/SET_CONFIG: ``u32 offset, u32 size, u32 flags`` and ``size`` bytes."""

    offset: int
    size: int
    flags: int
    data: bytes = b""
    HEAD = struct.Struct("=III")
    MAX_SIZE = 256  # QEMU's VHOST_USER_MAX_CONFIG_SIZE

    def pack(self) -> bytes:
        return self.HEAD.pack(self.offset, self.size, self.flags) + self.data

    @classmethod
    def unpack(cls, data: bytes) -> "ConfigSpace":
        offset, size, flags = cls.HEAD.unpack_from(data)
        body = data[cls.HEAD.size:]
        if size != len(body):
            raise MalformedMessage(
                f"config payload says size {size} but carries {len(body)} "
                "bytes")
        if size > cls.MAX_SIZE:
            raise MalformedMessage(
                f"config size {size} exceeds {cls.MAX_SIZE}")
        return cls(offset, size, flags, bytes(body))

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return tuple(range(cls.HEAD.size, cls.HEAD.size + cls.MAX_SIZE + 1))


@dataclass(frozen=True)
class SharedObject:
    """``VhostUserShared``: a 16-byte UUID."""

    uuid: bytes

    def pack(self) -> bytes:
        return self.uuid

    @classmethod
    def unpack(cls, data: bytes) -> "SharedObject":
        return cls(bytes(data))

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return (16,)


class SharedObjectQuery(SharedObject):
    """GET_SHARED_OBJECT's ``VhostUserShared``.  Decoded also when the UUID
    is missing (QEMU sends it without, from 8.2 on): the conformance rule
    ``shared_object_named`` then records the front-end's fault, and the
    back-end answers that it has no such object instead of closing."""

    @classmethod
    def unpack(cls, data: bytes) -> "SharedObjectQuery":
        return cls(bytes(data))

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return (0, 16)


@dataclass(frozen=True)
class Empty:
    """No payload."""

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, data: bytes) -> "Empty":
        return cls()

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return (0,)


@dataclass(frozen=True)
class Opaque:
    """A payload we carry but do not interpret (crypto sessions)."""

    data: bytes

    def pack(self) -> bytes:
        return self.data

    @classmethod
    def unpack(cls, data: bytes) -> "Opaque":
        return cls(bytes(data))

    @classmethod
    def sizes(cls) -> Tuple[int, ...]:
        return tuple(range(0, MAX_PAYLOAD + 1))


Payload = Union[U64, VringState, VringAddr, MemoryTable, SingleRegion,
                LogDescription, IotlbMsg, ConfigSpace, InflightDescription,
                SharedObject, DeviceStateParams, VringArea, Empty, Opaque]

#: Request payload type of every front-end request.
PAYLOAD_TYPES: Dict[Request, Any] = {
    Request.GET_FEATURES: Empty,
    Request.SET_FEATURES: U64,
    Request.SET_OWNER: Empty,
    Request.RESET_OWNER: Empty,
    Request.SET_MEM_TABLE: MemoryTable,
    Request.SET_LOG_BASE: LogDescription,
    Request.SET_LOG_FD: Empty,
    Request.SET_VRING_NUM: VringState,
    Request.SET_VRING_ADDR: VringAddr,
    Request.SET_VRING_BASE: VringState,
    Request.GET_VRING_BASE: VringState,
    Request.SET_VRING_KICK: U64,
    Request.SET_VRING_CALL: U64,
    Request.SET_VRING_ERR: U64,
    Request.GET_PROTOCOL_FEATURES: Empty,
    Request.SET_PROTOCOL_FEATURES: U64,
    Request.GET_QUEUE_NUM: Empty,
    Request.SET_VRING_ENABLE: VringState,
    Request.SEND_RARP: U64,
    Request.NET_SET_MTU: U64,
    Request.SET_BACKEND_REQ_FD: Empty,
    Request.IOTLB_MSG: IotlbMsg,
    Request.SET_VRING_ENDIAN: VringState,
    Request.GET_CONFIG: ConfigSpace,
    Request.SET_CONFIG: ConfigSpace,
    Request.CREATE_CRYPTO_SESSION: Opaque,
    Request.CLOSE_CRYPTO_SESSION: U64,
    Request.POSTCOPY_ADVISE: Empty,
    Request.POSTCOPY_LISTEN: Empty,
    Request.POSTCOPY_END: Empty,
    Request.GET_INFLIGHT_FD: InflightDescription,
    Request.SET_INFLIGHT_FD: InflightDescription,
    Request.GPU_SET_SOCKET: Empty,
    Request.RESET_DEVICE: Empty,
    Request.VRING_KICK: VringState,
    Request.GET_MAX_MEM_SLOTS: Empty,
    Request.ADD_MEM_REG: SingleRegion,
    Request.REM_MEM_REG: SingleRegion,
    Request.SET_STATUS: U64,
    Request.GET_STATUS: Empty,
    Request.GET_SHARED_OBJECT: SharedObjectQuery,
    Request.SET_DEVICE_STATE_FD: DeviceStateParams,
    Request.CHECK_DEVICE_STATE: Empty,
}


#: What a back-end's reply to each request carries, beside the request's
#: own payload type above; a reply to any other request is a u64 ack
#: (REPLY_ACK: 0 success, non-zero failure).
REPLY_TYPES: Dict[Request, Any] = {
    Request.GET_FEATURES: U64,
    Request.GET_PROTOCOL_FEATURES: U64,
    Request.GET_QUEUE_NUM: U64,
    Request.GET_MAX_MEM_SLOTS: U64,
    Request.GET_STATUS: U64,
    Request.GET_VRING_BASE: VringState,
    Request.GET_CONFIG: ConfigSpace,
    Request.GET_INFLIGHT_FD: InflightDescription,
    Request.GET_SHARED_OBJECT: U64,
    Request.IOTLB_MSG: U64,
    Request.POSTCOPY_ADVISE: Empty,
    Request.POSTCOPY_END: U64,
    # QEMU's own VhostUserCryptoSession, the new session's id in its last
    # 8 bytes (the spec gives the payload no layout)
    Request.CREATE_CRYPTO_SESSION: Opaque,
    Request.SET_DEVICE_STATE_FD: U64,
    Request.CHECK_DEVICE_STATE: U64,
    # The spec says "reply payload: N/A", but QEMU waits for a reply to a
    # SET_LOG_BASE that carries the log fd, and back-ends send one: DPDK
    # with no payload, this project's back-end with a u64 0.
    Request.SET_LOG_BASE: Opaque,
}

#: Requests that are always answered with a reply body (the rest only
#: with REPLY_ACK, when the front-end sets NEED_REPLY).
REPLY_BODY = frozenset(REPLY_TYPES) - {Request.SET_LOG_BASE}


def decode_reply(request: Request, data: bytes) -> Payload:
    """The payload of a back-end's reply to ``request``.

    :raise MalformedMessage: its size is not the size of that payload type.
    """
    ptype = REPLY_TYPES.get(request, U64)
    if len(data) not in ptype.sizes():
        raise MalformedMessage(
            f"reply to {request.name}: payload of {len(data)} bytes, "
            f"expected {ptype.sizes()[:4]}")
    reply: Payload = ptype.unpack(data)
    return reply

@dataclass(frozen=True)
class FdRule:
    """How many fds a request may carry: ``allowed`` counts, and which of
    them are tolerated only (the back-end closes them unused)."""

    allowed: Tuple[int, ...]
    tolerated: Tuple[int, ...] = ()


def _ring_fd_rule(payload: Payload) -> FdRule:
    assert isinstance(payload, U64)
    return FdRule((0,)) if payload.value & VRING_NOFD_FLAG else FdRule((1,))


def _mem_table_fd_rule(payload: Payload) -> FdRule:
    assert isinstance(payload, MemoryTable)
    return FdRule((len(payload.regions),))


_NO_FD = FdRule((0,))
_ONE_FD = FdRule((1,))

#: Fd count rule per request; a callable decides from the payload.
FD_RULES: Dict[Request, Union[FdRule, Callable[[Payload], FdRule]]] = {
    Request.SET_MEM_TABLE: _mem_table_fd_rule,
    Request.ADD_MEM_REG: _ONE_FD,
    Request.REM_MEM_REG: FdRule((0, 1), tolerated=(1,)),
    Request.SET_VRING_KICK: _ring_fd_rule,
    Request.SET_VRING_CALL: _ring_fd_rule,
    Request.SET_VRING_ERR: _ring_fd_rule,
    Request.SET_LOG_BASE: FdRule((0, 1)),  # 1 with LOG_SHMFD; checked later
    Request.SET_LOG_FD: _ONE_FD,
    Request.SET_BACKEND_REQ_FD: _ONE_FD,
    Request.SET_INFLIGHT_FD: _ONE_FD,
    Request.SET_DEVICE_STATE_FD: _ONE_FD,
    Request.GPU_SET_SOCKET: _ONE_FD,
}


def fd_rule(request: Request, payload: Payload) -> FdRule:
    """The fd rule of one decoded request."""
    rule = FD_RULES.get(request, _NO_FD)
    return rule(payload) if callable(rule) else rule


_REQUESTS = {int(r): r for r in Request if r is not Request.NONE}
# Allowed payload sizes per type, computed once (checked on every message).
_SIZES = {ptype: frozenset(ptype.sizes())
          for ptype in set(PAYLOAD_TYPES.values())}


def request_name(number: int,
                 requests: Type[enum.IntEnum] = Request) -> str:
    """The name of request ``number`` for traces, also when it is not one
    (``UNKNOWN(99)``); ``requests`` is :class:`BackendRequest` for the
    back-end channel."""
    try:
        return requests(number).name
    except ValueError:
        return f"UNKNOWN({number})"


def decode_payload(request: int, data: bytes) -> Tuple[Request, Payload]:
    """Decode a front-end request's payload, checking its size.

    :raise UnknownRequest: ``request`` is not a front-end request number.
    :raise MalformedMessage: the size does not fit the request's payload.
    """
    req = _REQUESTS.get(request)
    if req is None:
        raise UnknownRequest(request)
    ptype = PAYLOAD_TYPES[req]
    if len(data) not in _SIZES[ptype]:
        sizes = ptype.sizes()
        expect = (str(sizes[0]) if len(sizes) == 1
                  else f"one of {sizes[0]}..{sizes[-1]}")
        raise MalformedMessage(
            f"{req.name}: payload of {len(data)} bytes, expected {expect}")
    return req, ptype.unpack(data)


def encode(request: int, payload: Optional[Payload] = None,
           flags: int = VERSION) -> bytes:
    """Build one message (header and payload) ready for the socket."""
    body = payload.pack() if payload is not None else b""
    return HEADER.pack(int(request), flags, len(body)) + body
