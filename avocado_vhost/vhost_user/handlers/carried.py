"""
State that outlives a back-end or a migration: the in-flight area
(INFLIGHT_SHMFD), kept by the front-end across the back-end's death, and
the device state moved through a pipe (DEVICE_STATE).
"""

from __future__ import annotations

from ...virtio.features import VirtioFeature
from ..connection import close_fds
from ..devstate import (INVALID_FD, LOAD, PHASE_STOPPED, SAVE,
                        StateTransfer, frame, unframe)
from ..error import MalformedMessage, ProtocolError
from ..inflight import InflightArea, region_size
from ..message import (DeviceStateParams, Empty, InflightDescription,
                       Request, U64)
from ..trace import Event
from .base import Fds, Group, WithFds, handles, require_kind

__all__ = ["CarriedStateRequests"]


class CarriedStateRequests(Group):
    """GET/SET_INFLIGHT_FD, SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE."""

    @handles(Request.GET_INFLIGHT_FD)
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

    @handles(Request.SET_INFLIGHT_FD)
    def set_inflight_fd(self, payload: InflightDescription,
                        fds: Fds) -> None:
        """The area the front-end kept: map it; rings that start now
        resubmit what it holds."""
        require_kind(fds, "file", "in-flight area")
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

    @handles(Request.SET_DEVICE_STATE_FD)
    def set_device_state_fd(self, payload: DeviceStateParams,
                            fds: Fds) -> U64:
        """Start the transfer on a thread of its own and answer at once:
        QEMU reads or writes the pipe only after this answer."""
        # The reply says failure itself (bits 0-7): a bad request is
        # answered, not a reason to close the connection.
        why = None
        try:
            require_kind(fds, "fifo", "device state fd")  # closes if not
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

    @handles(Request.CHECK_DEVICE_STATE)
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

    def _adopt_inflight(self, area: InflightArea) -> None:
        if self.state.inflight is not None:
            self.state.inflight.close()
        self.state.inflight = area
