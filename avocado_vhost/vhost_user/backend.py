"""
A vhost-user back-end that runs as a thread inside a test.

The thread owns one socket at a time (accepted in listen mode, or handed
over by :meth:`VhostUserBackend.connect` in connect mode) and answers every
front-end request of the spec: each request is decoded
(:mod:`.message`), checked for conformance (:mod:`.conformance`), applied to
the device state (:mod:`.state`), answered, and recorded in the trace
(:mod:`.trace`).  The test thread never touches the socket; it reads the
state and blocks on conditions with :meth:`VhostUserBackend.wait_for` and its
named variants, each bounded and each reporting what it saw on timeout.

What goes wrong goes into the record, never into a silent thread death:

* malformed input (bad header, size, fd count, unmappable region) is an
  *error*: the offending fds are closed and the connection is kept when the
  framing is intact, dropped when it is not or when the front-end would be
  left waiting for an answer that cannot be given;
* a request that is legal but not implemented here is *refused*: with a
  non-zero REPLY_ACK when the front-end asked for an ack, otherwise by
  closing the connection, as the spec allows;
* the front-end breaking a rule is a *violation*;
* a bug in this code is an *error* too, with its traceback.

:meth:`VhostUserBackend.check` raises :class:`.BackendFailure` with the trace
around the first error, and the Avocado harness calls it after every test.

Faults are scripted with :class:`Fault`: drop the connection at the Nth
message or at a named request, answer with other bytes, or hold an answer
until the test releases it.
"""

from __future__ import annotations

import os
import select
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Callable, Dict, List, NoReturn, Optional,
                    Sequence, Tuple)

from .connection import Connection, Listener, close_fds, signal_eventfd
from .conformance import check as conformance_check
from .error import (BackendFailure, ConnectionClosed, FdCountError,
                    MalformedMessage, ProtocolError, UnknownRequest,
                    WaitTimeout)
from .memory import DirtyLog
from .message import (FLAG_REPLY, VERSION,
                      VRING_IDX_MASK, VRING_NOFD_FLAG, ConfigSpace,
                      Header, InflightDescription, LogDescription,
                      MemoryTable, Payload, ProtocolFeature, Request,
                      SingleRegion, U64, VirtioFeature, VringAddr, VringState,
                      decode_payload, encode, fd_rule, feature_names)
from .state import DeviceState, Vring

if TYPE_CHECKING:
    from .net import NetDevice

__all__ = ["BackendConfig", "Fault", "VhostUserBackend", "RingEvent",
           "REPLY_BODY", "NET_FEATURES", "NET_PROTOCOL_FEATURES"]

#: Requests that are always answered with a reply body.
REPLY_BODY = frozenset({
    Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
    Request.GET_VRING_BASE, Request.GET_QUEUE_NUM, Request.GET_CONFIG,
    Request.GET_MAX_MEM_SLOTS, Request.GET_INFLIGHT_FD,
    Request.POSTCOPY_ADVISE, Request.POSTCOPY_END, Request.GET_STATUS,
    Request.GET_SHARED_OBJECT, Request.IOTLB_MSG,
    Request.SET_DEVICE_STATE_FD, Request.CHECK_DEVICE_STATE,
})

#: What a virtio-net back-end offers by default: enough for QEMU to start
#: the device and to migrate it (LOG_ALL + LOG_SHMFD).
NET_FEATURES = (VirtioFeature.VERSION_1 | VirtioFeature.LOG_ALL
                | VirtioFeature.PROTOCOL_FEATURES
                | VirtioFeature.NOTIFY_ON_EMPTY)
NET_PROTOCOL_FEATURES = (ProtocolFeature.LOG_SHMFD | ProtocolFeature.MQ
                         | ProtocolFeature.REPLY_ACK)

RingEvent = Callable[["VhostUserBackend", Vring, str], None]


@dataclass
class BackendConfig:
    """What the back-end offers; a test may change it between connections.

    :param features: virtio feature bits returned by GET_FEATURES.
    :param protocol_features: returned by GET_PROTOCOL_FEATURES.
    :param queue_num: GET_QUEUE_NUM answer (queue *pairs* for net).
    :param max_rings: highest ring index + 1 accepted (0: no check).
    :param max_mem_slots: GET_MAX_MEM_SLOTS answer.
    :param config: device config space served by GET/SET_CONFIG.
    :param message_timeout: bound on the arrival of a started message.
    """

    features: int = int(NET_FEATURES)
    protocol_features: int = int(NET_PROTOCOL_FEATURES)
    queue_num: int = 1
    max_rings: int = 0
    max_mem_slots: int = 32
    config: bytes = b""
    message_timeout: float = 5.0


