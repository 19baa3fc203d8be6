"""
Request and reply payloads: each a frozen dataclass that packs, unpacks and
says which sizes the spec allows for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Tuple, Type, TypeVar, Union

from ..error import MalformedMessage
from .header import MAX_MEM_REGIONS, MAX_PAYLOAD

__all__ = [
    "Fixed", "U64", "VringState", "VringAddr", "MemoryRegion",
    "LogDescription", "IotlbMsg", "VringArea", "DeviceStateParams",
    "InflightDescription", "MemoryTable", "SingleRegion", "ConfigSpace",
    "SharedObject", "SharedObjectQuery", "Empty", "Opaque", "Payload",
]

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
