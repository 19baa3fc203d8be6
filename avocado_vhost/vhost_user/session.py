"""
One connection's conversation: a message in, what to do about it out.

:class:`Session` is the protocol core.  It does no I/O, starts no thread and
takes no lock: it is handed one received message (header, raw payload, fds)
and returns an :class:`Outcome` -- the answers to send, whether to close
the connection, or a message to hold.  The back-end's event loop
(:mod:`.backend`), the proxy's judge (:mod:`.proxy`) and the unit tests all
feed it the same way.  Every message goes through the same steps:

1. **decode** -- header version and REPLY bit, payload size, fd count
   (:mod:`.message`); a failure is an error, and the connection survives
   it when the framing is intact and nobody waits for an answer;
2. **judge** -- conformance rules against the state *before* the request
   (:mod:`.conformance`); a breach is a violation, recorded, not fatal;
3. **faults** -- a scripted :class:`.faults.Fault` may disconnect, hold or
   replace the answer;
4. **handle** -- the request's typed method (:mod:`.handlers`);
5. **answer** -- the reply payload, or a REPLY_ACK when one is asked for.

A held message (a HOLD fault) comes back as :attr:`Outcome.held`; the
caller resumes it with :meth:`Session.resume` once the test released it,
and meanwhile reads nothing more from that connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from .conformance import FDS_WITH_THE_HEADER, Breach
from .conformance import check as conformance_check
from .conformance import observe as conformance_observe
from .connection import close_fds
from .error import (FdCountError, MalformedMessage, ProtocolError,
                    UnknownRequest)
from .faults import Fault, FaultAction
from .handlers import CloseConnection, RequestHandlers, Refused, WithFds
from .postcopy import FaultIn
from .message import (FLAG_REPLY, REPLY_BODY, VERSION, Header, Payload,
                      ProtocolFeature, Request, U64, decode_payload, encode,
                      fd_rule, request_name)
from .records import DisconnectCause, Problem, ProblemKind, Side
from .state import DeviceState
from .trace import Event, TraceKind

if TYPE_CHECKING:
    from typing import Protocol

    from .config import BackendConfig
    from .handlers import HandlerHost
    from .trace import Trace

    class SessionHost(HandlerHost, Protocol):
        """What a session needs of its back-end beyond request handling."""

        config: BackendConfig
        trace: Trace
        faults: List[Fault]

        def record(self, problem: Problem) -> None: ...

__all__ = ["Session", "Outcome", "Send", "Held"]


@dataclass
class Send:
    """One answer to write, in order, with the fds to pass along."""

    data: bytes
    fds: Sequence[int] = ()
    #: the fds are the handler's own temporary ones: close them once sent
    close_fds_after: bool = False


@dataclass
class Held:
    """A message a HOLD fault keeps unanswered (and unapplied)."""

    fault: Fault
    header: Header
    request: Request
    payload: Payload
    fds: List[int]
    msgno: int


@dataclass
class Outcome:
    """What the caller does once a message was handled: write
    :attr:`sends` in order, then close the connection if :attr:`close`
    says so; or, with :attr:`held`, read no more of this connection until
    the fault's release (and then :meth:`Session.resume`)."""

    sends: List[Send] = field(default_factory=list)
    close: Optional[CloseConnection] = None
    held: Optional[Held] = None


