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

import threading
import time
from dataclasses import dataclass
from typing import Iterable, List, Optional

__all__ = ["TraceEntry", "Trace"]


@dataclass(frozen=True)
class TraceEntry:
    """One line of the trace."""

    seq: int
    time: float
    conn: int
    kind: str
    request: str = ""
    flags: int = 0
    size: int = 0
    nfds: int = 0
    detail: str = ""

    def __str__(self) -> str:
        arrow = {"rx": "<-", "tx": "->"}.get(self.kind, "!!" if self.kind in (
            "error", "violation", "refused") else "--")
        head = f"{self.seq:5d} {self.time:9.4f} c{self.conn} {arrow} "
        if self.kind in ("rx", "tx"):
            return (f"{head}{self.request} flags=0x{self.flags:x} "
                    f"size={self.size} fds={self.nfds} {self.detail}").rstrip()
        return f"{head}{self.kind.upper()}: {self.request} {self.detail}".rstrip()


class Trace:
    """Thread-safe, append-only list of :class:`TraceEntry`."""

    def __init__(self, name: str = "backend"):
        self.name = name
        self._entries: List[TraceEntry] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def add(self, conn: int, kind: str, request: str = "", flags: int = 0,
            size: int = 0, nfds: int = 0, detail: str = "") -> TraceEntry:
        with self._lock:
            entry = TraceEntry(len(self._entries), time.monotonic() - self._t0,
                               conn, kind, request, flags, size, nfds, detail)
            self._entries.append(entry)
        return entry

    @property
    def entries(self) -> List[TraceEntry]:
        with self._lock:
            return list(self._entries)

    def select(self, kind: Optional[str] = None,
               request: Optional[str] = None,
               conn: Optional[int] = None) -> List[TraceEntry]:
        """Entries matching every given criterion."""
        return [e for e in self.entries
                if (kind is None or e.kind == kind)
                and (request is None or e.request == request)
                and (conn is None or e.conn == conn)]

    def received(self, conn: Optional[int] = None) -> List[str]:
        """Names of the requests received, in order."""
        return [e.request for e in self.select("rx", conn=conn)]

    def format(self, entries: Optional[Iterable[TraceEntry]] = None) -> str:
        return "\n".join(str(e) for e in (
            self.entries if entries is None else entries))

    def tail(self, count: int = 20) -> str:
        return self.format(self.entries[-count:])

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.write(f"# vhost-user trace of back-end '{self.name}'\n")
            out.write(self.format() + "\n")
