"""
The ring requests and the ring lifecycle they drive: a ring starts on
SET_VRING_KICK (or VRING_KICK) and stops on GET_VRING_BASE, a reset or a
disconnect; the hosted :class:`..device.Device` and the ring listeners hear
of every change.
"""

from __future__ import annotations

import os

from ..connection import close_fds
from ..error import ProtocolError
from ..message import (VRING_IDX_MASK, VRING_NOFD_FLAG, Request, U64,
                       VringAddr, VringState)
from ..records import RingEvent
from ..state import Vring
from ..trace import Event
from .base import Fds, Group, fd_kind, handles, is_eventfd, replace_fd

__all__ = ["RingRequests"]


class RingRequests(Group):
    """SET_VRING_* and GET_VRING_BASE, and the ring lifecycle."""

    @handles(Request.SET_VRING_NUM)
    def set_vring_num(self, payload: VringState, fds: Fds) -> None:
        self.vring(payload.index).num = payload.num

    @handles(Request.SET_VRING_ADDR)
    def set_vring_addr(self, payload: VringAddr, fds: Fds) -> None:
        self.vring(payload.index).addr = payload

    @handles(Request.SET_VRING_BASE)
    def set_vring_base(self, payload: VringState, fds: Fds) -> None:
        self.vring(payload.index).base = payload.num

    @handles(Request.GET_VRING_BASE)
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
        ring.kick_fd = replace_fd(ring.kick_fd, None)
        return VringState(payload.index, ring.reported_base)

    @handles(Request.SET_VRING_KICK)
    def set_vring_kick(self, payload: U64, fds: Fds) -> None:
        ring = self._ring_fd(payload, fds, "kick")
        ring.polling = bool(payload.value & VRING_NOFD_FLAG)
        self.ring_started(ring)

    @handles(Request.SET_VRING_CALL)
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

    @handles(Request.SET_VRING_ERR)
    def set_vring_err(self, payload: U64, fds: Fds) -> None:
        self._ring_fd(payload, fds, "err")

    @handles(Request.SET_VRING_ENABLE)
    def set_vring_enable(self, payload: VringState, fds: Fds) -> None:
        ring = self.vring(payload.index)
        ring.enabled = bool(payload.num)
        self.host.ring_event(ring, RingEvent.ENABLED if ring.enabled
                             else RingEvent.DISABLED)

    @handles(Request.VRING_KICK)
    def vring_kick(self, payload: VringState, fds: Fds) -> None:
        self.ring_started(self.vring(payload.index))

    @handles(Request.SET_VRING_ENDIAN)
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
        if fds and not is_eventfd(fds[0]):
            kind = fd_kind(fds[0])
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
        setattr(ring, attr, replace_fd(getattr(ring, attr),
                                        fds[0] if fds else None))
        return ring

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