class Session:
    """The conversation on connection number ``number``; call
    :meth:`handle` with the back-end's lock held, if it has one."""

    def __init__(self, number: int, state: DeviceState,
                 host: "SessionHost"):
        self.number = number
        self.state = state
        self.host = host
        self.handlers = RequestHandlers(state, host, number)
        self.messages = 0
        self._out: List[Send] = []

    # --- the steps --------------------------------------------------------
    def handle(self, header: Header, raw: bytes, fds: List[int],
               late_fds: int = 0) -> Outcome:
        """Decode, judge, apply faults, handle and answer one message.

        :param late_fds: fds that came after the message's first byte.
        """
        self._out = []
        try:
            held = self._handle(header, raw, fds, late_fds)
        except CloseConnection as exc:
            return Outcome(self._take(), close=exc)
        return Outcome(self._take(), held=held)

    def resume(self, held: Held, timed_out: bool = False) -> Outcome:
        """Go on with a held message: handle and answer it."""
        self._out = []
        if timed_out:
            self.host.trace.event(self.number, Event.HOLD_TIMEOUT,
                                  f"{held.request.name} held "
                                  f"{held.fault.hold_timeout}s")
        try:
            self._answer(held.header, held.request, held.payload, held.fds,
                         held.msgno, held.fault)
        except CloseConnection as exc:
            return Outcome(self._take(), close=exc)
        return Outcome(self._take())

    def _take(self) -> List[Send]:
        out, self._out = self._out, []
        return out

    def _handle(self, header: Header, raw: bytes, fds: List[int],
                late_fds: int) -> Optional[Held]:
        self.messages += 1
        msgno = self.messages
        if self._postcopy_ack(header, raw, fds):
            return None
        try:
            req, payload = self._decode(header, raw, fds)
        except ProtocolError as exc:
            close_fds(fds)
            self.host.trace.add(self.number, TraceKind.RX,
                                request_name(header.request), header.flags,
                                header.size, len(fds),
                                f"raw={raw[:64].hex()}")
            self._problem(ProblemKind.ERROR, f"message {msgno}: {exc}",
                          msgno)
            self._after_bad_message(header, exc)
            return None
        self.host.trace.add(self.number, TraceKind.RX, req.name,
                            header.flags, header.size, len(fds), payload)
        breaches = conformance_check(req, payload, header, self.state,
                                     self.host.config.max_rings)
        if late_fds:
            breaches.append(Breach(
                FDS_WITH_THE_HEADER, f"{late_fds} fd(s) arrived after the "
                "first read of the message: the front-end should send them "
                "with the header's first byte"))
        conformance_observe(req, payload, self.state)
        for breach in breaches:
            self.host.record(Problem(
                ProblemKind.VIOLATION, f"message {msgno} {req.name}: "
                f"{breach.text}", self.number, msgno, req, rule=breach.rule,
                side=Side.FRONT_END))
        fault = self._fault_for(msgno, req, payload)
        if fault is not None:
            if fault.action is FaultAction.DISCONNECT:
                close_fds(fds)
                raise CloseConnection(DisconnectCause.FAULT, f"disconnect at"
                                      f" message {msgno} ({req.name})")
            if fault.action is FaultAction.HOLD:
                return Held(fault, header, req, payload, fds, msgno)
            if fault.action is FaultAction.FAIL:
                self._fail(header, req, fds, msgno)
                return None
        self._answer(header, req, payload, fds, msgno, fault)
        return None

    def _answer(self, header: Header, req: Request, payload: Payload,
                fds: List[int], msgno: int, fault: Optional[Fault]) -> None:
        """Handle the request and queue its answer."""
        answer = self._call(header, req, payload, fds, msgno)
        if answer is None:
            return  # refused, and the refusal was the answer
        reply, status = answer
        if fault is not None and fault.action is FaultAction.REPLY:
            assert fault.reply_bytes is not None
            data = fault.reply_bytes(req, payload)
            self.host.trace.add(self.number, TraceKind.TX, req.name, 0,
                                len(data), 0, f"fault reply {data.hex()}")
            self._out.append(Send(data))
        elif isinstance(reply, WithFds):
            self.send(req, reply.payload, reply.fds, reply.close_after)
        elif reply is not None:
            self.send(req, reply)
        elif header.need_reply and self._reply_ack:
            self.send(req, U64(status))
        if fault is not None and fault.action is FaultAction.DISCONNECT_AFTER:
            raise CloseConnection(DisconnectCause.FAULT, f"disconnect after "
                                  f"message {msgno} ({req.name})")

    def _postcopy_ack(self, header: Header, raw: bytes,
                      fds: List[int]) -> bool:
        """Take the front-end's acknowledgement of a postcopy memory table
        (the same request, carrying u64 0; QEMU sends one after the whole
        table, or after the last ADD_MEM_REG): from then on the back-end
        may touch guest memory, faulting missing pages in.

        :return: whether this message was that acknowledgement.
        """
        due = self.state.postcopy_ack_due
        if due is None or header.request != due or header.size != 8:
            return False
        self.state.postcopy_ack_due = None
        close_fds(fds)
        value = U64.unpack(raw).value
        self.host.trace.add(self.number, TraceKind.RX, due.name,
                            header.flags, header.size, len(fds),
                            f"postcopy acknowledgement {value}")
        if value != 0:
            self._problem(ProblemKind.ERROR, f"message {self.messages}: the "
                          f"front-end acknowledged the postcopy memory table "
                          f"with {value}, not 0", self.messages, due)
            return True
        if self.state.fault_in is None:
            self.state.fault_in = FaultIn()
        self.state.memory.fault_in = self.state.fault_in
        return True

    def _decode(self, header: Header, raw: bytes,
                fds: List[int]) -> Tuple[Request, Payload]:
        if header.version != VERSION:
            raise MalformedMessage(
                f"bad version bits in flags 0x{header.flags:x} "
                f"(expected {VERSION})")
        if header.is_reply:
            raise MalformedMessage(
                f"REPLY flag set on a request (flags 0x{header.flags:x})")
        req, payload = decode_payload(header.request, raw)
        rule = fd_rule(req, payload)
        if len(fds) not in rule.allowed:
            raise FdCountError(
                f"{req.name} carries {len(fds)} fds, expected "
                f"{' or '.join(map(str, rule.allowed))}")
        if len(fds) in rule.tolerated:
            close_fds(fds)
            fds.clear()
        return req, payload

    def _call(self, header: Header, req: Request, payload: Payload,
              fds: List[int], msgno: int
              ) -> Optional[Tuple[Union[None, Payload, WithFds], int]]:
        """Run the handler: its reply and the REPLY_ACK status, or None
        when a refusal was acked already."""
        try:
            return self.handlers.handler(req)(payload, fds), 0
        except Refused as exc:
            self._problem(ProblemKind.REFUSAL, f"{req.name}: {exc}", msgno,
                          req)
            if header.need_reply and self._reply_ack:
                self.send(req, U64(1))
                return None
            if self.host.config.judge:
                return None  # the real back-end answers; judge on
            raise CloseConnection(DisconnectCause.REFUSED,
                                  f"refused {req.name}: {exc}") from None
        except ProtocolError as exc:
            self._problem(ProblemKind.ERROR, f"message {msgno} {req.name}: "
                          f"{exc}", msgno, req)
            if req in REPLY_BODY and not header.need_reply \
                    and not self.host.config.judge:
                raise CloseConnection(DisconnectCause.PROTOCOL,
                                      f"cannot answer {req.name}: {exc}"
                                      ) from None
            return None, 1

    def _fail(self, header: Header, req: Request, fds: List[int],
              msgno: int) -> None:
        """A FAIL fault: the request is not applied; its failure is
        answered where the protocol has a way to say it."""
        close_fds(fds)
        if header.need_reply and self._reply_ack:
            self.send(req, U64(1))
        elif req in REPLY_BODY:
            raise CloseConnection(DisconnectCause.FAULT, f"failed message "
                                  f"{msgno} ({req.name}), which has no "
                                  "failure answer")

    def _after_bad_message(self, header: Header, exc: ProtocolError) -> None:
        """A message that could not be decoded: answer a failure if one is
        owed and possible, else close."""
        if isinstance(exc, UnknownRequest):
            raise CloseConnection(DisconnectCause.PROTOCOL,
                                  f"unknown request {header.request}")
        try:
            req = Request(header.request)
        except ValueError:
            raise CloseConnection(DisconnectCause.MALFORMED,
                                  str(exc)) from None
        if header.need_reply and self._reply_ack:
            self.send(req, U64(1))
        elif req in REPLY_BODY and not self.host.config.judge:
            raise CloseConnection(DisconnectCause.PROTOCOL,
                                  f"cannot answer malformed {req.name}")

    @property
    def _reply_ack(self) -> bool:
        return self.state.protocol_negotiated(ProtocolFeature.REPLY_ACK)

    def send(self, req: Request, payload: Payload, fds: Sequence[int] = (),
             close_fds_after: bool = False) -> None:
        """Queue the answer ``payload`` to ``req``."""
        data = encode(req, payload, VERSION | FLAG_REPLY)
        # Traced first: once sent, the peer (and the test) may act on it.
        self.host.trace.add(self.number, TraceKind.TX, req.name,
                            VERSION | FLAG_REPLY, len(data) - 12, len(fds),
                            payload)
        self._out.append(Send(data, fds, close_fds_after))

    # --- faults -----------------------------------------------------------
    def _fault_for(self, msgno: int, req: Request,
                   payload: Payload) -> Optional[Fault]:
        for fault in self.host.faults:
            if fault.matches(self.number, msgno, req, payload):
                fault.fired += 1
                self.host.trace.event(self.number, Event.FAULT,
                                      f"{fault.action.value} at message "
                                      f"{msgno} {req.name}")
                return fault
        return None

    def _problem(self, kind: ProblemKind, text: str, msgno: int,
                 req: Optional[Request] = None) -> None:
        self.host.record(Problem(kind, text, self.number, msgno, req))
