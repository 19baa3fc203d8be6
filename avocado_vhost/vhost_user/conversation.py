"""
One served connection: its socket, its :class:`.session.Session`, and the
message a HOLD fault keeps.

The back-end's loop asks a :class:`Conversation` what to watch (nothing
while a message is held), hands it the socket's readiness, and gets back
an :class:`Ended` when the connection must go.  Here the session's
:class:`.session.Outcome` is carried out: answers written in order (fds a
handler made for the answer closed once sent), then the close or the hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from .connection import Connection, close_fds
from .error import ConnectionClosed, MalformedMessage, PeerStuck
from .message import Header
from .records import DisconnectCause
from .session import Held, Outcome, Session

__all__ = ["Conversation", "Ended"]


@dataclass(frozen=True)
class Ended:
    """The connection must end, and why; ``error`` is what to record as
    an error beside the disconnect (a message cut short, framing lost)."""

    cause: DisconnectCause
    detail: str
    error: Optional[str] = None


class Conversation:
    """Connection ``session.number`` on ``conn``; ``wake`` wakes the loop
    that serves it (a held message's release calls it)."""

    def __init__(self, conn: Connection, session: Session,
                 wake: Callable[[], None]):
        self.conn = conn
        self.session = session
        self._wake = wake
        self._held: Optional[Held] = None
        self._held_until = 0.0

    @property
    def number(self) -> int:
        return self.session.number

    def watch(self) -> Optional[int]:
        """The fd to poll for messages: none while a message is held."""
        return None if self._held is not None else self.conn.fileno()

    def timeout_ms(self) -> Optional[int]:
        """How long the loop may wait before a held message is due."""
        if self._held is None:
            return None
        return max(0, int((self._held_until - time.monotonic()) * 1000) + 1)

    def receive(self) -> Tuple[Optional[Tuple[Header, bytes, List[int]]],
                               Optional[Ended]]:
        """Read the message the poll found (without the back-end's lock):
        the message, or why the connection ends."""
        try:
            return self.conn.recv(), None
        except ConnectionClosed as exc:
            return None, Ended(_cause(exc), str(exc),
                               f"{exc} (message cut short)"
                               if exc.partial else None)
        except MalformedMessage as exc:
            # Framing is lost (oversized or truncated): nothing after this
            # can be trusted, so the connection goes.
            return None, Ended(DisconnectCause.MALFORMED, str(exc), str(exc))

    def handle(self, header: Header, raw: bytes,
               fds: List[int]) -> Optional[Ended]:
        """Let the session handle one message and carry out its outcome
        (with the back-end's lock held)."""
        return self._carry_out(self.session.handle(header, raw, fds,
                                                   self.conn.late_fds))

    def resume_if_released(self) -> Tuple[bool, Optional[Ended]]:
        """Answer the held message once the test released it or its
        fault's time is up (with the back-end's lock held): whether it was
        answered, and whether the connection ends."""
        held = self._held
        if held is None:
            return False, None
        released = held.fault.release.is_set()
        if not released and time.monotonic() < self._held_until:
            return False, None
        self._let_go()
        return True, self._carry_out(self.session.resume(
            held, timed_out=not released))

    def close(self, cause: DisconnectCause, detail: str) -> str:
        """Close the socket and drop a held message (its fds closed); the
        disconnect's detail."""
        held = self._let_go()
        if held is not None:
            close_fds(held.fds)
            if cause is DisconnectCause.STOPPED:
                detail = f"back-end stopped while holding {held.request.name}"
        self.conn.close()
        return detail

    def _let_go(self) -> Optional[Held]:
        held, self._held = self._held, None
        if held is not None:
            held.fault.release.wakers.remove(self._wake)
        return held

    def _carry_out(self, outcome: Outcome) -> Optional[Ended]:
        """Write what the session answered, then close or hold as it
        says."""
        sends = list(outcome.sends)
        try:
            while sends:
                send = sends.pop(0)
                try:
                    self.conn.send(send.data, send.fds)
                finally:
                    if send.close_fds_after:
                        close_fds(send.fds)
        except ConnectionClosed as exc:  # while answering
            for send in sends:
                if send.close_fds_after:
                    close_fds(send.fds)
            return Ended(_cause(exc), str(exc))
        if outcome.close is not None:
            return Ended(outcome.close.cause, outcome.close.detail)
        if outcome.held is not None:
            self._held = outcome.held
            self._held_until = (time.monotonic()
                                + outcome.held.fault.hold_timeout)
            outcome.held.fault.release.wakers.append(self._wake)
            outcome.held.fault.reached.set()  # the test acts meanwhile
        return None


def _cause(exc: ConnectionClosed) -> DisconnectCause:
    return (DisconnectCause.PEER_STUCK if isinstance(exc, PeerStuck)
            else DisconnectCause.PEER_CLOSED)
