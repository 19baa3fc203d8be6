"""
One typed method per front-end request: what the back-end does with it.

:class:`RequestHandlers` applies a decoded request to one connection's
:class:`..state.DeviceState` through one table -- request to method --
built from one group per concern; each handler is marked with its request
right above it (``@handles(Request.SET_VRING_NUM)``):

==================  =======================================================
``negotiation``     features, protocol features, owner, reset, status,
                    config space, RARP, MTU
``rings``           SET_VRING_*, GET_VRING_BASE, and the ring lifecycle
``mappings``        memory table and slots, dirty log, IOTLB, postcopy
``carried``         the in-flight area, the device state
``objects``         the back-end channel, shared objects, crypto sessions
==================  =======================================================

A request no group handles is refused (:class:`.base.Refused`).  The
handlers know nothing of sockets, faults or the trace's format; what they
need of the back-end is :class:`.base.HandlerHost`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

from ..connection import close_fds
from ..message import Payload, Request
from ..state import DeviceState
from .base import CloseConnection, Fds, Handler, Refused, WithFds
from .carried import CarriedStateRequests
from .mappings import MappingRequests
from .negotiation import NegotiationRequests
from .objects import ObjectRequests
from .rings import RingRequests

if TYPE_CHECKING:
    from .base import HandlerHost

__all__ = ["RequestHandlers", "Refused", "CloseConnection", "Fds",
           "Handler", "WithFds", "HandlerHost"]


class RequestHandlers:
    """The requests of one connection, applied to its device state."""

    def __init__(self, state: DeviceState, host: "HandlerHost",
                 number: int = 0):
        self.rings = RingRequests(state, host, number)
        self._table: Dict[Request, Handler] = {}
        for group in (NegotiationRequests(state, host, number, self.rings),
                      self.rings,
                      MappingRequests(state, host, number),
                      CarriedStateRequests(state, host, number),
                      ObjectRequests(state, host, number)):
            for request, method in group.table().items():
                assert request not in self._table, request
                self._table[request] = method

    @property
    def handled(self) -> Dict[Request, Handler]:
        """Every request with a handler here (a copy)."""
        return dict(self._table)

    def handler(self, request: Request) -> Handler:
        """The method for ``request`` (:meth:`refuse` if there is none)."""
        return self._table.get(request, self.refuse)

    def refuse(self, payload: Payload, fds: Fds) -> Optional[Payload]:
        close_fds(fds)
        raise Refused("not implemented by this back-end")

    def stop_rings(self, why: str) -> None:
        """Stop every started ring (the connection is ending)."""
        self.rings.stop_rings(why)
