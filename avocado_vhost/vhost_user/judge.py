"""
The proxy's judge of a front-end: the protocol core fed directly.

A :class:`Judge` is a :class:`.session.Session` with no device, no socket
and no thread: the proxy hands it a copy of every request the front-end
sent, in order, and tells it what the real back-end offered (from the
back-end's replies to GET_FEATURES and friends).  The session's
conformance rules then judge the front-end exactly as they judge it in the
in-process back-end; what the judge would answer is dropped, since the
real back-end answers.  The judge never acts on what it is given: it
signals no call fd and moves no device state (its ``signal`` is a no-op,
and :attr:`.config.BackendConfig.judge` keeps the handlers off the
device-state pipe).
"""

from __future__ import annotations

from typing import List, Optional

from .config import BackendConfig
from .connection import close_fds
from .device import Device
from .faults import Fault
from .message import Header, Request
from .records import Problem, ProblemKind, Records, RingEvent
from .session import Session
from .state import DeviceState, Vring
from .trace import Event, Trace

__all__ = ["Judge", "OFFER_REQUESTS"]

#: The requests whose real answer tells the judge what the back-end
#: offers (:meth:`Judge.offer`).
OFFER_REQUESTS = frozenset({
    Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
    Request.GET_QUEUE_NUM, Request.GET_MAX_MEM_SLOTS})


class Judge:
    """What the front-end on proxied connection ``number`` did against
    the spec (:attr:`violations`); fed by :meth:`feed`."""

    def __init__(self, name: str, number: int, message_timeout: float):
        # what it offers is learnt from the real back-end (offer())
        self.config = BackendConfig(features=0, protocol_features=0,
                                    max_mem_slots=32, judge=True,
                                    message_timeout=message_timeout)
        self.trace = Trace(name, self.config.max_trace)
        self.records = Records(self.config.max_records)
        self.faults: List[Fault] = []
        self.device: Optional[Device] = None
        self.vring_base_override: Optional[int] = None
        self.number = number
        self.state = DeviceState(offered_features=0,
                                 offered_protocol_features=0,
                                 config=bytearray())
        self._session = Session(number, self.state, self)
        #: why the judge stopped judging (the spec would have the
        #: connection closed there), or None
        self.ended: Optional[str] = None

    @property
    def violations(self) -> List[Problem]:
        return self.records.violations

    def feed(self, header: Header, raw: bytes, fds: List[int]) -> None:
        """Judge one request; the judge owns ``fds`` from then on."""
        if self.ended is not None:
            close_fds(fds)
            return
        outcome = self._session.handle(header, raw, fds)
        for send in outcome.sends:  # the real back-end answers
            if send.close_fds_after:
                close_fds(send.fds)
        if outcome.close is not None:
            self.ended = outcome.close.detail
            self.trace.event(self.number, Event.DISCONNECTED, self.ended)

    def offer(self, request: Request, value: int) -> None:
        """The real back-end answered ``request`` (one of
        :data:`OFFER_REQUESTS`) with ``value``: offer the same from now
        on."""
        if request is Request.GET_FEATURES:
            self.config.features = self.state.offered_features = value
        elif request is Request.GET_PROTOCOL_FEATURES:
            self.config.protocol_features = value
            self.state.offered_protocol_features = value
        elif request is Request.GET_QUEUE_NUM:
            self.config.queue_num = value
        elif request is Request.GET_MAX_MEM_SLOTS:
            self.config.max_mem_slots = value

    def close(self) -> None:
        """Release the judge's mappings and fds."""
        self.state.close()

    # --- the session's host -------------------------------------------------
    def record(self, problem: Problem) -> None:
        self.records.add(problem)
        self.trace.add(problem.conn, problem.kind.value, detail=problem.text)

    def record_error(self, text: str) -> None:
        self.record(Problem(ProblemKind.ERROR, text, self.number))

    def trace_event(self, event: Event, detail: str = "") -> None:
        self.trace.event(self.number, event, detail)

    def ring_event(self, ring: Vring, event: RingEvent) -> None:
        """No listeners: the judge runs no data path."""

    def signal(self, ring: Vring) -> None:
        """Never signalled: the call fd is the guest's, and the real
        back-end's to use."""
        ring.signalled_since_call = True
