"""
Device and ring state of a vhost-user back-end, as the spec defines it.

A ring has two independent properties ("Ring states" in the spec):

* *started* / *stopped* -- a ring starts when its kick fd is set (the
  back-end begins to watch it) or on an in-band VRING_KICK, and stops on
  GET_VRING_BASE.  A stopped ring must not be touched.
* *enabled* / *disabled* -- toggled by SET_VRING_ENABLE; a started but
  disabled ring is processed without side effects.

Every ring begins stopped and disabled.  When SET_FEATURES arrives without
VHOST_USER_F_PROTOCOL_FEATURES, every ring is enabled at once.

This module only holds state; :mod:`.backend` changes it and
:mod:`.conformance` judges requests against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Union

from .connection import close_fds
from .iotlb import Iotlb, TranslatedMemory
from .memory import DirtyLog, GuestMemory
from .message import ProtocolFeature, Request, VirtioFeature, VringAddr

__all__ = ["Vring", "DeviceState", "Cursor"]

if TYPE_CHECKING:
    from typing import Protocol

    from .channel import BackendChannel
    from .devstate import StateTransfer
    from .inflight import InflightArea
    from .postcopy import FaultIn, Userfault

    class Cursor(Protocol):
        """A running ring, as the ring state sees it."""

        @property
        def next_avail(self) -> int: ...
else:
    Cursor = object


@dataclass
class Vring:
    """One virtqueue as the back-end knows it."""

    index: int
    num: int = 0
    #: Where the ring starts or stopped: the next available-ring index the
    #: back-end will process (split), or the packed 32-bit encoding (avail
    #: idx|wrap<<15|used idx<<16|wrap<<31).  Set by SET_VRING_BASE and
    #: when the ring stops; while it runs, :attr:`position` is the truth.
    base: int = 0
    #: What GET_VRING_BASE last answered (the next owner resumes there).
    reported_base: Optional[int] = None
    addr: Optional[VringAddr] = None
    kick_fd: Optional[int] = None
    call_fd: Optional[int] = None
    err_fd: Optional[int] = None
    #: An interrupt was raised since the last SET_VRING_CALL (on the fd the
    #: ring had then, or owed while it had none).
    signalled_since_call: bool = False
    #: Set when SET_VRING_KICK carried the no-fd flag: the ring is polled.
    polling: bool = False
    enabled: bool = False
    started: bool = False
    big_endian: Optional[bool] = None
    #: How many times this ring was started and stopped on the connection.
    starts: int = 0
    stops: int = 0
    #: The device's running ring (its ``next_avail`` moves with every
    #: descriptor); None while the device does not process this ring.
    cursor: Optional[Cursor] = None

    @property
    def position(self) -> int:
        """Where the ring is now: the running ring's own position, else
        :attr:`base` (one source of truth at a time, nothing copied)."""
        return self.cursor.next_avail if self.cursor is not None else self.base

    def close_fds(self) -> None:
        close_fds([fd for fd in (self.kick_fd, self.call_fd, self.err_fd)
                   if fd is not None])
        self.kick_fd = self.call_fd = self.err_fd = None

    def describe(self) -> str:
        return (f"ring {self.index}: {'started' if self.started else 'stopped'}"
                f", {'enabled' if self.enabled else 'disabled'}, num={self.num}"
                f", base={self.position}")


@dataclass
class DeviceState:
    """Everything one connection negotiated and handed over.

    A new connection starts from a fresh instance: vhost-user has no state
    that survives a reconnect except what the front-end sends again.
    """

    offered_features: int = 0
    offered_protocol_features: int = 0
    #: None until SET_FEATURES / SET_PROTOCOL_FEATURES arrive.
    acked_features: Optional[int] = None
    acked_protocol_features: Optional[int] = None
    get_features_seen: bool = False
    owner: bool = False
    memory: GuestMemory = field(default_factory=GuestMemory)
    log: Optional[DirtyLog] = None
    log_fd: Optional[int] = None
    vrings: Dict[int, Vring] = field(default_factory=dict)
    status: int = 0
    #: SET_STATUS 0 reset the live device and no ring was set up since
    reset_by_status: bool = False
    config: bytearray = field(default_factory=bytearray)
    #: the back-end channel (SET_BACKEND_REQ_FD), if the front-end gave one
    backend_channel: Optional["BackendChannel"] = None
    #: the device IOTLB (VIRTIO_F_IOMMU_PLATFORM): IOTLB_MSG updates
    iotlb: Iotlb = field(default_factory=Iotlb)
    postcopy: str = "none"  # none -> advised -> listening -> ended
    #: the userfaultfd handed over by POSTCOPY_ADVISE (closed at its END)
    userfault: Optional["Userfault"] = None
    #: the request whose 8-byte acknowledgement (u64 0) the front-end owes
    #: after a postcopy memory table; memory is untouched until it comes
    postcopy_ack_due: Optional[Request] = None
    #: what faults missing pages in once the acknowledgement came
    fault_in: Optional["FaultIn"] = None
    #: the in-flight area (GET/SET_INFLIGHT_FD), if one was handed over
    inflight: Optional["InflightArea"] = None
    #: the device-state transfer under way (SET_DEVICE_STATE_FD)
    transfer: Optional["StateTransfer"] = None
    #: the state a destination loaded and found whole (CHECK_DEVICE_STATE)
    loaded_device_state: Optional[bytes] = None
    #: crypto sessions open (CRYPTO_SESSION): id -> what QEMU sent
    crypto_sessions: Dict[int, bytes] = field(default_factory=dict)
    next_crypto_session: int = 1
    mtu: Optional[int] = None
    rarp: List[int] = field(default_factory=list)

    def protocol_negotiated(self, bit: int) -> bool:
        """Whether protocol feature ``bit`` (a mask) is in force."""
        acked = self.acked_protocol_features
        return acked is not None and bool(acked & int(bit))

    @property
    def memory_request(self) -> Request:
        """How guest memory reaches the back-end on this connection: one
        SET_MEM_TABLE, or, with CONFIGURE_MEM_SLOTS, an ADD_MEM_REG per
        region (REM_MEM_REG for what goes away)."""
        if self.protocol_negotiated(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            return Request.ADD_MEM_REG
        return Request.SET_MEM_TABLE

    def feature_acked(self, bit: int) -> bool:
        acked = self.acked_features
        return acked is not None and bool(acked & int(bit))

    @property
    def behind_iommu(self) -> bool:
        """Whether the driver's addresses are IOVAs (VIRTIO_F_IOMMU_PLATFORM
        negotiated): rings and buffers are then reached through the IOTLB."""
        return self.feature_acked(VirtioFeature.ACCESS_PLATFORM)

    def dma(self) -> Union[GuestMemory, TranslatedMemory]:
        """Guest memory as the driver's addresses name it: by guest
        address, or by IOVA behind a vIOMMU."""
        if self.behind_iommu:
            return TranslatedMemory(self.memory, self.iotlb)
        return self.memory

    def vring(self, index: int) -> Vring:
        if index not in self.vrings:
            ring = Vring(index)
            # Without protocol features, rings are born enabled (spec).
            if (self.acked_features is not None and not
                    self.acked_features & VirtioFeature.PROTOCOL_FEATURES):
                ring.enabled = True
            self.vrings[index] = ring
        return self.vrings[index]

    def started_rings(self) -> List[int]:
        return sorted(i for i, r in self.vrings.items() if r.started)

    def close(self) -> None:
        """Release every fd and mapping of the connection."""
        for ring in self.vrings.values():
            ring.close_fds()
            ring.started = False
        self.memory.clear()
        self.iotlb.clear()
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.log_fd is not None:
            close_fds([self.log_fd])
            self.log_fd = None
        if self.backend_channel is not None:
            self.backend_channel.close()
            self.backend_channel = None
        if self.transfer is not None:
            self.transfer.close()
            self.transfer = None
        if self.inflight is not None:
            self.inflight.close()
            self.inflight = None
        self.memory.fault_in = None
        if self.userfault is not None:
            self.userfault.close()
            self.userfault = None
        if self.fault_in is not None:
            self.fault_in.close()
            self.fault_in = None