#: What a :class:`Fault` can do.
FAULT_ACTIONS = frozenset({"disconnect", "disconnect-after", "reply", "hold"})


@dataclass
class Fault:
    """A scripted deviation from correct behaviour.

    :param action: ``"disconnect"`` (before handling the message),
        ``"disconnect-after"`` (after answering it), ``"reply"`` (send
        ``reply_bytes(message)`` instead of the right answer) or ``"hold"``
        (do not answer until ``release`` is set, or ``hold_timeout``).
    :param request: match this request ...
    :param nth: ... or the Nth message (1-based) of a connection ...
    :param match: ... or any message for which this returns True.
    :param connection: only on this connection number (1-based).
    :param times: how many times the fault fires (0 = every time).
    """

    action: str
    request: Optional[Request] = None
    nth: Optional[int] = None
    match: Optional[Callable[[Request, Payload], bool]] = None
    connection: Optional[int] = None
    times: int = 1
    reply_bytes: Optional[Callable[[Request, Payload], bytes]] = None
    release: threading.Event = field(default_factory=threading.Event)
    #: Set when a ``hold`` fault starts holding (the test may act then).
    reached: threading.Event = field(default_factory=threading.Event)
    hold_timeout: float = 30.0
    fired: int = 0

    def __post_init__(self) -> None:
        # A misspelt action would otherwise never fire, silently.
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"fault action {self.action!r}: valid are "
                             f"{', '.join(sorted(FAULT_ACTIONS))}")
        if self.action == "reply" and self.reply_bytes is None:
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


#: How often the thread looks for stalled rings while rings are started.
_STALL_POLL_MS = 500


class _Refused(Exception):
    """Raised by a handler for a legal request this back-end does not do."""


class _Disconnect(Exception):
    """Internal: drop the current connection."""


