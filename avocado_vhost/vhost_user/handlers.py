"""
One typed method per front-end request: what the back-end does with it.

:class:`RequestHandlers` applies a decoded request to one connection's
:class:`.state.DeviceState` and returns the reply payload, or ``None``
(the session acks when asked).  The method is named after the request
(``set_vring_num`` for SET_VRING_NUM) and takes the request's payload type
and the fds that came with it, which it owns from then on: it stores them
or closes them.  It knows nothing of sockets, faults or the trace's
format; what it needs of the back-end is :class:`HandlerHost`.

A handler ends a request in one of three ways besides returning:

* :class:`Refused` -- legal, but not implemented here;
* :class:`CloseConnection` -- the spec says to close;
* :class:`.error.ProtocolError` -- the front-end sent something unusable.

The ring lifecycle (started on SET_VRING_KICK or VRING_KICK, stopped on
GET_VRING_BASE, reset or disconnect) lives here too, because requests
drive it; the hosted :class:`.device.Device` hears of every change.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, List, NamedTuple, Optional, Union

from ..virtio.features import VirtioFeature
from .channel import BackendChannel
from .devstate import (INVALID_FD, LOAD, PHASE_STOPPED, SAVE,
                       StateTransfer, frame, unframe)
from .connection import close_fds
from .error import MalformedMessage, ProtocolError
from .memory import AddressError, DirtyLog, MappedRegion
from .message import (VRING_IDX_MASK, VRING_NOFD_FLAG, ConfigSpace,
                      DeviceStateParams, Empty, IotlbMsg, LogDescription,
                      MemoryTable, Payload, ProtocolFeature, Request,
                      Opaque, SharedObject, SingleRegion, U64, VringAddr,
                      VringState, InflightDescription)
from .inflight import InflightArea, region_size
from .iotlb import IOTLB_INVALIDATE, IOTLB_UPDATE, IotlbEntry
from .postcopy import Userfault
from .records import DisconnectCause, RingEvent
from .state import DeviceState, Vring
from .trace import Event

if TYPE_CHECKING:
    from typing import Protocol

    from .config import BackendConfig
    from .device import Device
    from .trace import Trace

    class HandlerHost(Protocol):
        """What request handling needs of the back-end that runs it."""

        config: BackendConfig
        device: Optional[Device]
        vring_base_override: Optional[int]
        trace: Trace

        def record_error(self, text: str) -> None: ...

        def trace_event(self, event: Event, detail: str = "") -> None: ...

        def ring_event(self, ring: Vring, event: RingEvent) -> None: ...

        def signal(self, ring: Vring) -> None: ...

__all__ = ["RequestHandlers", "Refused", "CloseConnection", "Fds",
           "Handler", "WithFds"]

#: The fds that came with a request; the handler owns them.
Fds = List[int]


class WithFds(NamedTuple):
    """A reply that carries fds (GET_INFLIGHT_FD's area): sent with the
    reply's first byte; the back-end keeps its own copies."""

    payload: Payload
    fds: List[int]
    #: the fds are the handler's own temporary ones: closed once sent
    close_after: bool = False


Handler = Callable[[Payload, Fds], Union[None, Payload, WithFds]]


class Refused(Exception):
    """A legal request this back-end does not implement."""


class CloseConnection(Exception):
    """End the current connection (the spec says to, or a fault does)."""

    def __init__(self, cause: DisconnectCause, detail: str):
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


class RequestHandlers:
    """The requests of one connection, applied to its device state."""

    def __init__(self, state: DeviceState, host: "HandlerHost",
                 number: int = 0):
        self.state = state
        self.host = host
        #: the connection's number (for the back-end channel's trace)
        self.number = number

    def handler(self, request: Request) -> Handler:
        """The method for ``request`` (:meth:`refuse` if there is none)."""
        method: Optional[Handler] = getattr(self, request.name.lower(), None)
        return method if method is not None else self.refuse

    def refuse(self, payload: Payload, fds: Fds) -> Optional[Payload]:
        close_fds(fds)
        raise Refused("not implemented by this back-end")

    # --- features -------------------------------------------------------
    def get_features(self, payload: Empty, fds: Fds) -> U64:
        self.state.get_features_seen = True
        return U64(self.state.offered_features)

    def set_features(self, payload: U64, fds: Fds) -> None:
        old = self.state.acked_features
        self.state.acked_features = payload.value
        if not payload.value & VirtioFeature.PROTOCOL_FEATURES:
            # Spec: without protocol features every ring is enabled at once.
            for ring in self.state.vrings.values():
                ring.enabled = True
        if old is not None and (old ^ payload.value) & VirtioFeature.LOG_ALL:
            self.host.trace_event(Event.LOG_ALL, "on" if payload.value
                                  & VirtioFeature.LOG_ALL else "off")

    def get_protocol_features(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.state.offered_protocol_features)

    def set_protocol_features(self, payload: U64, fds: Fds) -> None:
        self.state.acked_protocol_features = payload.value
        need = ProtocolFeature.BACKEND_REQ | ProtocolFeature.REPLY_ACK
        if (payload.value & ProtocolFeature.INBAND_NOTIFICATIONS
                and payload.value & need != need):
            raise CloseConnection(
                DisconnectCause.PROTOCOL, "INBAND_NOTIFICATIONS without "
                "BACKEND_REQ and REPLY_ACK: the spec says to close")

    def get_queue_num(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.host.config.queue_num)

    # --- ownership and reset --------------------------------------------
    def set_owner(self, payload: Empty, fds: Fds) -> None:
        self.state.owner = True

    def reset_owner(self, payload: Empty, fds: Fds) -> None:
        self.reset_rings()
        self.state.owner = False

    def reset_device(self, payload: Empty, fds: Fds) -> None:
        self.reset_rings()
        self.state.acked_features = None
        self.state.status = 0

    def set_status(self, payload: U64, fds: Fds) -> None:
        self.state.status = payload.value

    def get_status(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.state.status)

    # --- memory ---------------------------------------------------------
    def set_mem_table(self, payload: MemoryTable,
                      fds: Fds) -> Optional[MemoryTable]:
        mem = self.state.memory
        mem.clear()
        try:
            _require_kind(fds, "file", "memory region")
            try:
                self._within_mapping_limit(
                    sum(r.size for r in payload.regions), "the memory table")
            except ProtocolError:
                close_fds(fds)
                raise
            for i, (region, fd) in enumerate(zip(payload.regions, fds)):
                try:
                    mem.add(region, fd)
                except MalformedMessage:
                    close_fds(fds[i + 1:])
                    mem.clear()
                    raise
        finally:
            # Also when the table was refused: started rings must not keep
            # pointing into the mappings just closed.
            self._memory_changed()
        if self._postcopy_listening():
            mapped = mem.mapped()
            local = {r.desc: r.local_address for r in mapped}
            self._register_for_postcopy(Request.SET_MEM_TABLE, mapped)
            return MemoryTable(tuple(
                replace(r, user_addr=local[r]) for r in payload.regions))
        return None

    def add_mem_reg(self, payload: SingleRegion,
                    fds: Fds) -> Optional[SingleRegion]:
        slots = self.host.config.max_mem_slots
        _require_kind(fds, "file", "memory region")
        try:
            if len(self.state.memory) >= slots:
                raise MalformedMessage(
                    f"ADD_MEM_REG beyond the {slots} slots offered")
            self._within_mapping_limit(
                self.state.memory.mapped_bytes + payload.region.size,
                "the memory table with this region")
        except ProtocolError:
            close_fds(fds)
            raise
        self.state.memory.add(payload.region, fds[0])
        self._memory_changed()
        if self._postcopy_listening():
            added = self.state.memory.mapped()[-1]
            self._register_for_postcopy(Request.ADD_MEM_REG, [added])
            return SingleRegion(replace(payload.region,
                                        user_addr=added.local_address))
        return None

    def _within_mapping_limit(self, size: int, what: str) -> None:
        """Refuse to map more than ``max_mapped`` bytes in all (guest
        memory and dirty log): a front-end's sizes must not take the
        back-end's address space."""
        log = self.state.log.size if self.state.log is not None else 0
        limit = self.host.config.max_mapped
        if size + log > limit:
            raise MalformedMessage(
                f"{what} would map {size + log:#x} bytes (with the dirty "
                f"log), more than this back-end maps at most (max_mapped = "
                f"{limit:#x})")

    def rem_mem_reg(self, payload: SingleRegion, fds: Fds) -> None:
        close_fds(fds)
        if not self.state.memory.remove(payload.region):
            raise MalformedMessage(
                f"REM_MEM_REG of a region not mapped: {payload.region}")
        self._memory_changed()

    def get_max_mem_slots(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.host.config.max_mem_slots)

    def _memory_changed(self) -> None:
        if self.host.device is not None:
            self.host.device.memory_changed()

    # --- dirty log ------------------------------------------------------
    def set_log_base(self, payload: LogDescription, fds: Fds) -> U64:
        if not fds:
            raise MalformedMessage("SET_LOG_BASE without a log fd "
                                   "(LOG_SHMFD needs one)")
        _require_kind(fds, "file", "dirty log")
        try:
            if payload.size > self.host.config.max_mapped:
                raise MalformedMessage(
                    f"a dirty log of {payload.size:#x} bytes is more than "
                    "this back-end maps at most (max_mapped = "
                    f"{self.host.config.max_mapped:#x})")
        except ProtocolError:
            close_fds(fds)
            raise
        if self.state.log is not None:
            if (self.host.config.unmap_replaced_log
                    and self.state.feature_acked(VirtioFeature.LOG_ALL)
                    and self.state.started_rings()):
                self.host.record_error(
                    f"SET_LOG_BASE replaced the dirty log in use (logging "
                    f"on, rings {self.state.started_rings()} running): a "
                    "back-end that unmaps the old log, as DPDK's does, may "
                    "crash writing it from its data path (QEMU sends "
                    "SET_LOG_BASE once per device since c98ac64cfb, 8.0, "
                    "and 7c211eb078, 9.1)")
            self.state.log.close()
            self.state.log = None
        self.state.log = DirtyLog(fds[0], payload.size, payload.offset)
        self.host.trace_event(Event.LOG_BASE, f"{payload.size} bytes at "
                              f"offset {payload.offset}")
        # QEMU blocks until this reply when LOG_SHMFD is negotiated.
        return U64(0)

    def set_log_fd(self, payload: Empty, fds: Fds) -> None:
        _require_kind(fds, "eventfd", "log fd")
        os.set_blocking(fds[0], False)
        self.state.log_fd = _replace_fd(self.state.log_fd, fds[0])

    # --- rings ----------------------------------------------------------
    def set_vring_num(self, payload: VringState, fds: Fds) -> None:
        self.vring(payload.index).num = payload.num

    def set_vring_addr(self, payload: VringAddr, fds: Fds) -> None:
        self.vring(payload.index).addr = payload

    def set_vring_base(self, payload: VringState, fds: Fds) -> None:
        self.vring(payload.index).base = payload.num

    def get_vring_base(self, payload: VringState, fds: Fds) -> VringState:
        ring = self.vring(payload.index)
        device = self.host.device
        if device is not None and ring.started:
            device.quiesce(ring)  # spec: in-flight requests finish first
            device.ring_stopped(ring)  # the base is where it stopped
        override = self.host.vring_base_override
        ring.reported_base = ring.base if override is None else override
        # after reported_base: ring listeners read it (handoff checks)
        self.ring_stopped(ring, "GET_VRING_BASE")
        ring.kick_fd = _replace_fd(ring.kick_fd, None)
        return VringState(payload.index, ring.reported_base)

    def set_vring_kick(self, payload: U64, fds: Fds) -> None:
        ring = self._ring_fd(payload, fds, "kick")
        ring.polling = bool(payload.value & VRING_NOFD_FLAG)
        self.ring_started(ring)

    def set_vring_call(self, payload: U64, fds: Fds) -> None:
        ring = self._ring_fd(payload, fds, "call")
        # QEMU starts a ring (SET_VRING_KICK) before it hands over the
        # guest's call fd: an interrupt raised in between, on the fd the
        # ring had (QEMU discards what its masked notifier got,
        # vhost_virtqueue_start) or owed without one (after RESET_DEVICE),
        # is lost.  Raise it again on the new fd, as libvhost-user does on
        # every SET_VRING_CALL; a spurious interrupt costs the guest one
        # look at the used ring.
        again = ring.signalled_since_call and ring.call_fd is not None
        ring.signalled_since_call = False
        if again and self.host.config.resignal_on_call_switch:
            self.host.trace_event(Event.CALL, f"ring {ring.index} signalled "
                                  "again on its new call fd")
            self.host.signal(ring)

    def set_vring_err(self, payload: U64, fds: Fds) -> None:
        self._ring_fd(payload, fds, "err")

    def set_vring_enable(self, payload: VringState, fds: Fds) -> None:
        ring = self.vring(payload.index)
        ring.enabled = bool(payload.num)
        self.host.ring_event(ring, RingEvent.ENABLED if ring.enabled
                             else RingEvent.DISABLED)

    def vring_kick(self, payload: VringState, fds: Fds) -> None:
        self.ring_started(self.vring(payload.index))

    def set_vring_endian(self, payload: VringState, fds: Fds) -> None:
        self.vring(payload.index).big_endian = bool(payload.num)

    def vring(self, index: int) -> Vring:
        """The ring a request names, created on first use -- but only up to
        the device's ring count: an index is the front-end's word, and a
        ring per u32 would let it grow the back-end without bound."""
        limit = self.host.config.ring_limit
        if index >= limit:
            raise ProtocolError(f"ring index {index} is beyond the {limit} "
                                "rings of this device")
        return self.state.vring(index)

    def _ring_fd(self, payload: U64, fds: Fds, which: str) -> Vring:
        try:
            ring = self.vring(payload.value & VRING_IDX_MASK)
        except ProtocolError:
            close_fds(fds)
            raise
        if fds and not _is_eventfd(fds[0]):
            kind = _fd_kind(fds[0])
            close_fds(fds)
            raise ProtocolError(
                f"{which} fd of ring {ring.index} is {kind}, not an "
                "eventfd (vhost-user: \"the file descriptor for the "
                "kick/call/err is passed as ancillary data ... an eventfd\")")
        if fds:
            # Never block on the front-end's eventfd: a drained kick fd
            # would hang the read, a call counter at its maximum the write.
            # (QEMU's own eventfds are non-blocking already.)
            os.set_blocking(fds[0], False)
        attr = f"{which}_fd"
        setattr(ring, attr, _replace_fd(getattr(ring, attr),
                                        fds[0] if fds else None))
        return ring

    # --- ring lifecycle -------------------------------------------------
    def ring_started(self, ring: Vring) -> None:
        if ring.started:
            return
        ring.started = True
        ring.starts += 1
        self.host.trace_event(Event.RING_STARTED, ring.describe())
        self.host.ring_event(ring, RingEvent.STARTED)
        device = self.host.device
        if device is not None:
            if ring.kick_fd is not None:
                os.set_blocking(ring.kick_fd, False)
            device.ring_started(ring)

    def ring_stopped(self, ring: Vring, why: str) -> None:
        if not ring.started:
            return
        ring.started = False
        ring.stops += 1
        if self.host.device is not None:
            self.host.device.ring_stopped(ring)
        self.host.trace_event(Event.RING_STOPPED,
                              f"{ring.describe()} ({why})")
        self.host.ring_event(ring, RingEvent.STOPPED)

    def reset_rings(self) -> None:
        for ring in self.state.vrings.values():
            self.ring_stopped(ring, "reset")
            ring.close_fds()
        self.state.vrings.clear()

    def stop_rings(self, why: str) -> None:
        """Stop every started ring (the connection is ending)."""
        for ring in self.state.vrings.values():
            self.ring_stopped(ring, why)

    # --- net, config, back-end channel, inflight, IOTLB -----------------
    def send_rarp(self, payload: U64, fds: Fds) -> None:
        self.state.rarp.append(payload.value)

    def net_set_mtu(self, payload: U64, fds: Fds) -> None:
        self.state.mtu = payload.value

    def set_backend_req_fd(self, payload: Empty, fds: Fds) -> None:
        _require_kind(fds, "socket", "back-end channel fd")
        if self.state.backend_channel is not None:
            self.state.backend_channel.close()
        self.state.backend_channel = BackendChannel(
            fds[0], self.host.trace, self.number,
            self.host.config.message_timeout)

    def iotlb_msg(self, payload: IotlbMsg, fds: Fds) -> U64:
        """An IOTLB update or invalidation (IOMMU support): the rings are
        located again through the new table, and those that waited for a
        miss move."""
        close_fds(fds)
        if payload.type == IOTLB_UPDATE:
            try:
                self.state.iotlb.update(IotlbEntry(
                    payload.iova, payload.size, payload.user_addr,
                    payload.perm))
            except AddressError as exc:
                raise MalformedMessage(str(exc)) from None
            what = (f"update iova 0x{payload.iova:x}+0x{payload.size:x} -> "
                    f"0x{payload.user_addr:x} perm {payload.perm}")
        elif payload.type == IOTLB_INVALIDATE:
            dropped = self.state.iotlb.invalidate(
                payload.iova, payload.size, self.host.config.iotlb_invalidate)
            what = (f"invalidate iova 0x{payload.iova:x}+0x{payload.size:x}"
                    f" ({dropped} entries dropped)")
        else:
            raise MalformedMessage(f"IOTLB_MSG of type {payload.type} "
                                   "(the front-end sends updates and "
                                   "invalidations)")
        self.host.trace_event(Event.IOTLB, what)
        self._memory_changed()
        return U64(0)

    def get_config(self, payload: ConfigSpace, fds: Fds) -> ConfigSpace:
        cfg = self.state.config
        if payload.offset + payload.size > len(cfg):
            # Spec: a reply of size 0 (no config) reports the error.
            self.host.record_error(
                f"GET_CONFIG {payload.offset}+{payload.size} beyond the "
                f"{len(cfg)}-byte config space")
            return ConfigSpace(payload.offset, 0, payload.flags)
        data = bytes(cfg[payload.offset:payload.offset + payload.size])
        return ConfigSpace(payload.offset, payload.size, payload.flags, data)

    def set_config(self, payload: ConfigSpace, fds: Fds) -> None:
        end = payload.offset + payload.size
        if end > len(self.state.config):
            raise MalformedMessage(f"SET_CONFIG {payload.offset}+"
                                   f"{payload.size} beyond the config space")
        self.state.config[payload.offset:end] = payload.data

    def get_inflight_fd(self, payload: InflightDescription,
                        fds: Fds) -> "WithFds":
        """A new in-flight area for ``num_queues`` rings of
        ``queue_size``, on a memfd that goes back with the answer; the
        front-end keeps it across this back-end's death."""
        close_fds(fds)
        limit = self.host.config.ring_limit
        if payload.num_queues > limit:
            raise MalformedMessage(f"GET_INFLIGHT_FD for {payload.num_queues}"
                                   f" queues, the device has {limit}")
        if not 0 < payload.queue_size <= 32768:
            raise MalformedMessage(f"GET_INFLIGHT_FD for queues of "
                                   f"{payload.queue_size} descriptors")
        # the layout follows the rings' (QEMU sets the features first)
        packed = self.state.feature_acked(VirtioFeature.RING_PACKED)
        size = payload.num_queues * region_size(payload.queue_size, packed)
        self._within_mapping_limit(self.state.memory.mapped_bytes + size,
                                   "the in-flight area")
        area = InflightArea.create(payload.num_queues, payload.queue_size,
                                   packed)
        self._adopt_inflight(area)
        self.host.trace_event(Event.INFLIGHT, f"new area: {area.desc}")
        return WithFds(area.desc, [area.fd])

    def set_inflight_fd(self, payload: InflightDescription,
                        fds: Fds) -> None:
        """The area the front-end kept: map it; rings that start now
        resubmit what it holds."""
        _require_kind(fds, "file", "in-flight area")
        try:
            self._within_mapping_limit(
                self.state.memory.mapped_bytes + payload.mmap_size,
                "the in-flight area")
        except ProtocolError:
            close_fds(fds)
            raise
        self._adopt_inflight(InflightArea(
            fds[0], payload,
            self.state.feature_acked(VirtioFeature.RING_PACKED)))
        self.host.trace_event(Event.INFLIGHT, f"area handed over: {payload}")

    def _adopt_inflight(self, area: InflightArea) -> None:
        if self.state.inflight is not None:
            self.state.inflight.close()
        self.state.inflight = area

    def get_shared_object(self, payload: SharedObject, fds: Fds) -> WithFds:
        """An object this back-end exports, as an fd with the answer; no fd
        for a UUID it does not export (spec: "or no fd otherwise").  A
        request without a UUID (a front-end's fault, recorded) is answered
        with the one object exported only by a back-end told to guess
        (``answer_unnamed_lookup``: what libvhost-user ends up doing)."""
        close_fds(fds)
        objects = self.host.config.shared_objects
        uuid = payload.uuid
        if (not uuid and self.host.config.answer_unnamed_lookup
                and len(objects) == 1):
            uuid = next(iter(objects))
        content = objects.get(uuid)
        if content is None:
            self.host.record_error(f"GET_SHARED_OBJECT of "
                                   f"{payload.uuid.hex()}, which this "
                                   "back-end does not export")
            return WithFds(U64(1), [])
        fd = os.memfd_create("vhost-shared-object", os.MFD_CLOEXEC)
        os.write(fd, content)
        return WithFds(U64(0), [fd], close_after=True)

    # --- crypto sessions (CRYPTO_SESSION) -----------------------------------
    def create_crypto_session(self, payload: Opaque, fds: Fds) -> Opaque:
        """A session for QEMU's VhostUserCryptoSession; the answer is the
        same with the id this back-end assigns.

        The spec gives the payload no layout, and QEMU changed its own in
        8.1 (5c33f9783a) with nothing negotiated: up to 8.0 the id comes
        first (632 bytes: id, the session's set-up, the keys), since 8.1
        last (1072 bytes: op code, set-up and keys, id).  Told apart by
        size.
        """
        close_fds(fds)
        data = payload.data
        if len(data) < 16:
            raise MalformedMessage(f"CREATE_CRYPTO_SESSION of {len(data)} "
                                   "bytes: no room for its op code and id")
        at = 0 if len(data) == _CRYPTO_SESSION_UP_TO_8_0 else len(data) - 8
        limit = 64  # sessions open at once: a front-end cannot grow them
        if len(self.state.crypto_sessions) >= limit:
            self.host.record_error(f"CREATE_CRYPTO_SESSION beyond {limit} "
                                   "open sessions: refused (id -1)")
            session = -1
        else:
            session = self.state.next_crypto_session
            self.state.next_crypto_session += 1
            self.state.crypto_sessions[session] = data
        return Opaque(data[:at] + struct.pack("<q", session)
                      + data[at + 8:])

    def close_crypto_session(self, payload: U64, fds: Fds) -> None:
        """Close a session this back-end opened."""
        close_fds(fds)
        if self.state.crypto_sessions.pop(payload.value, None) is None:
            raise MalformedMessage(f"CLOSE_CRYPTO_SESSION of session "
                                   f"{payload.value}, which is not open")

    # --- postcopy (PAGEFAULT) ----------------------------------------------
    def postcopy_advise(self, payload: Empty, fds: Fds) -> WithFds:
        """A userfaultfd for the migration to come, sent with the answer;
        without one (the kernel refused) the answer carries no fd, which
        QEMU reports as the migration's failure."""
        close_fds(fds)
        if self.state.userfault is not None:
            self.state.userfault.close()
        try:
            self.state.userfault = Userfault()
        except OSError as exc:
            self.state.userfault = None
            self.host.record_error(f"POSTCOPY_ADVISE: no userfaultfd: {exc}")
            return WithFds(Empty(), [])
        return WithFds(Empty(), [self.state.userfault.fd])

    def postcopy_listen(self, payload: Empty, fds: Fds) -> None:
        """The memory table that follows is registered for faults."""
        if self.state.userfault is None:
            raise MalformedMessage("POSTCOPY_LISTEN without a userfaultfd "
                                   "(no POSTCOPY_ADVISE answered)")

    def postcopy_end(self, payload: Empty, fds: Fds) -> U64:
        """Every page arrived: no more faults; the userfaultfd goes."""
        self.state.memory.fault_in = None
        if self.state.userfault is not None:
            self.state.userfault.close()
            self.state.userfault = None
        return U64(0)

    def _postcopy_listening(self) -> bool:
        return (self.state.postcopy == "listening"
                and self.state.userfault is not None)

    def _register_for_postcopy(self, request: Request,
                               regions: List[MappedRegion]) -> None:
        """Register the regions just mapped with the userfaultfd and wait
        for the front-end's acknowledgement before touching memory (spec:
        "only upon reception of this message may the guest start
        accessing the memory and generating faults")."""
        assert self.state.userfault is not None
        self.state.memory.fault_in = None
        if not self.host.config.postcopy_register:
            regions = []  # the negative control: blind to missing pages
        for region in regions:
            try:
                self.state.userfault.register(region.map)
            except OSError as exc:
                raise MalformedMessage(f"postcopy: region {region.desc} "
                                       f"cannot be registered: {exc}"
                                       ) from None
        self.state.postcopy_ack_due = request
        self.host.trace_event(Event.POSTCOPY, f"{request.name}: "
                              f"{len(self.state.memory)} region(s) "
                              "registered, acknowledgement due")

    # --- back-end state migration (DEVICE_STATE) --------------------------
    def set_device_state_fd(self, payload: DeviceStateParams,
                            fds: Fds) -> U64:
        """Start the transfer on a thread of its own and answer at once:
        QEMU reads or writes the pipe only after this answer."""
        # The reply says failure itself (bits 0-7): a bad request is
        # answered, not a reason to close the connection.
        why = None
        try:
            _require_kind(fds, "fifo", "device state fd")  # closes if not
        except ProtocolError as exc:
            why = str(exc)
        else:
            if payload.phase != PHASE_STOPPED:
                why = (f"migration phase {payload.phase}: the spec knows "
                       "only 0 (stopped)")
            elif payload.direction not in (SAVE, LOAD):
                why = (f"transfer direction {payload.direction}: the spec "
                       "knows 0 (save) and 1 (load)")
            if why is not None:
                close_fds(fds)
        if why is not None:
            self.host.record_error(f"SET_DEVICE_STATE_FD: {why}")
            return U64(INVALID_FD | 1)
        config = self.host.config
        if config.judge:
            # The proxy's judge holds a copy of the real back-end's pipe:
            # reading or writing it would take the state from the real
            # back-end (or mix the judge's into it).  Judged, not used.
            close_fds(fds)
            return U64(INVALID_FD)
        if self.state.transfer is not None:
            self.state.transfer.close()
        data = frame(config.device_state)
        if config.device_state_wire is not None:
            data = config.device_state_wire(data)
        self.state.transfer = StateTransfer(
            fds[0], payload.direction, data,
            limit=config.max_mapped, timeout=config.message_timeout).start()
        return U64(INVALID_FD)  # success, no fd of our own

    def check_device_state(self, payload: Empty, fds: Fds) -> U64:
        """Whether the transfer succeeded; a loaded state must be one whole,
        intact frame (a garbled or truncated state is refused, as a real
        back-end's deserializer refuses it)."""
        transfer = self.state.transfer
        if transfer is None:
            self.host.record_error("CHECK_DEVICE_STATE without a transfer "
                                   "(no SET_DEVICE_STATE_FD)")
            return U64(1)
        self.state.transfer = None
        why = transfer.finish(self.host.config.message_timeout)
        transfer.close()
        if why is None and transfer.direction == LOAD:
            try:
                self.state.loaded_device_state = unframe(
                    transfer.received)
            except ValueError as exc:
                why = f"the state loaded is not valid: {exc}"
        if why is not None:
            what = "save" if transfer.direction == SAVE else "load"
            self.host.record_error(f"device state {what} failed: {why}")
            return U64(1)
        return U64(0)


#: the size of QEMU's VhostUserCryptoSession up to 8.0 (id first)
_CRYPTO_SESSION_UP_TO_8_0 = 632


def _replace_fd(old: Optional[int], new: Optional[int]) -> Optional[int]:
    """Close ``old`` (if any) and return ``new``: a request that hands over
    a second fd for the same purpose must not leak the first."""
    if old is not None:
        close_fds([old])
    return new


def _fd_kind(fd: int) -> str:
    """What a file descriptor is, as /proc names it."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def _is_eventfd(fd: int) -> bool:
    return _fd_kind(fd) == "anon_inode:[eventfd]"


_KINDS = {
    "eventfd": ("an eventfd", _is_eventfd),
    "socket": ("a socket", lambda fd: stat.S_ISSOCK(os.fstat(fd).st_mode)),
    # memfds, hugetlbfs and tmpfs files, plain files: all regular files
    "file": ("a regular file", lambda fd: stat.S_ISREG(os.fstat(fd).st_mode)),
    # a pipe, or a FIFO: what SET_DEVICE_STATE_FD's "behave like a pipe" means
    "fifo": ("a pipe", lambda fd: stat.S_ISFIFO(os.fstat(fd).st_mode)),
}


def _require_kind(fds: Fds, kind: str, what: str) -> None:
    """Every fd of a request must be of ``kind``.

    :raise ProtocolError: one is not (named in the text, with what it is
        instead); every fd of the request is closed first.
    """
    name, test = _KINDS[kind]
    for fd in fds:
        if not test(fd):
            found = _fd_kind(fd)
            close_fds(fds)
            raise ProtocolError(f"the {what} is {found}, not {name}")
