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

This package only knows bytes and numbers: it does no I/O and keeps no
state.  :mod:`.header` has the header and the numbers it carries,
:mod:`.payloads` the payload types, :mod:`.codec` what each request
carries and the codec; all are importable from here.
:mod:`..connection` moves messages, :mod:`..session` acts on them.
"""

from __future__ import annotations

from ...virtio.features import VirtioFeature, feature_names
from .codec import (FD_RULES, PAYLOAD_TYPES, REPLY_BODY, REPLY_TYPES,
                    FdRule, decode_payload, decode_reply, encode, fd_rule,
                    request_name)
from .header import (FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION_MASK, HEADER,
                     HEADER_SIZE, MAX_MEM_REGIONS, MAX_PAYLOAD, VERSION,
                     VHOST_LOG_PAGE, VRING_F_LOG, VRING_IDX_MASK,
                     VRING_NOFD_FLAG, BackendRequest, Header,
                     ProtocolFeature, Request, decode_header)
from .payloads import (ConfigSpace, DeviceStateParams, Empty, Fixed,
                       InflightDescription, IotlbMsg, LogDescription,
                       MemoryRegion, MemoryTable, Opaque, Payload,
                       SharedObject, SharedObjectQuery, SingleRegion, U64,
                       VringAddr, VringArea, VringState)

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