class VhostUserBackend:
    """The back-end thread and everything it recorded.

    :param name: used in the trace and in error messages (``src``, ``dst``).
    :param config: what to offer; ``BackendConfig()`` suits virtio-net.
    """

    def __init__(self, name: str = "backend",
                 config: Optional[BackendConfig] = None,
                 device: Optional["NetDevice"] = None):
        from .trace import Trace  # local: keeps the import graph a tree
        self.name = name
        self.config = config or BackendConfig()
        self.trace = Trace(name)
        self.state = DeviceState()
        self.errors: List[str] = []
        self.violations: List[str] = []
        self.refused: List[str] = []
        self.faults: List[Fault] = []
        self.ring_listeners: List[RingEvent] = []
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
        #: The data path (None: rings are configured but never processed).
        self.device = device
        if device is not None:
            device.attach(self)
        self._work = False
        self._waiters = 0
        self.connections = 0
        #: Why each connection ended, by connection number.
        self.disconnect_reasons: Dict[int, str] = {}
        self.connected = False
        self.messages = 0
        self._cond = threading.Condition(threading.RLock())
        self._listener: Optional[Listener] = None
        self._conn: Optional[Connection] = None
        self._pending: List[Connection] = []
        self._drop_requested = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        # Each handler takes (header, its own payload type, fds).
        self._handlers: Dict[Request, Callable[..., Optional[Payload]]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset_owner,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.ADD_MEM_REG: self._add_mem_reg,
            Request.REM_MEM_REG: self._rem_mem_reg,
            Request.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            Request.SET_LOG_BASE: self._set_log_base,
            Request.SET_LOG_FD: self._set_log_fd,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.VRING_KICK: self._vring_kick,
            Request.SET_VRING_ENDIAN: self._set_vring_endian,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.SEND_RARP: self._send_rarp,
            Request.NET_SET_MTU: self._net_set_mtu,
            Request.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            Request.IOTLB_MSG: self._iotlb_msg,
            Request.GET_CONFIG: self._get_config,
            Request.SET_CONFIG: self._set_config,
            Request.GET_INFLIGHT_FD: self._get_inflight_fd,
            Request.SET_INFLIGHT_FD: self._set_inflight_fd,
            Request.RESET_DEVICE: self._reset_device,
            Request.SET_STATUS: self._set_status,
            Request.GET_STATUS: self._get_status,
        }

    # --- lifecycle ------------------------------------------------------
    def listen(self, path: str) -> None:
        """Bind ``path`` now (before QEMU starts); accept from the thread."""
        self._listener = Listener(path)

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
        from .connection import connect
        self.adopt(connect(path, self.config.message_timeout))

    def adopt(self, conn: Connection) -> None:
        """Serve an already connected socket (unit tests, socketpairs).

        Served once the current connection, if any, has ended.
        """
        with self._cond:
            self._pending.append(conn)
        self._wake()

    def start(self) -> "VhostUserBackend":
        self._thread = threading.Thread(target=self._run,
                                        name=f"vhost-user-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and release every fd, mapping and socket.

        Works while QEMU waits for an answer: the socket is closed and QEMU
        sees the back-end disconnect.
        """
        with self._cond:
            self._stopping = True
            for fault in self.faults:  # a held answer must not delay this
                fault.release.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._record_error(f"back-end thread did not stop within "
                                   f"{timeout}s")
        self._close_connection("back-end stopped")
        with self._cond:
            pending, self._pending = self._pending, []
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

    def __enter__(self) -> "VhostUserBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def disconnect(self) -> None:
        """Drop the current connection from the back-end's side."""
        with self._cond:
            self._drop_requested = True
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
                    if self._stopping:
                        return
                    if self._drop_requested:
                        self._drop_requested = False
                        if self._conn is not None:
                            self._close_connection("dropped by the test")
                    if self._conn is None and self._pending:
                        self._open(self._pending.pop(0))
                    if self._work and self.device is not None:
                        self._work = False
                        self.device.process_all()
                    watch = [self._wake_r]
                    kicks: Dict[int, int] = {}
                    if self._conn is not None:
                        watch.append(self._conn.fileno())
                        if self.device is not None:
                            kicks = {r.kick_fd: r.index
                                     for r in self.state.vrings.values()
                                     if r.started and r.kick_fd is not None}
                            watch.extend(kicks)
                    elif self._listener is not None:
                        watch.append(self._listener.fileno())
                if watch != registered:
                    for fd in registered:
                        poller.unregister(fd)
                    for fd in watch:
                        poller.register(fd, select.POLLIN)
                    registered = watch
                # Started rings are watched for stalls twice a second.
                events = poller.poll(_STALL_POLL_MS if kicks else None)
                for fd, _ in events:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    elif (self._listener is not None and self._conn is None
                          and fd == self._listener.fileno()):
                        conn = self._listener.accept(
                            self.config.message_timeout)
                        with self._cond:
                            self._open(conn)
                    elif self._conn is not None and fd == self._conn.fileno():
                        self._serve_one()
                    elif fd in kicks:
                        self._kicked(fd, kicks[fd])
                # after the kicks that were waiting: those are progress
                if kicks and self.device is not None:
                    now = time.monotonic()
                    if now >= next_stall_check:
                        next_stall_check = now + _STALL_POLL_MS / 1000
                        with self._cond:
                            self.device.check_stalls(now)
                            self._notify()
        except BaseException:  # a bug here must reach the test
            self._record_error("back-end thread crashed:\n"
                               + traceback.format_exc())
        finally:
            with self._cond:
                self._notify()

    def _kicked(self, fd: int, index: int) -> None:
        try:
            os.eventfd_read(fd)
        except (BlockingIOError, OSError):
            pass  # consumed already, or replaced by a newer kick fd
        with self._cond:
            ring = self.state.vrings.get(index)
            if (self.device is not None and ring is not None
                    and ring.started and ring.kick_fd == fd):
                self.device.process(ring)
            self._notify()

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

    def _open(self, conn: Connection) -> None:
        self.connections += 1
        self.connected = True
        self.messages = 0
        if self.on_connect is not None:
            try:
                self.on_connect(self.connections, self.config)
            except Exception:
                self._record_error("on_connect hook failed:\n"
                                   + traceback.format_exc())
        self.state = DeviceState(
            offered_features=self.config.features,
            offered_protocol_features=self.config.protocol_features,
            config=bytearray(self.config.config))
        self._conn = conn
        self.trace.add(self.connections, "event", "CONNECTED")
        self._notify()

    def _close_connection(self, why: str) -> None:
        with self._cond:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            conn.close()
            for ring in self.state.vrings.values():
                if ring.started:
                    self._ring_stopped(ring, why="disconnect")
            if self.device is not None:
                self.device.reset()
            self.state.close()
            self.connected = False
            self.disconnect_reasons[self.connections] = why
            self.trace.add(self.connections, "event", "DISCONNECTED", detail=why)
            if self.reconnect_path is not None and not self._stopping:
                self._reconnect(self.reconnect_path)
            self._notify()

    def _reconnect(self, path: str) -> None:
        from .connection import connect
        try:
            self._pending.append(connect(path, self.config.message_timeout))
        except OSError as exc:
            # QEMU is gone (or not listening): nothing to retry against.
            self.trace.add(self.connections, "event", "RECONNECT-FAILED",
                           detail=f"{path}: {exc}")

    # --- one message ----------------------------------------------------
    def _serve_one(self) -> None:
        conn = self._conn
        assert conn is not None
        conn.message_timeout = self.config.message_timeout
        try:
            header, raw, fds = conn.recv()
        except ConnectionClosed as exc:
            if exc.partial:
                self._record_error(f"{exc} (message cut short)")
            self._close_connection(str(exc))
            return
        except MalformedMessage as exc:
            # Framing is lost (oversized or truncated): nothing after this
            # can be trusted, so the connection goes.
            self._record_error(str(exc))
            self._close_connection(f"malformed message: {exc}")
            return
        with self._cond:
            self.messages += 1
            msgno = self.messages
            try:
                self._dispatch(conn, header, raw, fds, msgno)
            except _Disconnect as exc:
                self._close_connection(str(exc))
            except ConnectionClosed as exc:
                self._close_connection(str(exc))
            self._notify()

    def _dispatch(self, conn: Connection, header: Header, raw: bytes,
                  fds: List[int], msgno: int) -> None:
        cid = self.connections
        try:
            req, payload = self._decode(header, raw, fds)
        except ProtocolError as exc:
            close_fds(fds)
            self.trace.add(cid, "rx", _request_name(header.request),
                           header.flags, header.size, len(fds),
                           f"raw={raw[:64].hex()}")
            self._record_error(f"message {msgno}: {exc}")
            self._after_bad_message(conn, header, exc)
            return
        self.trace.add(cid, "rx", req.name, header.flags, header.size,
                       len(fds), payload)
        for violation in conformance_check(req, payload, header, self.state,
                                           self.config.max_rings):
            self._record_violation(f"message {msgno} {req.name}: {violation}")

        fault = self._fault_for(cid, msgno, req, payload)
        if fault is not None and fault.action == "disconnect":
            close_fds(fds)
            raise _Disconnect(f"fault: disconnect at message {msgno} "
                              f"({req.name})")
        if fault is not None and fault.action == "hold":
            fault.reached.set()
            self._cond.release()
            try:
                released = fault.release.wait(fault.hold_timeout)
            finally:
                self._cond.acquire()
            if not released:
                self.trace.add(cid, "event", "HOLD-TIMEOUT",
                               detail=f"{req.name} held {fault.hold_timeout}s")
            if self._stopping:
                close_fds(fds)
                raise _Disconnect(f"back-end stopped while holding the "
                                  f"answer to {req.name}")

        try:
            reply = self._handlers.get(req, self._refuse)(header, payload,
                                                          fds)
            status = 0
        except _Refused as exc:
            self._record_refusal(cid, req, str(exc))
            if header.need_reply and self.state.protocol_negotiated(
                    ProtocolFeature.REPLY_ACK):
                self._send(conn, req, U64(1), flags_extra=0)
                return
            raise _Disconnect(f"refused {req.name}: {exc}")
        except ProtocolError as exc:
            self._record_error(f"message {msgno} {req.name}: {exc}")
            status, reply = 1, None
            if req in REPLY_BODY and not header.need_reply:
                raise _Disconnect(f"cannot answer {req.name}: {exc}")

        if fault is not None and fault.action == "reply":
            assert fault.reply_bytes is not None
            data = fault.reply_bytes(req, payload)
            self.trace.add(cid, "tx", req.name, 0, len(data), 0,
                           f"fault reply {data.hex()}")
            conn.send(data)
        elif reply is not None:
            self._send(conn, req, reply)
        elif header.need_reply and self.state.protocol_negotiated(
                ProtocolFeature.REPLY_ACK):
            self._send(conn, req, U64(status))
        if fault is not None and fault.action == "disconnect-after":
            raise _Disconnect(f"fault: disconnect after message {msgno} "
                              f"({req.name})")

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

    def _after_bad_message(self, conn: Connection, header: Header,
                           exc: ProtocolError) -> None:
        if isinstance(exc, UnknownRequest):
            raise _Disconnect(f"unknown request {header.request}")
        try:
            req = Request(header.request)
        except ValueError:
            raise _Disconnect(str(exc)) from None
        if header.need_reply and self.state.protocol_negotiated(
                ProtocolFeature.REPLY_ACK):
            self._send(conn, req, U64(1))
        elif req in REPLY_BODY:
            raise _Disconnect(f"cannot answer malformed {req.name}")

    def _send(self, conn: Connection, req: Request, payload: Payload,
              fds: Sequence[int] = (), flags_extra: int = 0) -> None:
        data = encode(req, payload, VERSION | FLAG_REPLY | flags_extra)
        # Traced first: once sent, the peer (and the test) may act on it.
        self.trace.add(self.connections, "tx", req.name,
                       VERSION | FLAG_REPLY, len(data) - 12, len(fds),
                       payload)
        conn.send(data, fds)

    def _fault_for(self, cid: int, msgno: int, req: Request,
                   payload: Payload) -> Optional[Fault]:
        for fault in self.faults:
            if fault.matches(cid, msgno, req, payload):
                fault.fired += 1
                self.trace.add(cid, "event", "FAULT",
                               detail=f"{fault.action} at message {msgno} "
                                      f"{req.name}")
                return fault
        return None

    # --- records --------------------------------------------------------
    def _record_error(self, text: str) -> None:
        with self._cond:
            self.errors.append(text)
            self.trace.add(self.connections, "error", detail=text)
            self._notify()

    def record_error(self, text: str) -> None:
        """For the hosted device (:class:`.device.DeviceHost`): record an
        error of the data path; the back-end's lock is held."""
        self._record_error(text)

    def _record_violation(self, text: str) -> None:
        self.violations.append(text)
        self.trace.add(self.connections, "violation", detail=text)

    def _record_refusal(self, cid: int, req: Request, why: str) -> None:
        self.refused.append(f"{req.name}: {why}")
        self.trace.add(cid, "refused", req.name, detail=why)

    # --- ring state -----------------------------------------------------
    def _ring_started(self, ring: Vring) -> None:
        if ring.started:
            return
        ring.started = True
        ring.starts += 1
        self.trace.add(self.connections, "event", "RING-STARTED",
                       detail=ring.describe())
        self._notify_ring(ring, "started")
        if self.device is not None:
            if ring.kick_fd is not None:
                os.set_blocking(ring.kick_fd, False)
            self.device.ring_started(ring)

    def _ring_stopped(self, ring: Vring, why: str = "GET_VRING_BASE") -> None:
        if not ring.started:
            return
        ring.started = False
        ring.stops += 1
        if self.device is not None:
            self.device.ring_stopped(ring)
        self.trace.add(self.connections, "event", "RING-STOPPED",
                       detail=f"{ring.describe()} ({why})")
        self._notify_ring(ring, "stopped")

    def _notify_ring(self, ring: Vring, event: str) -> None:
        for listener in list(self.ring_listeners):
            try:
                listener(self, ring, event)
            except Exception:  # a listener's bug must not kill the thread
                self._record_error("ring listener failed:\n"
                                   + traceback.format_exc())

    # --- handlers -------------------------------------------------------
    # Each takes (header, payload, fds) and returns a reply payload or None.
    # Fds handed to a handler are owned by it (stored or closed).

    def _refuse(self, header: Header, payload: Payload,
                fds: List[int]) -> NoReturn:
        close_fds(fds)
        raise _Refused("not implemented by this back-end")

    def _get_features(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        self.state.get_features_seen = True
        return U64(self.state.offered_features)

    def _set_features(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        old = self.state.acked_features
        self.state.acked_features = payload.value
        if not payload.value & VirtioFeature.PROTOCOL_FEATURES:
            # Spec: without protocol features every ring is enabled at once.
            for ring in self.state.vrings.values():
                ring.enabled = True
        if old is not None and (old ^ payload.value) & VirtioFeature.LOG_ALL:
            self.trace.add(self.connections, "event", "LOG-ALL",
                           detail="on" if payload.value
                           & VirtioFeature.LOG_ALL else "off")
        return None

    def _get_protocol_features(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        return U64(self.state.offered_protocol_features)

    def _set_protocol_features(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        value = payload.value
        self.state.acked_protocol_features = value
        need = ProtocolFeature.BACKEND_REQ | ProtocolFeature.REPLY_ACK
        if value & ProtocolFeature.INBAND_NOTIFICATIONS and value & need != need:
            raise _Disconnect("INBAND_NOTIFICATIONS without BACKEND_REQ and "
                              "REPLY_ACK: the spec says to close")
        return None

    def _set_owner(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        self.state.owner = True
        return None

    def _reset_owner(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        self._reset_rings()
        self.state.owner = False
        return None

    def _reset_rings(self) -> None:
        for ring in self.state.vrings.values():
            self._ring_stopped(ring, why="reset")
            ring.close_fds()
        self.state.vrings.clear()

    def _set_mem_table(self, header: Header, payload: MemoryTable,
                fds: List[int]) -> Optional[Payload]:
        mem = self.state.memory
        mem.clear()
        try:
            for i, (region, fd) in enumerate(zip(payload.regions, fds)):
                try:
                    mem.add(region, fd)
                except MalformedMessage:
                    close_fds(fds[i + 1:])
                    mem.clear()
                    raise
        finally:
            # Also when the table was refused: started rings must not keep
            # pointing into the mappings just closed.
            self._memory_changed()
        return None

    def _memory_changed(self) -> None:
        if self.device is not None:
            self.device.memory_changed()

    def _add_mem_reg(self, header: Header, payload: SingleRegion,
                fds: List[int]) -> Optional[Payload]:
        if len(self.state.memory) >= self.config.max_mem_slots:
            close_fds(fds)
            raise MalformedMessage(
                f"ADD_MEM_REG beyond the {self.config.max_mem_slots} slots "
                "offered")
        self.state.memory.add(payload.region, fds[0])
        self._memory_changed()
        return None

    def _rem_mem_reg(self, header: Header, payload: SingleRegion,
                fds: List[int]) -> Optional[Payload]:
        close_fds(fds)
        if not self.state.memory.remove(payload.region):
            raise MalformedMessage(
                f"REM_MEM_REG of a region not mapped: {payload.region}")
        self._memory_changed()
        return None

    def _get_max_mem_slots(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        return U64(self.config.max_mem_slots)

    def _set_log_base(self, header: Header, payload: LogDescription,
                fds: List[int]) -> Optional[Payload]:
        if not fds:
            raise MalformedMessage("SET_LOG_BASE without a log fd "
                                   "(LOG_SHMFD needs one)")
        if self.state.log is not None:
            self.state.log.close()
            self.state.log = None
        self.state.log = DirtyLog(fds[0], payload.size, payload.offset)
        self.trace.add(self.connections, "event", "LOG-BASE",
                       detail=f"{payload.size} bytes at offset "
                              f"{payload.offset}")
        # QEMU blocks until this reply when LOG_SHMFD is negotiated.
        return U64(0)

    def _set_log_fd(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        close_fds([self.state.log_fd] if self.state.log_fd is not None else [])
        self.state.log_fd = fds[0]
        return None

    def _set_vring_num(self, header: Header, payload: VringState,
                fds: List[int]) -> Optional[Payload]:
        self._vring(payload.index).num = payload.num
        return None

    def _set_vring_addr(self, header: Header, payload: VringAddr,
                fds: List[int]) -> Optional[Payload]:
        self._vring(payload.index).addr = payload
        return None

    def _set_vring_base(self, header: Header, payload: VringState,
                fds: List[int]) -> Optional[Payload]:
        self._vring(payload.index).base = payload.num
        return None

    def _get_vring_base(self, header: Header, payload: VringState,
                fds: List[int]) -> Optional[Payload]:
        ring = self._vring(payload.index)
        if self.device is not None and ring.started:
            self.device.ring_stopped(ring)  # the base is where it stopped
        ring.reported_base = (ring.base if self.vring_base_override is None
                              else self.vring_base_override)
        self._ring_stopped(ring)
        close_fds([ring.kick_fd] if ring.kick_fd is not None else [])
        ring.kick_fd = None
        return VringState(payload.index, ring.reported_base)

    def _vring(self, index: int) -> Vring:
        """The ring a request names, created on first use -- but only up to
        the device's ring count (``max_rings``, else QEMU's VIRTIO_QUEUE_MAX
        of 1024): an index is the front-end's word, and a ring per u32
        would let it grow the back-end without bound."""
        limit = self.config.max_rings or MAX_RINGS
        if index >= limit:
            raise ProtocolError(f"ring index {index} is beyond the {limit} "
                                "rings of this device")
        return self.state.vring(index)

    def _ring_fd(self, payload: U64, fds: List[int], attr: str) -> Vring:
        try:
            ring = self._vring(payload.value & VRING_IDX_MASK)
        except ProtocolError:
            close_fds(fds)
            raise
        if fds and not _is_eventfd(fds[0]):
            kind = _fd_kind(fds[0])
            close_fds(fds)
            raise ProtocolError(
                f"{attr[:-3]} fd of ring {ring.index} is {kind}, not an "
                "eventfd (vhost-user: \"the file descriptor for the "
                "kick/call/err is passed as ancillary data ... an eventfd\")")
        if fds:
            # Never block on the front-end's eventfd: a drained kick fd
            # would hang the read, a call counter at its maximum the write.
            # (QEMU's own eventfds are non-blocking already.)
            os.set_blocking(fds[0], False)
        old = getattr(ring, attr)
        if old is not None:
            close_fds([old])
        setattr(ring, attr, fds[0] if fds else None)
        return ring

    def _set_vring_kick(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        ring = self._ring_fd(payload, fds, "kick_fd")
        ring.polling = bool(payload.value & VRING_NOFD_FLAG)
        self._ring_started(ring)
        return None

    def _set_vring_call(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        self._ring_fd(payload, fds, "call_fd")
        return None

    def _set_vring_err(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        self._ring_fd(payload, fds, "err_fd")
        return None

    def _set_vring_enable(self, header: Header, payload: VringState,
                fds: List[int]) -> Optional[Payload]:
        ring = self._vring(payload.index)
        ring.enabled = bool(payload.num)
        self._notify_ring(ring, "enabled" if ring.enabled else "disabled")
        return None

    def _vring_kick(self, header: Header, payload: VringState,
                fds: List[int]) -> Optional[Payload]:
        self._ring_started(self._vring(payload.index))
        return None

    def _set_vring_endian(self, header: Header, payload: VringState,
                fds: List[int]) -> Optional[Payload]:
        self._vring(payload.index).big_endian = bool(payload.num)
        return None

    def _get_queue_num(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        return U64(self.config.queue_num)

    def _send_rarp(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        self.state.rarp.append(payload.value)
        return None

    def _net_set_mtu(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        self.state.mtu = payload.value
        return None

    def _set_backend_req_fd(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        close_fds([self.state.backend_req_fd]
                  if self.state.backend_req_fd is not None else [])
        self.state.backend_req_fd = fds[0]
        return None

    def _iotlb_msg(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        self.state.iotlb.append(payload)
        return U64(0)

    def _get_config(self, header: Header, payload: ConfigSpace,
                fds: List[int]) -> Optional[Payload]:
        cfg = self.state.config
        if payload.offset + payload.size > len(cfg):
            # Spec: a reply of size 0 (no config) reports the error.
            self._record_error(
                f"GET_CONFIG {payload.offset}+{payload.size} beyond the "
                f"{len(cfg)}-byte config space")
            return ConfigSpace(payload.offset, 0, payload.flags)
        data = bytes(cfg[payload.offset:payload.offset + payload.size])
        return ConfigSpace(payload.offset, payload.size, payload.flags, data)

    def _set_config(self, header: Header, payload: ConfigSpace,
                fds: List[int]) -> Optional[Payload]:
        end = payload.offset + payload.size
        if end > len(self.state.config):
            raise MalformedMessage(f"SET_CONFIG {payload.offset}+"
                                   f"{payload.size} beyond the config space")
        self.state.config[payload.offset:end] = payload.data
        return None

    def _get_inflight_fd(self, header: Header, payload: InflightDescription,
                fds: List[int]) -> Optional[Payload]:
        # Answering needs a shared buffer sized per the spec's inflight
        # layout; this back-end does not track inflight I/O.
        raise _Refused("inflight I/O tracking is not implemented")

    def _set_inflight_fd(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        close_fds([self.state.inflight_fd]
                  if self.state.inflight_fd is not None else [])
        self.state.inflight_fd = fds[0]
        return None

    def _reset_device(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        self._reset_rings()
        self.state.acked_features = None
        self.state.status = 0
        return None

    def _set_status(self, header: Header, payload: U64,
                fds: List[int]) -> Optional[Payload]:
        self.state.status = payload.value
        return None

    def _get_status(self, header: Header, payload: Payload,
                fds: List[int]) -> Optional[Payload]:
        return U64(self.state.status)

    # --- what tests use -------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], what: str,
                 timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds (evaluated under the lock).

        :raise WaitTimeout: after ``timeout`` seconds, naming ``what`` and
            the state seen.
        :raise BackendFailure: the back-end recorded an error meanwhile.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            errors_before = len(self.errors)
            while not predicate():
                if len(self.errors) > errors_before:
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
                     timeout: float = 10.0) -> None:
        self.wait_for(
            lambda: len(self.trace.select("rx", request.name)) >= count,
            f"{count} x {request.name}", timeout)

    def describe(self) -> str:
        """One paragraph of state, for timeouts and failures."""
        with self._cond:
            s = self.state
            rings = "; ".join(r.describe() for r in sorted(
                s.vrings.values(), key=lambda r: r.index)) or "no rings"
            acked = ("none" if s.acked_features is None else
                     feature_names(s.acked_features, VirtioFeature))
            return (f"connections={self.connections} "
                    f"connected={self.connected} messages={self.messages} "
                    f"features acked={acked} "
                    f"memory regions={len(s.memory)} "
                    f"log={'yes' if s.log else 'no'} {rings}; "
                    f"errors={len(self.errors)} "
                    f"violations={len(self.violations)}"
                    + (f" stalls={len(self.device.stalls)}"
                       if self.device is not None and self.device.stalls
                       else ""))

    def _failure_text(self, context: str) -> str:
        return (f"[{self.name}] back-end errors {context}:\n  - "
                + "\n  - ".join(self.errors)
                + f"\ntrace (last 30):\n{self.trace.tail(30)}")

    def check(self, allow_violations: bool = False) -> None:
        """Raise :class:`BackendFailure` if anything went wrong.

        :param allow_violations: do not fail on conformance violations (a
            scenario that provokes them checks them itself).
        """
        with self._cond:
            if self.errors:
                raise BackendFailure(self._failure_text("recorded"))
            stalls = self.device.stalls if self.device is not None else []
            if stalls:
                raise BackendFailure(
                    f"[{self.name}] stalled rings:\n  - "
                    + "\n  - ".join(map(str, stalls))
                    + f"\ntrace (last 30):\n{self.trace.tail(30)}")
            if self.violations and not allow_violations:
                raise BackendFailure(
                    f"[{self.name}] conformance violations:\n  - "
                    + "\n  - ".join(self.violations)
                    + f"\ntrace (last 30):\n{self.trace.tail(30)}")

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
            signal_eventfd(ring.call_fd)
            self.trace.add(self.connections, "event", "CALL",
                           detail=f"ring {index} signalled by the test")

    def mark_dirty(self, gpa: int, length: int = 1) -> None:
        """Set the dirty-log bits of ``[gpa, gpa+length)``."""
        with self._cond:
            if self.state.log is None:
                raise BackendFailure(f"[{self.name}] no dirty log to mark: "
                                     "SET_LOG_BASE not received")
            self.state.log.mark(gpa, length)


#: QEMU's VIRTIO_QUEUE_MAX: no device has more rings
MAX_RINGS = 1024


def _fd_kind(fd: int) -> str:
    """What a file descriptor is, as /proc names it."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def _is_eventfd(fd: int) -> bool:
    return _fd_kind(fd) == "anon_inode:[eventfd]"


def _request_name(number: int) -> str:
    try:
        return Request(number).name
    except ValueError:
        return f"UNKNOWN({number})"
