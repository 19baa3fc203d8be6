"""
The few FUSE requests a virtio-fs driver needs to read a file (virtio
spec, "File System Device": requests are FUSE messages; the in-header and
arguments are device-readable, the out-header and reply device-writable).

Layouts from Linux's ``include/uapi/linux/fuse.h`` (protocol 7.31+): the
test's driver sends INIT, LOOKUP, OPEN and READ and checks the replies
field by field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Tuple

__all__ = ["INIT", "LOOKUP", "OPEN", "READ", "ROOT", "OUT_HEADER",
           "ENTRY_OUT_SIZE", "OPEN_OUT_SIZE", "INIT_OUT_SIZE",
           "request", "init", "lookup", "open_file", "read", "reply",
           "Entry", "entry"]

LOOKUP, OPEN, READ, INIT = 1, 14, 15, 26
#: the root directory's node id
ROOT = 1
#: struct fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid,
#: total_extlen, padding
IN_HEADER = struct.Struct("<IIQQIIIHH")
#: struct fuse_out_header: len, error, unique
OUT_HEADER = struct.Struct("<IiQ")
INIT_OUT_SIZE = 64
#: struct fuse_entry_out: nodeid, generation, entry/attr valid (+nsec),
#: then struct fuse_attr (88 bytes)
ENTRY_OUT_SIZE = 40 + 88
OPEN_OUT_SIZE = 16
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
#: O_RDONLY
_RDONLY = 0


def request(opcode: int, unique: int, nodeid: int, args: bytes) -> bytes:
    """A request: the in-header (its len covering ``args``) and ``args``."""
    return IN_HEADER.pack(IN_HEADER.size + len(args), opcode, unique,
                          nodeid, 0, 0, 0, 0, 0) + args


def init(unique: int) -> bytes:
    """FUSE_INIT, protocol 7.31, no flags asked for."""
    return request(INIT, unique, 0, struct.pack("<IIII", 7, 31, 0, 0)
                   + bytes(48))


def lookup(unique: int, name: str) -> bytes:
    return request(LOOKUP, unique, ROOT, name.encode() + b"\0")


def open_file(unique: int, nodeid: int) -> bytes:
    return request(OPEN, unique, nodeid, struct.pack("<II", _RDONLY, 0))


def read(unique: int, nodeid: int, fh: int, size: int) -> bytes:
    return request(READ, unique, nodeid,
                   struct.pack("<QQIIQII", fh, 0, size, 0, 0, 0, 0))


def reply(data: bytes) -> Tuple[int, int, int, bytes]:
    """``(len, error, unique, body)`` of a reply."""
    length, error, unique = OUT_HEADER.unpack_from(data)
    return length, error, unique, data[OUT_HEADER.size:]


@dataclass(frozen=True)
class Entry:
    """What LOOKUP says of a name."""

    nodeid: int
    size: int
    mode: int


def entry(body: bytes) -> Entry:
    nodeid = struct.unpack_from("<Q", body)[0]
    attr = _ATTR.unpack_from(body, 40)
    return Entry(nodeid, attr[1], attr[9])
