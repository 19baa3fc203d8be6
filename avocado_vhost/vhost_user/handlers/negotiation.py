"""
Negotiation and the device's own settings: features, protocol features,
ownership, reset, status, the config space, and virtio-net's RARP and MTU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...virtio.features import VirtioFeature
from ..message import (ConfigSpace, Empty, ProtocolFeature, Request, U64)
from ..error import MalformedMessage
from ..records import DisconnectCause
from ..state import DeviceState
from ..trace import Event
from .base import CloseConnection, Fds, Group, handles
from .rings import RingRequests

if TYPE_CHECKING:
    from .base import HandlerHost

__all__ = ["NegotiationRequests"]


class NegotiationRequests(Group):
    """Features, ownership, reset and status; a reset stops the rings
    through ``rings``."""

    def __init__(self, state: DeviceState, host: "HandlerHost", number: int,
                 rings: RingRequests):
        super().__init__(state, host, number)
        self.rings = rings


    def reset_rings(self) -> None:
        self.rings.reset_rings()

    @handles(Request.GET_FEATURES)
    def get_features(self, payload: Empty, fds: Fds) -> U64:
        self.state.get_features_seen = True
        return U64(self.state.offered_features)

    @handles(Request.SET_FEATURES)
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

    @handles(Request.GET_PROTOCOL_FEATURES)
    def get_protocol_features(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.state.offered_protocol_features)

    @handles(Request.SET_PROTOCOL_FEATURES)
    def set_protocol_features(self, payload: U64, fds: Fds) -> None:
        self.state.acked_protocol_features = payload.value
        need = ProtocolFeature.BACKEND_REQ | ProtocolFeature.REPLY_ACK
        if (payload.value & ProtocolFeature.INBAND_NOTIFICATIONS
                and payload.value & need != need):
            raise CloseConnection(
                DisconnectCause.PROTOCOL, "INBAND_NOTIFICATIONS without "
                "BACKEND_REQ and REPLY_ACK: the spec says to close")

    @handles(Request.GET_QUEUE_NUM)
    def get_queue_num(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.host.config.queue_num)

    @handles(Request.SET_OWNER)
    def set_owner(self, payload: Empty, fds: Fds) -> None:
        self.state.owner = True

    @handles(Request.RESET_OWNER)
    def reset_owner(self, payload: Empty, fds: Fds) -> None:
        self.reset_rings()
        self.state.owner = False

    @handles(Request.RESET_DEVICE)
    def reset_device(self, payload: Empty, fds: Fds) -> None:
        self.reset_rings()
        self.state.acked_features = None
        self.state.status = 0

    @handles(Request.SET_STATUS)
    def set_status(self, payload: U64, fds: Fds) -> None:
        self.state.status = payload.value

    @handles(Request.GET_STATUS)
    def get_status(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.state.status)

    @handles(Request.GET_CONFIG)
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

    @handles(Request.SET_CONFIG)
    def set_config(self, payload: ConfigSpace, fds: Fds) -> None:
        end = payload.offset + payload.size
        if end > len(self.state.config):
            raise MalformedMessage(f"SET_CONFIG {payload.offset}+"
                                   f"{payload.size} beyond the config space")
        self.state.config[payload.offset:end] = payload.data

    @handles(Request.SEND_RARP)
    def send_rarp(self, payload: U64, fds: Fds) -> None:
        self.state.rarp.append(payload.value)

    @handles(Request.NET_SET_MTU)
    def net_set_mtu(self, payload: U64, fds: Fds) -> None:
        self.state.mtu = payload.value
