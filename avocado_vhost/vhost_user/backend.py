"""
A vhost-user back-end that runs as a thread inside a test.

:class:`VhostUserBackend` hosts a device on a :class:`.server.Server`
thread: the server owns the socket (accepted in listen mode, or handed over
by :meth:`~VhostUserBackend.connect` in connect mode, with reconnect) and
the one event loop that reads messages and kicks; each connection's
messages go to a :class:`.session.Session` -- the protocol core, which does
no I/O -- that decodes, judges, applies faults, calls the request's handler
(:mod:`.handlers`) and says what to answer; the connection's
:class:`.conversation.Conversation` writes the answers, or holds.  This
class is what the session and the device see of their host (records, the
trace, ring events, signals) and what a test reads and waits on.  The test
thread never touches the socket; it reads the state and blocks on
conditions with :meth:`~VhostUserBackend.wait_for` and its named variants,
each bounded and each reporting what it saw on timeout.

Where it sits among the package's layers: :mod:`avocado_vhost.vhost_user`.

What goes wrong goes into :attr:`~VhostUserBackend.records` as typed
:class:`.records.Problem` s, never into a silent thread death:

* malformed input (bad header, size, fd count, unmappable region) is an
  *error*: the offending fds are closed and the connection is kept when the
  framing is intact, dropped when it is not or when the front-end would be
  left waiting for an answer that cannot be given;
* a request that is legal but not implemented here is *refused*: with a
  non-zero REPLY_ACK when the front-end asked for an ack, otherwise by
  closing the connection, as the spec allows;
* the front-end breaking a rule is a *violation*;
* a bug in this code is an *error* too, with its traceback.

:meth:`~VhostUserBackend.check` raises :class:`.BackendFailure` with the
trace around the first error; the Avocado harness calls it after every test.
"""

from __future__ import annotations

import mmap
import socket
import threading
import traceback
from typing import Callable, Dict, List, Optional, Sequence

from .config import NET_FEATURES, NET_PROTOCOL_FEATURES, BackendConfig
from .connection import connect, read_eventfd, signal_eventfd
from .device import Device
from .error import BackendFailure, VhostUserError
from .faults import Fault
from .iotlb import IOTLB_MISS, PERM_RO, PERM_WO
from .message import (VRING_IDX_MASK, VRING_NOFD_FLAG, BackendRequest,
                      IotlbMsg, Payload, VirtioFeature, VringArea,
                      feature_names)
from .records import (Disconnect, DisconnectCause, Problem, ProblemKind,
                      Records, RingEvent)
from .conversation import Conversation
from .server import Runstate, Server
from .session import Session
from .state import DeviceState, Vring
from .trace import Event, Trace
from .waits import BackendWaits

__all__ = ["VhostUserBackend", "Runstate", "RingListener", "BackendConfig",
           "Fault", "NET_FEATURES", "NET_PROTOCOL_FEATURES"]

#: Called as ``listener(backend, ring, event)`` on every ring event.
RingListener = Callable[["VhostUserBackend", Vring, RingEvent], None]


