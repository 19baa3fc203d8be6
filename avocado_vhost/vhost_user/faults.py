"""
Scripted misbehaviour of the back-end, for tests of the front-end.

A :class:`Fault` picks messages (by request, by number on the connection,
by any predicate) and does one :class:`FaultAction` to them: drop the
connection before or after answering (a back-end that dies at a chosen
message), answer with other bytes, fail the request, or hold the answer
until the test releases it (a back-end that answers, and applies, late).
The session picks the fault and says what it does (:mod:`.session`); the
server carries it out: a held message only stops the reading of its socket,
while kicks, calls and the test's requests are served on.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from .message import Payload, Request

__all__ = ["FaultAction", "Fault", "Release"]


class Release(threading.Event):
    """The test's "go on" for a held message: an event whose ``set()``
    also wakes the back-end that holds on it, whose loop waits on its
    sockets and not on this event."""

    def __init__(self) -> None:
        super().__init__()
        #: called after every set(): the holder's wake-up
        self.wakers: List[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        for wake in list(self.wakers):
            wake()


class FaultAction(str, enum.Enum):
    """What a fault does to the message it matches."""

    #: close the connection before handling the message
    DISCONNECT = "disconnect"
    #: close it right after answering
    DISCONNECT_AFTER = "disconnect-after"
    #: send ``reply_bytes(request, payload)`` instead of the answer
    REPLY = "reply"
    #: do not answer until ``release`` is set (or ``hold_timeout``)
    HOLD = "hold"
    #: fail the request as a back-end that cannot carry it out: it is not
    #: applied, and the answer is a non-zero REPLY_ACK when the front-end
    #: asked for one (a request always answered with a body, which has no
    #: way to say "failed", ends the connection instead)
    FAIL = "fail"


@dataclass
class Fault:
    """A scripted deviation from correct behaviour.

    :param action: a :class:`FaultAction`; its value (``"hold"``) is
        taken too and turned into the member.
    :param request: match this request ...
    :param nth: ... or the Nth message (1-based) of a connection ...
    :param match: ... or any message for which this returns True.
    :param connection: only on this connection number (1-based).
    :param times: how many times the fault fires (0 = every time).
    """

    action: FaultAction
    request: Optional[Request] = None
    nth: Optional[int] = None
    match: Optional[Callable[[Request, Payload], bool]] = None
    connection: Optional[int] = None
    times: int = 1
    reply_bytes: Optional[Callable[[Request, Payload], bytes]] = None
    release: Release = field(default_factory=Release)
    #: Set when a ``hold`` fault starts holding (the test may act then).
    reached: threading.Event = field(default_factory=threading.Event)
    hold_timeout: float = 30.0
    fired: int = 0

    def __post_init__(self) -> None:
        # A misspelt action would otherwise never fire, silently.
        try:  # a str from a caller that spelt the value
            self.action = FaultAction(self.action)
        except ValueError:
            raise ValueError(
                f"fault action {self.action!r}: valid are "
                f"{', '.join(a.value for a in FaultAction)}") from None
        if self.action is FaultAction.REPLY and self.reply_bytes is None:
            raise ValueError("a 'reply' fault needs reply_bytes")

    def matches(self, conn: int, msgno: int, req: Request,
                payload: Payload) -> bool:
        if self.times and self.fired >= self.times:
            return False
        if self.connection is not None and conn != self.connection:
            return False
        if self.request is not None and req != self.request:
            return False
        if self.nth is not None and msgno != self.nth:
            return False
        if self.match is not None and not self.match(req, payload):
            return False
        return True
