"""
A vhost-user back-end that runs as a thread inside a test.

:class:`VhostUserBackend` is the server: it owns the thread, the socket
(accepted in listen mode, or handed over by :meth:`~VhostUserBackend.connect`
in connect mode, with reconnect), the kick eventfds of started rings, and
the records a test reads.  Its one event loop reads messages and kicks;
each connection's messages go to a :class:`.session.Session` -- the
protocol core, which does no I/O -- that decodes, judges, applies faults,
calls the request's handler (:mod:`.handlers`) and says what to answer;
the loop writes the answers.  A held message (a HOLD fault) only stops the
reading of its socket.  The test thread never touches the socket;
it reads the state and blocks on conditions with
:meth:`~VhostUserBackend.wait_for` and its named variants, each bounded and
each reporting what it saw on timeout.

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

import enum
import mmap
import os
import select
import socket
import threading
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .config import NET_FEATURES, NET_PROTOCOL_FEATURES, BackendConfig
from .connection import (Connection, Listener, close_fds, connect,
                         read_eventfd, signal_eventfd)
from .device import Device
from .error import (BackendFailure, ConnectionClosed, MalformedMessage,
                    PeerStuck, VhostUserError)
from .faults import Fault
from .iotlb import IOTLB_MISS, PERM_RO, PERM_WO
from .message import (VRING_IDX_MASK, VRING_NOFD_FLAG, BackendRequest,
                      IotlbMsg, Payload, VirtioFeature, VringArea,
                      feature_names)
from .records import (Disconnect, DisconnectCause, Problem, ProblemKind,
                      Records, RingEvent)
from .session import Held, Outcome, Session
from .state import DeviceState, Vring
from .trace import Event, Trace
from .waits import BackendWaits

__all__ = ["VhostUserBackend", "Runstate", "RingListener", "BackendConfig",
           "Fault", "NET_FEATURES", "NET_PROTOCOL_FEATURES"]

#: Called as ``listener(backend, ring, event)`` on every ring event.
RingListener = Callable[["VhostUserBackend", Vring, RingEvent], None]

#: How often the thread looks for stalled rings while rings are started.
_STALL_POLL_MS = 500


class Runstate(enum.Enum):
    """Where the back-end is in its life."""

    #: made; :meth:`VhostUserBackend.start` not called yet
    IDLE = "idle"
    #: the thread runs, with no connection (listening, or between two)
    WAITING = "waiting"
    #: the thread serves a connection
    CONNECTED = "connected"
    #: :meth:`VhostUserBackend.stop` was called
    STOPPING = "stopping"
    #: the thread is gone and every fd released
    STOPPED = "stopped"


class VhostUserBackend(BackendWaits):
    """The back-end thread and everything it recorded; the test's waits
    and verdict come from :class:`.waits.BackendWaits`.

    :param name: used in the trace and in error messages (``src``, ``dst``).
    :param config: what to offer; ``BackendConfig()`` suits virtio-net.
    :param device: the data path (None: rings are configured but never
        processed).
    """

    def __init__(self, name: str = "backend",
                 config: Optional[BackendConfig] = None,
                 device: Optional[Device] = None):
        self.name = name
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
        #: In connect mode: reconnect to this path as soon as a connection
        #: ends (QEMU's ``server=on`` socket keeps listening), no delay.
        self.reconnect_path: Optional[str] = None
        self.device = device
        if device is not None:
            device.attach(self)
        self.runstate = Runstate.IDLE
        #: connections opened so far (the current one's number)
        self.connections = 0
        #: the state of the current (or last) connection
        self.state = DeviceState()
        self._session: Optional[Session] = None
        self._conn: Optional[Connection] = None
        #: a message a HOLD fault keeps, and until when (monotonic)
        self._held: Optional[Held] = None
        self._held_until = 0.0
        self._work = False
        self._waiters = 0
        self._cond = threading.Condition(threading.RLock())
        self._listener: Optional[Listener] = None
        self._pending: List[Connection] = []
        self._drop_requested = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: Optional[threading.Thread] = None

    # --- what tests read ------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.runstate is Runstate.CONNECTED

    @property
    def stopping(self) -> bool:
        return self.runstate in (Runstate.STOPPING, Runstate.STOPPED)

    @property
    def messages(self) -> int:
        """Messages received on the current (or last) connection."""
        return self._session.messages if self._session is not None else 0

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
    def listen(self, path: str) -> None:
        """Bind ``path`` now (before QEMU starts); accept from the thread
        (which is woken, should it run already)."""
        self._listener = Listener(path)
        self._wake()

    @property
    def listener_path(self) -> str:
        """The socket path this back-end listens on."""
        if self._listener is None:
            raise RuntimeError(f"back-end {self.name} is not listening")
        return self._listener.path

    def connect(self, path: str) -> None:
        """Connect to QEMU's ``server=on`` socket and serve it.

        May be called again after a disconnect to reconnect.
        """
        self.adopt(connect(path, self.config.message_timeout))

    def adopt(self, conn: Connection) -> None:
        """Serve an already connected socket (unit tests, socketpairs).

        Served once the current connection, if any, has ended.
        """
        with self._cond:
            self._pending.append(conn)
        self._wake()

    def start(self) -> "VhostUserBackend":
        if self.runstate is not Runstate.IDLE:
            raise RuntimeError(f"back-end {self.name} is "
                               f"{self.runstate.value}, cannot start")
        self.runstate = Runstate.WAITING
        self._thread = threading.Thread(target=self._run,
                                        name=f"vhost-user-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and release every fd, mapping and socket.

        Returns within ``timeout`` whatever the peer did, with the thread
        gone: the thread makes no syscall that can wait on a peer (every
        peer fd is read and written without waiting, every wait is bounded
        by ``message_timeout``), and the connection is shut down here,
        which ends a bounded wait at once.  Works while QEMU waits for an
        answer: QEMU sees the back-end disconnect.
        """
        if self.runstate is Runstate.STOPPED:
            return
        self.runstate = Runstate.STOPPING
        for fault in list(self.faults):  # a held answer must not delay this
            fault.release.set()
        conn = self._conn
        if conn is not None:
            try:  # ends a select() on it at once; the thread closes it
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.record_error(f"back-end thread did not stop within "
                                  f"{timeout}s")
        self._close_connection(DisconnectCause.STOPPED, "")
        with self._cond:
            pending, self._pending = self._pending, []
            self.runstate = Runstate.STOPPED
        for conn in pending:
            conn.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    @property
    def thread_alive(self) -> bool:
        """Whether the back-end's thread runs (False once stop() returned)."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "VhostUserBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def disconnect(self) -> None:
        """Drop the current connection from the back-end's side."""
        with self._cond:
            self._drop_requested = True
        self._wake()

    def poke(self) -> None:
        """Ask the thread to retry every started ring (the test put frames
        on the wire, or raised a transmit budget).

        Takes no lock: it is called from other back-ends' threads with
        their locks and a shared port's held (a responder on the wire), and
        a lock here would order those locks against ours.  Setting the flag
        before the wake-up byte is enough: the thread clears it under its
        lock after the byte woke it.
        """
        self._work = True
        self._wake()

    def _notify(self) -> None:
        """Wake the test's waits, if any (call with the lock held).

        Condition.notify_all() is Python code that costs microseconds even
        with nobody waiting; this runs for every message.
        """
        if self._waiters:
            self._cond.notify_all()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # --- the thread -----------------------------------------------------
    def _run(self) -> None:
        poller = select.poll()
        registered: List[int] = []
        next_stall_check = 0.0
        try:
            while True:
                with self._cond:
                    if self.stopping:
                        return
                    self._resume_if_released()
                    watch, kicks = self._between_polls()
                    timeout = self._poll_timeout(bool(kicks))
                if watch != registered:
                    for fd in registered:
                        poller.unregister(fd)
                    for fd in watch:
                        poller.register(fd, select.POLLIN)
                    registered = watch
                for fd, _ in poller.poll(timeout):
                    self._ready(fd, kicks)
                # after the kicks that were waiting: those are progress
                if kicks and self.device is not None:
                    now = time.monotonic()
                    if now >= next_stall_check:
                        next_stall_check = now + _STALL_POLL_MS / 1000
                        with self._cond:
                            self.device.check_stalls(now)
                            self._notify()
        except BaseException:  # a bug here must reach the test
            self.record(Problem(ProblemKind.ERROR, "back-end thread crashed:"
                                "\n" + traceback.format_exc(),
                                self.connections), always=True)
        finally:
            with self._cond:
                self._notify()

    def _between_polls(self) -> Tuple[List[int], Dict[int, int]]:
        """Act on the test's requests; the fds to poll, and the kick fds
        of started rings by fd (call with the lock held)."""
        if self._drop_requested:
            self._drop_requested = False
            self._close_connection(DisconnectCause.DROPPED, "")
        if self._session is None and self._pending:
            self._open(self._pending.pop(0))
        if self._work and self.device is not None:
            self._work = False
            self.device.process_all()
        watch = [self._wake_r]
        kicks: Dict[int, int] = {}
        if self._conn is not None:
            if self._held is None:  # a held message holds only its socket
                watch.append(self._conn.fileno())
            if self.device is not None:
                kicks = {r.kick_fd: r.index
                         for r in self.state.vrings.values()
                         if r.started and r.kick_fd is not None}
                watch.extend(kicks)
        elif self._listener is not None:
            watch.append(self._listener.fileno())
        return watch, kicks

    def _poll_timeout(self, kicks: bool) -> Optional[int]:
        """How long the poll may wait (ms; None: for ever): started rings
        are looked at for stalls twice a second, and a held message is
        let go at its fault's timeout."""
        timeout: Optional[int] = _STALL_POLL_MS if kicks else None
        if self._held is not None:
            left = max(0, int((self._held_until - time.monotonic()) * 1000)
                       + 1)
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _ready(self, fd: int, kicks: Dict[int, int]) -> None:
        """One fd the poll found readable."""
        session, conn = self._session, self._conn
        if fd == self._wake_r:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        elif (self._listener is not None and session is None
              and fd == self._listener.fileno()):
            conn = self._listener.accept(self.config.message_timeout)
            with self._cond:
                self._open(conn)
        elif (session is not None and conn is not None
              and fd == conn.fileno()):
            self._serve_one(session, conn)
        elif fd in kicks:
            self._kicked(fd, kicks[fd])

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

    # --- connections ----------------------------------------------------
    def _open(self, conn: Connection) -> None:
        self.connections += 1
        if self.on_connect is not None:
            try:
                self.on_connect(self.connections, self.config)
            except Exception:
                self.record_error("on_connect hook failed:\n"
                                  + traceback.format_exc())
        self.state = DeviceState(
            offered_features=self.config.features,
            offered_protocol_features=self.config.protocol_features,
            config=bytearray(self.config.config))
        self._session = Session(self.connections, self.state, self)
        self._conn = conn
        self.runstate = Runstate.CONNECTED
        self.trace.event(self.connections, Event.CONNECTED)
        self._notify()

    def _close_connection(self, cause: DisconnectCause, detail: str) -> None:
        with self._cond:
            session, self._session = self._session, None
            conn, self._conn = self._conn, None
            if session is None or conn is None:
                return
            held, self._held = self._held, None
            if held is not None:
                close_fds(held.fds)
                held.fault.release.wakers.remove(self._wake)
                if cause is DisconnectCause.STOPPED:
                    detail = ("back-end stopped while holding "
                              f"{held.request.name}")
            conn.close()
            session.handlers.stop_rings("disconnect")
            if self.device is not None:
                self.device.reset()
            self.state.close()
            if not self.stopping:
                self.runstate = Runstate.WAITING
            record = Disconnect(session.number, cause, detail)
            self.records.disconnected(record)
            self.trace.event(session.number, Event.DISCONNECTED, str(record))
            if self.reconnect_path is not None and not self.stopping:
                self._reconnect(self.reconnect_path)
            self._notify()

    def _reconnect(self, path: str) -> None:
        try:
            self._pending.append(connect(path, self.config.message_timeout))
        except OSError as exc:
            # QEMU is gone (or not listening): nothing to retry against.
            self.trace.event(self.connections, Event.RECONNECT_FAILED,
                             f"{path}: {exc}")

    def _serve_one(self, session: Session, conn: Connection) -> None:
        conn.message_timeout = self.config.message_timeout
        try:
            header, raw, fds = conn.recv()
        except ConnectionClosed as exc:
            if exc.partial:
                self.record_error(f"{exc} (message cut short)")
            self._close_connection(_cause(exc), str(exc))
            return
        except MalformedMessage as exc:
            # Framing is lost (oversized or truncated): nothing after this
            # can be trusted, so the connection goes.
            self.record_error(str(exc))
            self._close_connection(DisconnectCause.MALFORMED, str(exc))
            return
        with self._cond:
            self._carry_out(conn, session.handle(header, raw, fds,
                                                 conn.late_fds))
            self._notify()

    def _carry_out(self, conn: Connection, outcome: Outcome) -> None:
        """Write what the session answered, then close or hold as it says
        (call with the lock held)."""
        sends = list(outcome.sends)
        try:
            while sends:
                send = sends.pop(0)
                try:
                    conn.send(send.data, send.fds)
                finally:
                    if send.close_fds_after:
                        close_fds(send.fds)
        except ConnectionClosed as exc:  # while answering
            for send in sends:
                if send.close_fds_after:
                    close_fds(send.fds)
            self._close_connection(_cause(exc), str(exc))
            return
        if outcome.close is not None:
            self._close_connection(outcome.close.cause, outcome.close.detail)
        elif outcome.held is not None:
            self._held = outcome.held
            self._held_until = (time.monotonic()
                                + outcome.held.fault.hold_timeout)
            outcome.held.fault.release.wakers.append(self._wake)
            outcome.held.fault.reached.set()  # the test acts meanwhile

    def _resume_if_released(self) -> None:
        """Answer the held message once the test released it or its
        fault's time is up (call with the lock held)."""
        held, session, conn = self._held, self._session, self._conn
        if held is None or session is None or conn is None:
            return
        timed_out = time.monotonic() >= self._held_until
        if not (held.fault.release.is_set() or timed_out):
            return
        self._held = None
        held.fault.release.wakers.remove(self._wake)
        self._carry_out(conn, session.resume(
            held, timed_out and not held.fault.release.is_set()))
        self._notify()

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


def _cause(exc: ConnectionClosed) -> DisconnectCause:
    return (DisconnectCause.PEER_STUCK if isinstance(exc, PeerStuck)
            else DisconnectCause.PEER_CLOSED)
