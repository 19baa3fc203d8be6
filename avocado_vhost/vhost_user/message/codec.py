"""
What each request carries and how many fds, and the message codec: decode a
request's payload (checking its size), decode a reply, encode a message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

from ..error import MalformedMessage, UnknownRequest
from .header import HEADER, VERSION, VRING_NOFD_FLAG, Request
from .payloads import (U64, ConfigSpace, DeviceStateParams, Empty,
                       InflightDescription, IotlbMsg, LogDescription,
                       MemoryTable, Opaque, Payload, SharedObjectQuery,
                       SingleRegion, VringAddr, VringState)

__all__ = [
    "PAYLOAD_TYPES", "REPLY_TYPES", "REPLY_BODY", "FD_RULES", "FdRule",
    "fd_rule", "decode_payload", "decode_reply", "encode", "request_name",
]

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
