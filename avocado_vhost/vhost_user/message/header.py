"""
The 12-byte header and the numbers it carries: request numbers (front-end
and back-end channel), header flags, protocol feature bits, limits.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..error import MalformedMessage

__all__ = [
    "HEADER", "HEADER_SIZE", "VERSION", "FLAG_VERSION_MASK", "FLAG_REPLY",
    "FLAG_NEED_REPLY", "MAX_PAYLOAD", "MAX_MEM_REGIONS", "VRING_IDX_MASK",
    "VRING_NOFD_FLAG", "VHOST_LOG_PAGE", "VRING_F_LOG", "Request",
    "BackendRequest", "ProtocolFeature", "Header", "decode_header",
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
