"""
The test's side of a back-end: bounded waits on its state, and the verdict.

Every wait evaluates its predicate under the back-end's lock, sleeps on the
back-end's condition variable (the thread notifies after every message,
kick and record), ends after ``timeout`` seconds with a
:class:`.WaitTimeout` that names what was awaited and what was seen
instead, and ends at once with a :class:`.BackendFailure` when the
back-end records an error meanwhile.  :meth:`BackendWaits.check` is the
verdict the harness asks for after every test.

Mixed into :class:`.backend.VhostUserBackend`, which owns the lock, the
records and the state; nothing here touches the socket.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

from .error import BackendFailure, WaitTimeout
from .message import Request
from .records import Problem, ProblemKind
from .trace import TraceKind

if TYPE_CHECKING:
    from .device import Device
    from .records import Records
    from .state import DeviceState
    from .trace import Trace

__all__ = ["BackendWaits"]


class BackendWaits:
    """Waits and verdicts over a back-end's lock, state and records."""

    # provided by the back-end
    name: str
    trace: "Trace"
    records: "Records"
    state: "DeviceState"
    device: Optional["Device"]
    connections: int
    _cond: threading.Condition
    _waiters: int

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        """One paragraph of state, for timeouts and failures."""
        raise NotImplementedError

    # --- waits ------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], object], what: str,
                 timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds (evaluated under the lock).

        :raise WaitTimeout: after ``timeout`` seconds, naming ``what`` and
            the state seen.
        :raise BackendFailure: the back-end recorded an error meanwhile.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            errors_before = self.records.errors_total
            while not predicate():
                if self.records.errors_total > errors_before:
                    raise BackendFailure(self._failure_text(
                        f"while waiting for {what}"))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(
                        f"[{self.name}] timed out after {timeout}s waiting "
                        f"for {what}; seen instead: {self.describe()}\n"
                        f"last messages:\n{self.trace.tail(15)}")
                self._waiters += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiters -= 1

    def wait_connected(self, count: int = 1, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.connections >= count and self.connected,
                      f"connection #{count}", timeout)

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        self.wait_for(lambda: not self.connected, "the connection to close",
                      timeout)

    def wait_mem_table(self, timeout: float = 10.0) -> None:
        self.wait_for(lambda: len(self.state.memory) > 0,
                      "a memory table", timeout)

    def wait_rings_started(self, count: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda: len(self.state.started_rings()) >= count,
                      f"{count} started rings", timeout)

    def wait_log_base(self, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.state.log is not None,
                      "SET_LOG_BASE", timeout)

    def wait_request(self, request: Request, count: int = 1,
                     timeout: float = 10.0,
                     conn: Optional[int] = None) -> None:
        """``count`` x ``request`` received (on connection ``conn``, or on
        any)."""
        self.wait_for(
            lambda: len(self.trace.select(TraceKind.RX, request, conn))
            >= count,
            f"{count} x {request.name}"
            + (f" on connection {conn}" if conn is not None else ""),
            timeout)

    # --- the verdict ------------------------------------------------------
    def _failure_text(self, context: str, what: str = "errors",
                      items: Optional[Sequence[object]] = None,
                      dropped: int = 0) -> str:
        listed = self.records.errors if items is None else items
        if items is None:
            dropped = self.records.dropped[ProblemKind.ERROR]
        more = f"\n  (and {dropped} more not kept)" if dropped else ""
        return (f"[{self.name}] back-end {what} {context}:\n  - "
                + "\n  - ".join(map(str, listed)) + more
                + f"\ntrace (last 30):\n{self.trace.tail(30)}")

    def check(self, allow_violations: bool = False,
              known: Callable[[Problem], bool] = lambda problem: False
              ) -> None:
        """Raise :class:`BackendFailure` if anything went wrong: an error,
        a stalled ring, or (unless allowed) a conformance violation.

        :param allow_violations: a scenario that provokes violations
            checks them itself.
        :param known: violations for which this is true are accounted for
            elsewhere (a known defect of the QEMU under test, reported as
            such) and do not fail the check.
        """
        with self._cond:
            if self.records.errors_total:
                raise BackendFailure(self._failure_text("recorded"))
            stalls = self.device.stalls if self.device is not None else []
            if stalls:
                raise BackendFailure(self._failure_text(
                    "found", "stalled rings", list(stalls)))
            unknown = [v for v in self.records.violations if not known(v)]
            dropped = self.records.dropped[ProblemKind.VIOLATION]
            if (unknown or dropped) and not allow_violations:
                raise BackendFailure(self._failure_text(
                    "recorded", "conformance violations", unknown,
                    dropped))
