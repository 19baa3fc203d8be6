"""
What a back-end observed going wrong, as typed records.

A test asks *what kind* of thing happened and compares fields; it does not
grep text.  The text is still there (``str(record)``) for logs and
failure messages.

* :class:`Problem` -- one error, violation or refusal (:class:`ProblemKind`),
  with the connection, message number and request it belongs to, and for
  a violation the rule broken and the :class:`Side` that broke it;
* :class:`Disconnect` -- why a connection ended (:class:`DisconnectCause`);
* :class:`RingEvent` -- what happened to a ring, for ring listeners;
* :class:`Records` -- the lists a back-end keeps; the owner guards them
  with its lock (the back-end thread appends, tests read).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .message import Request

__all__ = ["ProblemKind", "Problem", "Side", "DisconnectCause",
           "Disconnect", "RingEvent", "Records"]


class ProblemKind(enum.Enum):
    """The three ways a message can go wrong (see :mod:`.backend`)."""

    #: malformed input, an unmappable region, a bug in this code
    ERROR = "error"
    #: the front-end broke a rule of the spec (:mod:`.conformance`)
    VIOLATION = "violation"
    #: a legal request this back-end does not implement
    REFUSAL = "refused"


class Side(enum.Enum):
    """Who broke a rule: the two ends of a vhost-user connection."""

    FRONT_END = "front-end"
    BACK_END = "back-end"


@dataclass(frozen=True)
class Problem:
    """One recorded problem; ``text`` says it in a sentence.  A violation
    names its ``rule`` (an identifier of :data:`.conformance.RULES` or of
    the proxy's reply rules, :data:`.reply_rules.REPLY_RULES`) and its ``side``:
    what tests and allow-lists match."""

    kind: ProblemKind
    text: str
    conn: int = 0
    #: the message's number on its connection (1-based), if one caused it
    msgno: Optional[int] = None
    request: Optional[Request] = None
    rule: Optional[str] = None
    side: Optional[Side] = None

    def __str__(self) -> str:
        return (self.text if self.side is None
                else f"{self.side.value}: {self.text}")


class DisconnectCause(enum.Enum):
    """Why a connection ended."""

    #: the front-end closed the socket (QEMU quit, or reconnects)
    PEER_CLOSED = "peer closed"
    #: the front-end stopped reading our answers (its buffer is full)
    PEER_STUCK = "peer stopped reading"
    #: framing was lost (oversized, truncated): nothing after can be read
    MALFORMED = "malformed message"
    #: the spec says to close, or an answer owed could not be given
    PROTOCOL = "protocol"
    #: a request was refused and the front-end did not ask for an ack
    REFUSED = "refused"
    #: a scripted :class:`.faults.Fault`
    FAULT = "fault"
    #: :meth:`.VhostUserBackend.disconnect`
    DROPPED = "dropped by the test"
    #: :meth:`.VhostUserBackend.stop`
    STOPPED = "back-end stopped"


@dataclass(frozen=True)
class Disconnect:
    """The end of connection ``conn``."""

    conn: int
    cause: DisconnectCause
    detail: str = ""

    def __str__(self) -> str:
        return (f"{self.cause.value}: {self.detail}" if self.detail
                else self.cause.value)


class RingEvent(str, enum.Enum):
    """What a ring listener is told (the spec's ring states)."""

    STARTED = "started"
    STOPPED = "stopped"
    ENABLED = "enabled"
    DISABLED = "disabled"


#: problems of each kind a back-end keeps by default (the first ones: the
#: rest of a flood is counted)
MAX_RECORDS = 1000


@dataclass
class Records:
    """Everything a back-end recorded, by kind, bounded: of each kind the
    first ``keep`` problems are kept and the rest counted in
    :attr:`dropped` (a problem recorded with ``always`` -- the thread's
    death -- is kept whatever the count)."""

    keep: int = MAX_RECORDS
    errors: List[Problem] = field(default_factory=list)
    violations: List[Problem] = field(default_factory=list)
    refusals: List[Problem] = field(default_factory=list)
    #: why each connection ended, by connection number (the first
    #: ``keep // 2`` connections and the most recent ones)
    disconnects: Dict[int, Disconnect] = field(default_factory=dict)
    #: problems recorded but not kept, by kind
    dropped: Dict[ProblemKind, int] = field(default_factory=lambda: {
        kind: 0 for kind in ProblemKind})

    def of(self, kind: ProblemKind) -> List[Problem]:
        return {ProblemKind.ERROR: self.errors,
                ProblemKind.VIOLATION: self.violations,
                ProblemKind.REFUSAL: self.refusals}[kind]

    def add(self, problem: Problem, always: bool = False) -> None:
        kept = self.of(problem.kind)
        if always or len(kept) < self.keep:
            kept.append(problem)
        else:
            self.dropped[problem.kind] += 1

    def total(self, kind: ProblemKind) -> int:
        """Problems of ``kind`` recorded so far, kept or not."""
        return len(self.of(kind)) + self.dropped[kind]

    @property
    def errors_total(self) -> int:
        return self.total(ProblemKind.ERROR)

    def disconnected(self, record: Disconnect) -> None:
        self.disconnects[record.conn] = record
        if len(self.disconnects) > self.keep:
            # drop the oldest after the kept head
            head = self.keep // 2
            del self.disconnects[list(self.disconnects)[head]]

    def clear(self) -> None:
        """Forget every problem (a test that provoked them on purpose)."""
        for kind in ProblemKind:
            self.of(kind).clear()
            self.dropped[kind] = 0
