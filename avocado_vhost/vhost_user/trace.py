"""
A decoded, queryable record of everything a back-end saw and did.

Each entry has a time (seconds since the back-end started), the connection
it belongs to, its direction, and a kind:

``rx``        a message from the front-end, decoded
``tx``        a message the back-end sent
``error``     a malformed message or a failure to handle one
``violation`` a conformance rule the front-end broke
``refused``   a request the back-end does not implement, and how it refused
``event``     connection accepted/closed, ring started/stopped, fault fired

The trace is written as text into the test's log directory so that a failure
can be understood without a rerun.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
import time as _time
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

from .message import Request

__all__ = ["TraceKind", "Event", "TraceEntry", "Trace", "describe_payload"]


class TraceKind(str, enum.Enum):
    """The kind of a trace entry (a ``str``: JSON and old readers see the
    same text)."""

    RX = "rx"
    TX = "tx"
    ERROR = "error"
    VIOLATION = "violation"
    REFUSED = "refused"
    EVENT = "event"
    #: the proxy's relay of the back-end channel (BACKEND_REQ), each way
    CHAN_RX = "chan-rx"
    CHAN_TX = "chan-tx"


class Event(str, enum.Enum):
    """What an ``event`` entry records (its ``request`` field)."""

    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    RECONNECT_FAILED = "RECONNECT-FAILED"
    FAULT = "FAULT"
    HOLD_TIMEOUT = "HOLD-TIMEOUT"
    RING_STARTED = "RING-STARTED"
    RING_STOPPED = "RING-STOPPED"
    LOG_ALL = "LOG-ALL"
    LOG_BASE = "LOG-BASE"
    CALL = "CALL"
    INFLIGHT = "INFLIGHT"
    POSTCOPY = "POSTCOPY"
    IOTLB = "IOTLB"
    # the proxy's two ends
    FRONT_END_CONNECTED = "FRONT-END CONNECTED"
    BACK_END_CONNECTED = "BACK-END CONNECTED"


#: A request named by its enum member or its name.
RequestName = Union["Request", str]


def _name(request: Optional[RequestName]) -> Optional[str]:
    if request is None or isinstance(request, str):
        return request
    return request.name


def describe_payload(payload: object) -> str:
    """Short text for a decoded payload (memory tables one region each)."""
    from .message import Empty, MemoryTable, U64
    if payload is None or isinstance(payload, Empty):
        return ""
    if isinstance(payload, MemoryTable):
        return "; ".join(str(r) for r in payload.regions)
    if isinstance(payload, U64):
        return f"0x{payload.value:x}"
    text = repr(payload)
    return text if len(text) < 200 else text[:200] + "..."


class TraceEntry:
    """One line of the trace.

    ``detail`` may be given as a payload object: it is only turned into
    text when read, which keeps tracing off the back-end's hot path.
    """

    __slots__ = ("seq", "time", "wall", "conn", "kind", "request", "flags",
                 "size", "nfds", "_detail")

    def __init__(self, seq: int, time: float, conn: int, kind: str,
                 request: str = "", flags: int = 0, size: int = 0,
                 nfds: int = 0, detail: object = "", wall: float = 0.0):
        self.seq = seq
        self.time = time
        #: the same moment on the wall clock (what test logs print)
        self.wall = wall
        self.conn = conn
        self.kind = kind
        self.request = request
        self.flags = flags
        self.size = size
        self.nfds = nfds
        self._detail = detail

    @property
    def payload(self) -> object:
        """The decoded payload object of a message entry (``None`` for
        other kinds, or once only its text is kept)."""
        return None if isinstance(self._detail, str) else self._detail

    @property
    def detail(self) -> str:
        if isinstance(self._detail, str):
            return self._detail
        return describe_payload(self._detail)

    def __str__(self) -> str:
        arrow = {"rx": "<-", "tx": "->"}.get(self.kind, "!!" if self.kind in (
            "error", "violation", "refused") else "--")
        stamp = _time.strftime("%H:%M:%S", _time.localtime(self.wall))
        millis = int(self.wall * 1000) % 1000
        head = (f"{self.seq:5d} {stamp}.{millis:03d} {self.time:9.4f} "
                f"c{self.conn} {arrow} ")
        if self.kind in ("rx", "tx"):
            return (f"{head}{self.request} flags=0x{self.flags:x} "
                    f"size={self.size} fds={self.nfds} {self.detail}").rstrip()
        return f"{head}{self.kind.upper()}: {self.request} {self.detail}".rstrip()


#: entries a trace keeps by default (a few MiB): a test's conversation fits
#: many times over; a soak or a long-running proxy keeps its start and its
#: recent past
MAX_ENTRIES = 50_000


class Trace:
    """Thread-safe list of :class:`TraceEntry`, bounded: past
    ``max_entries`` it keeps its first quarter (the start-up a failure is
    usually explained by) and its most recent entries, and counts what it
    dropped between them (:attr:`dropped`; the text and JSON forms say so
    where the gap is)."""

    def __init__(self, name: str = "backend",
                 max_entries: int = MAX_ENTRIES):
        if max_entries < 8:
            raise ValueError(f"a trace of {max_entries} entries keeps nothing"
                             " useful (at least 8)")
        self.name = name
        self.max_entries = max_entries
        #: entries dropped to stay within ``max_entries``
        self.dropped = 0
        # Raw tuples on the hot path (a tuple is much cheaper to make than
        # an object); TraceEntry objects are built when the trace is read,
        # for a prefix of _raw (same indexes).
        self._raw: List[Tuple[Any, ...]] = []
        self._entries: List[TraceEntry] = []
        self._head = max_entries // 4
        self._seq = itertools.count()
        self._t0 = time.monotonic()
        # Entries are stamped on the monotonic clock (cheap, never jumps)
        # and shown on the wall clock too, to line up with test logs.
        self._wall0 = time.time()
        self._lock = threading.Lock()
        #: Called with each entry's text as it is added (``python -m
        #: avocado_vhost serve`` prints the conversation live); None on
        #: the suite's hot path.
        self.live: Optional[Callable[[str], None]] = None

    def event(self, conn: int, event: Event, detail: object = "") -> None:
        """Record an :class:`Event`."""
        self.add(conn, TraceKind.EVENT, event.value, detail=detail)

    def add(self, conn: int, kind: str, request: str = "", flags: int = 0,
            size: int = 0, nfds: int = 0, detail: object = "") -> None:
        if isinstance(kind, TraceKind):  # kept as plain text: it is a dict
            kind = kind.value             # key, and enums hash by name
        with self._lock:
            self._raw.append((next(self._seq), time.monotonic(), conn, kind,
                              request, flags, size, nfds, detail))
            if len(self._raw) > self.max_entries:
                self._drop_middle()
        if self.live is not None:
            self.live(str(self.entries[-1]))

    def _drop_middle(self) -> None:
        """Drop a block of the oldest entries after the kept head (a
        quarter of the bound at once, so the cost is amortised)."""
        start = self._head
        stop = start + max(1, self.max_entries // 4)
        del self._raw[start:stop]
        del self._entries[start:min(stop, len(self._entries))]
        self.dropped += stop - start

    @property
    def entries(self) -> List[TraceEntry]:
        """Every entry kept so far, in sequence order."""
        with self._lock:
            done = len(self._entries)
            t0, wall0 = self._t0, self._wall0
            self._entries.extend(
                TraceEntry(seq, t - t0, conn, kind, request, flags, size,
                           nfds, detail, wall=wall0 + t - t0)
                for seq, t, conn, kind, request, flags, size, nfds, detail
                in self._raw[done:])
            return list(self._entries)

    def select(self, kind: Optional[str] = None,
               request: Optional[RequestName] = None,
               conn: Optional[int] = None) -> List[TraceEntry]:
        """Entries matching every given criterion (``kind`` a
        :class:`TraceKind`, ``request`` a :class:`.Request`, an
        :class:`Event` or a name)."""
        name = _name(request)
        return [e for e in self.entries
                if (kind is None or e.kind == kind)
                and (name is None or e.request == name)
                and (conn is None or e.conn == conn)]

    def payloads(self, request: RequestName, conn: Optional[int] = None
                 ) -> List[Any]:
        """Decoded payloads of every ``request`` received, in order: what
        a test compares, field by field (``p.index``, ``p.num``)."""
        return [e.payload for e in self.select(TraceKind.RX, request, conn)]

    def received(self, conn: Optional[int] = None) -> List[Request]:
        """The front-end requests received, in order (a message whose
        request number is not one is left out: ``select(TraceKind.RX)``
        has it, as ``UNKNOWN(n)``)."""
        return [Request[e.request]
                for e in self.select(TraceKind.RX, conn=conn)
                if e.request in Request.__members__]

    def format(self, entries: Optional[Iterable[TraceEntry]] = None) -> str:
        return "\n".join(str(e) for e in (
            self.entries if entries is None else entries))

    def tail(self, count: int = 20) -> str:
        return self.format(self.entries[-count:])

    def write_json(self, path: str) -> None:
        """The trace as JSON (what ``python -m avocado_vhost chart`` and
        the per-test chart read): the back-end's name and one object per
        entry."""
        import json
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"name": self.name, "dropped": self.dropped,
                       "entries": [
                {"seq": e.seq, "time": round(e.time, 6),
                 "wall": round(e.wall, 6), "conn": e.conn, "kind": e.kind,
                 "request": e.request, "flags": e.flags, "size": e.size,
                 "fds": e.nfds, "detail": e.detail}
                for e in self.entries]}, out)

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.write(f"# vhost-user trace of back-end '{self.name}': seq, "
                      "wall clock (as in the test's log), seconds since the "
                      "back-end started, connection, direction\n")
            if self.dropped:
                out.write(f"# {self.dropped} entries were dropped to keep the "
                          f"trace within {self.max_entries}: see the gap in "
                          "the sequence numbers\n")
            out.write(self.format() + "\n")