class VhostUserBackend(Server, BackendWaits):
    """The back-end: a :class:`.server.Server` thread hosting a device,
    and everything it recorded; the test's waits and verdict come from
    :class:`.waits.BackendWaits`.

    :param name: used in the trace and in error messages (``src``, ``dst``).
    :param config: what to offer; ``BackendConfig()`` suits virtio-net.
    :param device: the data path (None: rings are configured but never
        processed).
    """

    def __init__(self, name: str = "backend",
                 config: Optional[BackendConfig] = None,
                 device: Optional[Device] = None):
        super().__init__(name)
        self.config = config or BackendConfig()
        self.trace = Trace(name, self.config.max_trace)
        self.records = Records(self.config.max_records)
        self.faults: List[Fault] = []
        self.ring_listeners: List[RingListener] = []
        #: Answer GET_VRING_BASE with this instead of the ring's position
        #: (a broken back-end, for negative controls).
        self.vring_base_override: Optional[int] = None
        #: Called as ``on_connect(number, config)`` when connection
        #: ``number`` (1-based) opens, before any message: a test may change
        #: what this connection offers (e.g. no features at all).
        self.on_connect: Optional[Callable[[int, BackendConfig], None]] = None
        self.device = device
        if device is not None:
            device.attach(self)
        #: the state of the current (or last) connection
        self.state = DeviceState()

    # --- what tests read ------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.runstate is Runstate.CONNECTED

    @property
    def errors(self) -> List[Problem]:
        return self.records.errors

    @property
    def violations(self) -> List[Problem]:
        return self.records.violations

    @property
    def refused(self) -> List[Problem]:
        return self.records.refusals

    @property
    def disconnects(self) -> Dict[int, Disconnect]:
        """Why each connection ended, by connection number."""
        return self.records.disconnects

    # --- lifecycle ------------------------------------------------------
    def start(self) -> "VhostUserBackend":
        self._start_thread()
        return self

    def __enter__(self) -> "VhostUserBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the server's hooks -----------------------------------------------
    def _message_timeout(self) -> float:
        return self.config.message_timeout

    def _new_session(self, number: int) -> Session:
        if self.on_connect is not None:
            try:
                self.on_connect(number, self.config)
            except Exception:
                self.record_error("on_connect hook failed:\n"
                                  + traceback.format_exc())
        self.state = DeviceState(
            offered_features=self.config.features,
            offered_protocol_features=self.config.protocol_features,
            config=bytearray(self.config.config))
        self.trace.event(number, Event.CONNECTED)
        return Session(number, self.state, self)

    def _connection_ended(self, conv: Conversation, cause: DisconnectCause,
                          detail: str) -> None:
        conv.session.handlers.stop_rings("disconnect")
        if self.device is not None:
            self.device.reset()
        self.state.close()
        record = Disconnect(conv.number, cause, detail)
        self.records.disconnected(record)
        self.trace.event(conv.number, Event.DISCONNECTED, str(record))

    def _reconnect_failed(self, detail: str) -> None:
        self.trace.event(self.connections, Event.RECONNECT_FAILED, detail)

    def _kick_fds(self) -> Dict[int, int]:
        if self.device is None:
            return {}
        return {r.kick_fd: r.index for r in self.state.vrings.values()
                if r.started and r.kick_fd is not None}

    def _kicked(self, fd: int, index: int) -> None:
        try:
            read_eventfd(fd)  # None: the peer drained it meanwhile
        except OSError:
            pass  # replaced (closed) by a newer kick fd
        with self._cond:
            ring = self.state.vrings.get(index)
            if (self.device is not None and ring is not None
                    and ring.started and ring.kick_fd == fd):
                self.device.process(ring)
            self._notify()

    def _between_polls(self) -> None:
        if self.device is not None:
            self.device.process_all()

    def _check_stalls(self, now: float) -> None:
        if self.device is not None:
            self.device.check_stalls(now)

    def _crashed(self, text: str) -> None:
        self.record(Problem(ProblemKind.ERROR, text, self.connections),
                    always=True)

    # --- records (the session's and the device's host interface) ---------
    def record(self, problem: Problem, always: bool = False) -> None:
        """Keep ``problem`` (unless too many of its kind were: it is then
        counted; ``always`` keeps it whatever the count) and trace it."""
        with self._cond:
            self.records.add(problem, always)
            self.trace.add(problem.conn, problem.kind.value,
                           problem.request.name if problem.request is not None
                           and problem.kind is ProblemKind.REFUSAL else "",
                           detail=problem.text)
            self._notify()

    def record_error(self, text: str) -> None:
        """An error outside any one message (the data path, the thread)."""
        self.record(Problem(ProblemKind.ERROR, text, self.connections))

    def trace_event(self, event: Event, detail: str = "") -> None:
        self.trace.event(self.connections, event, detail)

    def ring_event(self, ring: Vring, event: RingEvent) -> None:
        """Tell the ring listeners (a listener's bug is an error, not a
        dead thread)."""
        for listener in list(self.ring_listeners):
            try:
                listener(self, ring, event)
            except Exception:
                self.record_error("ring listener failed:\n"
                                  + traceback.format_exc())

    # --- for the waits' and the verdict's messages (waits.BackendWaits) -
    def describe(self) -> str:
        """One paragraph of state, for timeouts and failures."""
        with self._cond:
            s = self.state
            rings = "; ".join(r.describe() for r in sorted(
                s.vrings.values(), key=lambda r: r.index)) or "no rings"
            acked = ("none" if s.acked_features is None else
                     feature_names(s.acked_features, VirtioFeature))
            stalls = self.device.stalls if self.device is not None else []
            return (f"{self.runstate.value}, connections={self.connections}"
                    f" messages={self.messages} features acked={acked} "
                    f"memory regions={len(s.memory)} "
                    f"log={'yes' if s.log else 'no'} {rings}; "
                    f"errors={len(self.records.errors)} "
                    f"violations={len(self.records.violations)}"
                    + (f" stalls={len(stalls)}" if stalls else ""))

    # --- acting as the device, from the test ------------------------------
    def lock(self) -> threading.RLock:
        """The lock that guards the state (hold it to read a consistent
        snapshot while the thread runs)."""
        return self._cond  # type: ignore[return-value]

    def signal_call(self, index: int) -> None:
        """Signal ring ``index``'s call eventfd, as the device does when it
        has used buffers: the front-end must turn it into a guest interrupt.

        :raise BackendFailure: the ring has no call fd (no SET_VRING_CALL).
        """
        with self._cond:
            ring = self.state.vrings.get(index)
            if ring is None or ring.call_fd is None:
                raise BackendFailure(f"[{self.name}] ring {index} has no call "
                                     "eventfd to signal (no SET_VRING_CALL)")
            self.signal(ring)
            self.trace_event(Event.CALL, f"ring {index} signalled by the test")

    def signal(self, ring: Vring) -> None:
        """Signal ``ring``'s call eventfd without ever waiting; what was
        wrong with the fd is recorded (call with the lock held)."""
        # Owed until a call fd takes it (see set_vring_call): a ring may
        # run before the front-end hands over the guest's call fd.
        ring.signalled_since_call = True
        if ring.call_fd is None:
            return
        problem = signal_eventfd(ring.call_fd)
        if problem is not None:
            self.record_error(f"call fd of ring {ring.index}: {problem}")

    def iotlb_miss(self, iova: int, write: bool) -> None:
        """Ask the front-end to translate ``iova``: a MISS on the back-end
        channel (call with the lock held).  No answer is awaited: the
        update comes on the main channel, which this thread must stay free
        to read, and QEMU waits for its acknowledgement before it goes on.
        Once per page until the next update."""
        state = self.state
        if not state.iotlb.ask(iova, write):
            return
        channel = state.backend_channel
        if channel is None:
            self.record_error(f"IOTLB miss at iova 0x{iova:x} and no "
                              "back-end channel to report it on")
            return
        try:
            channel.request(BackendRequest.IOTLB_MSG, IotlbMsg(
                iova, 0, 0, PERM_WO if write else PERM_RO, IOTLB_MISS),
                need_reply=False)
        except (OSError, VhostUserError) as exc:
            self.record_error(f"IOTLB miss at iova 0x{iova:x} not sent: "
                              f"{exc}")

    def backend_request(self, request: BackendRequest, payload: Payload,
                        fds: Sequence[int] = (), need_reply: bool = True,
                        reply_fds: Optional[List[int]] = None
                        ) -> Optional[int]:
        """Send a request on the back-end channel (BACKEND_REQ) of the
        current connection; with ``need_reply``, the front-end's REPLY_ACK
        (0: done).  Runs on the caller's thread, without the back-end's
        lock: the front-end answers from its main loop, which may itself be
        waiting for this back-end.

        :raise BackendFailure: there is no back-end channel (no
            SET_BACKEND_REQ_FD on this connection).
        """
        with self._cond:
            channel = self.state.backend_channel
        if channel is None:
            raise BackendFailure(f"[{self.name}] no back-end channel: the "
                                 "front-end sent no SET_BACKEND_REQ_FD")
        return channel.request(request, payload, fds, need_reply, reply_fds)

    def host_notifier(self, ring: int, fd: Optional[int], offset: int = 0,
                      size: int = mmap.PAGESIZE) -> Optional[int]:
        """Ask the front-end to map ``size`` bytes of ``fd`` at ``offset``
        as ring ``ring``'s notification area (VRING_HOST_NOTIFIER_MSG), or
        with ``fd`` None to unmap it; the front-end's REPLY_ACK."""
        flags = ring & VRING_IDX_MASK
        if fd is None:
            flags |= VRING_NOFD_FLAG
        return self.backend_request(
            BackendRequest.VRING_HOST_NOTIFIER_MSG,
            VringArea(flags, size, offset), () if fd is None else (fd,))

    def mark_dirty(self, gpa: int, length: int = 1) -> None:
        """Set the dirty-log bits of ``[gpa, gpa+length)``."""
        with self._cond:
            if self.state.log is None:
                raise BackendFailure(f"[{self.name}] no dirty log to mark: "
                                     "SET_LOG_BASE not received")
            self.state.log.mark(gpa, length)
