"""
A conformance proxy: between a vhost-user front-end (QEMU) and any
back-end (DPDK, rust-vmm's vhost-device-*, virtiofsd, ...), on two UNIX
sockets.

Every message and fd passes through unchanged: memory tables, logs, kicks,
calls, the back-end's replies, and the back-end-initiated channel (the
socket of SET_BACKEND_REQ_FD is replaced by one end of a socketpair the
proxy relays).  Both directions are decoded into one :class:`Trace`:
``rx`` is front-end to back-end, ``tx`` back-end to front-end, ``chan-rx``
and ``chan-tx`` the back-end channel.  Only the protocol passes here: the
rings live in shared memory, so the data path never touches the proxy.

Both sides are judged:

* the front-end by the same conformance rules as the in-process back-end:
  a :class:`.judge.Judge` -- the protocol core, fed directly in the relay's
  thread -- gets a copy of every request, after the real back-end's
  answers to GET_FEATURES and friends have told it what to offer; its
  violations are the front-end's;
* the back-end by the reply rules of the spec: a reply for every request
  that needs one (REPLY_BODY, or NEED_REPLY with REPLY_ACK), with the
  REPLY flag and the version bits, the request's number and the payload
  size of its type, nothing unsolicited, GET_VRING_BASE naming the ring
  asked for and, for a ring that never started, the base it was given;
  on the back-end channel, only back-end requests.

A side that closes or crashes ends the pair: the other side's socket is
closed too (QEMU then sees a back-end disconnect), the event is recorded,
and the proxy waits for the next front-end connection.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time
from typing import (Callable, Deque, Dict, List, Optional, Set,
                    Tuple)

from .connection import (Connection, Listener, close_fds, connect)
from .error import (ConnectionClosed, MalformedMessage, ProtocolError,
                    WaitTimeout)
from .judge import OFFER_REQUESTS, Judge
from .message import (FLAG_NEED_REPLY, FLAG_REPLY, HEADER, REPLY_BODY,
                      VERSION, BackendRequest, Header, ProtocolFeature,
                      Request, VirtioFeature, VringState, decode_payload,
                      decode_reply, request_name)
from .conformance import FDS_WITH_THE_HEADER, FRONT_END_RULES
from .records import Problem, ProblemKind, Side
from .reply_rules import REPLY_RULES
from .trace import Event, Trace, TraceKind

__all__ = ["Proxy"]


#: request numbers a back-end may send on its channel
_BACKEND_REQUESTS = frozenset(int(r) for r in BackendRequest)


class _Pending:
    """A request the back-end owes an answer to."""

    __slots__ = ("request", "payload", "msgno")

    def __init__(self, request: Request, payload: object, msgno: int):
        self.request = request
        self.payload = payload
        self.msgno = msgno


class Proxy:
    """Relay and judge one front-end/back-end pair at a time.

    :param listen: where the front-end connects (QEMU's chardev path).
    :param backend: the back-end's socket (it listens there).
    """

    def __init__(self, listen: str, backend: str, name: str = "proxy",
                 message_timeout: float = 5.0, connect_timeout: float = 10.0):
        self.name = name
        self.trace = Trace(name)
        self._violations: List[Problem] = []
        #: one per front-end connection: the front-end's conformance
        self._judges: List[Judge] = []
        self.errors: List[Problem] = []
        self.connections = 0
        self.backend_path = backend
        self.message_timeout = message_timeout
        self.connect_timeout = connect_timeout
        self._listener = Listener(listen)
        self._lock = threading.Lock()
        #: notified after every relayed message (test waits)
        self._relayed = threading.Condition()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> "Proxy":
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"vhost-user-{self.name}")
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the relay; always returns."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._error(f"proxy thread did not stop within {timeout}s")
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    @property
    def violations(self) -> List[Problem]:
        """What either side did against the spec so far: the back-end's
        (reply rules), then the front-end's (the judges' conformance
        rules), each prefixed with its side."""
        with self._lock:
            own = list(self._violations)
            judges = list(self._judges)
        return own + [v for j in judges for v in list(j.violations)]

    def wait_for(self, predicate: Callable[[], bool], what: str,
                 timeout: float) -> None:
        """Until ``predicate()`` holds, re-checked after every relayed
        message, connection event and error.

        :raise WaitTimeout: not within ``timeout`` s; says what was seen.
        """
        with self._relayed:
            if not self._relayed.wait_for(predicate, timeout):
                raise WaitTimeout(
                    f"[{self.name}] timed out after {timeout}s waiting for "
                    f"{what}; {self.describe()}; last messages:\n"
                    f"{self.trace.tail(15)}")

    def wait_violations(self, count: int, timeout: float) -> None:
        """Until ``count`` violations in all were recorded (both sides are
        judged in the relay's thread, before the message is counted as
        relayed).

        :raise WaitTimeout: not within ``timeout`` s; says what was seen.
        """
        self.wait_for(lambda: len(self.violations) >= count,
                      f"{count} violation(s) through {self.name}", timeout)

    def describe(self) -> str:
        return (f"proxy {self.name}: {self.connections} connection(s), "
                f"{len(self.violations)} violation(s), "
                f"{len(self.errors)} error(s)")

    # --- records ------------------------------------------------------------
    def _violation(self, side: Side, rule: str, text: str) -> None:
        assert rule in REPLY_RULES or rule in FRONT_END_RULES, rule
        with self._lock:
            self._violations.append(Problem(
                ProblemKind.VIOLATION, text, self.connections, rule=rule,
                side=side))
        self.trace.add(self.connections, TraceKind.VIOLATION, side.value,
                       detail=text)

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(Problem(ProblemKind.ERROR, text,
                                       self.connections))
        self.trace.add(self.connections, TraceKind.ERROR, detail=text)
        self._changed()

    def _event(self, conn: int, event: Event, detail: str = "") -> None:
        """Trace a connection event and wake the waits: a test waits for
        a back-end to go as much as for a message."""
        self.trace.event(conn, event, detail)
        self._changed()

    def _changed(self) -> None:
        with self._relayed:
            self._relayed.notify_all()

    # --- the thread -----------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            ready, _, _ = select.select(
                [self._listener.fileno(), self._wake_r], [], [])
            if self._stopping:
                return
            if self._listener.fileno() in ready:
                try:
                    front = self._listener.accept(self.message_timeout)
                except OSError as exc:
                    self._error(f"accept failed: {exc}")
                    continue
                self.connections += 1
                try:
                    _Pair(self, front).relay()
                except Exception as exc:  # a bug here must be seen
                    self._error(f"proxy relay failed: {exc!r}")

    def _connect_backend(self) -> Connection:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                return connect(self.backend_path, self.message_timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                # The back-end may still be starting: wait for its socket
                # on the wake pipe (stop() interrupts), a short bounded beat.
                select.select([self._wake_r], [], [], 0.05)
                if self._stopping:
                    raise


class _Pair:
    """One front-end connection and its back-end connection."""

    def __init__(self, proxy: Proxy, front: Connection):
        self.proxy = proxy
        self.front = front
        self.cid = proxy.connections
        self.back: Optional[Connection] = None
        self.chan_front: Optional[Connection] = None
        self.chan_back: Optional[Connection] = None
        self.pending: Deque[_Pending] = collections.deque()
        self.msgno = 0
        self.reply_ack = False
        #: ring index -> the base the front-end set (SET_VRING_BASE) or the
        #: back-end last reported; rings kicked since (started)
        self.bases: Dict[int, int] = {}
        self.started: Set[int] = set()
        self.judge = Judge(f"{proxy.name}-judge", self.cid,
                           proxy.message_timeout)
        with proxy._lock:
            proxy._judges.append(self.judge)
        #: requests not yet judged: one that asks what the back-end offers
        #: waits for the back-end's answer, and those after it with it
        self.judge_queue: Deque[Tuple[Header, bytes, List[int],
                                      Optional[Request]]] = collections.deque()

    def relay(self) -> None:
        proxy = self.proxy
        proxy._event(self.cid, Event.FRONT_END_CONNECTED)
        try:
            self.back = self.proxy._connect_backend()
        except OSError as exc:
            self.proxy._error(f"cannot reach the back-end at "
                              f"{self.proxy.backend_path}: {exc}")
            self.front.close()
            self.judge.close()
            return
        proxy._event(self.cid, Event.BACK_END_CONNECTED)
        why = "stopped"
        try:
            why = self._loop()
        finally:
            proxy._event(self.cid, Event.DISCONNECTED, why)
            for conn in (self.front, self.back, self.chan_front,
                         self.chan_back):
                if conn is not None:
                    conn.close()
            for _, _, fds, _ in self.judge_queue:
                close_fds(fds)
            self.judge.close()

    def _loop(self) -> str:
        assert self.back is not None
        while not self.proxy._stopping:
            conns = {c.fileno(): c for c in (
                self.front, self.back, self.chan_front, self.chan_back)
                if c is not None}
            ready, _, _ = select.select(list(conns) + [self.proxy._wake_r],
                                        [], [])
            for fd in ready:
                if fd == self.proxy._wake_r:
                    continue
                conn = conns[fd]
                try:
                    header, raw, fds = conn.recv()
                except ConnectionClosed:
                    return ("the front-end closed" if conn is self.front else
                            "the back-end closed" if conn is self.back else
                            "a back-end channel end closed")
                except (MalformedMessage, ProtocolError, OSError) as exc:
                    side = (Side.FRONT_END if conn is self.front
                            else Side.BACK_END)
                    self.proxy._violation(side, "readable-message",
                                          f"unreadable message: {exc}")
                    return f"{side.value} sent an unreadable message"
                if conn is self.front and conn.late_fds:
                    self.proxy._violation(
                        Side.FRONT_END, FDS_WITH_THE_HEADER,
                        f"message {self.msgno + 1}: "
                        f"{conn.late_fds} fd(s) arrived after the first read"
                        " of the message (they should come with the "
                        "header's first byte)")
                try:
                    if conn is self.front:
                        self._from_front(header, raw, fds)
                    elif conn is self.back:
                        self._from_back(header, raw, fds)
                    else:
                        self._on_channel(conn, header, raw, fds)
                except ConnectionClosed as exc:
                    # the side this message was for has gone
                    return f"could not pass a message on: {exc}"
                self.proxy._changed()
        return "proxy stopped"

    # --- front-end -> back-end ------------------------------------------------
    def _from_front(self, header: Header, raw: bytes, fds: List[int]) -> None:
        assert self.back is not None
        self.msgno += 1
        try:
            req, payload = decode_payload(header.request, raw)
        except ProtocolError as exc:
            req, payload = None, None
            self.proxy._violation(Side.FRONT_END, "request-payload",
                                  f"message {self.msgno}: {exc}")
        name = req.name if req is not None else request_name(header.request)
        self.proxy.trace.add(self.cid, TraceKind.RX, name, header.flags,
                             header.size,
                             len(fds), payload if payload is not None else "")
        judge_fds = [os.dup(fd) for fd in fds]
        if req is Request.SET_BACKEND_REQ_FD and fds:
            # Relay the back-end channel: the back-end gets our end.
            ours, theirs = socket.socketpair(socket.AF_UNIX,
                                             socket.SOCK_STREAM)
            self.chan_front = Connection(socket.socket(fileno=fds[0]),
                                         self.proxy.message_timeout)
            self.chan_back = Connection(ours, self.proxy.message_timeout)
            fds = [theirs.detach()]
        if req is Request.SET_VRING_BASE and isinstance(payload, VringState):
            self.bases[payload.index] = payload.num
        if req is Request.SET_VRING_KICK and payload is not None:
            self.started.add(int(getattr(payload, "value", 0)) & 0xFF)
        if req is Request.SET_PROTOCOL_FEATURES and payload is not None:
            self.reply_ack = bool(getattr(payload, "value", 0)
                                  & ProtocolFeature.REPLY_ACK)
        needs = req is not None and (
            req in REPLY_BODY
            or (req is Request.SET_LOG_BASE and bool(fds))
            or (header.flags & FLAG_NEED_REPLY and self.reply_ack))
        if needs and req is not None:
            self.pending.append(_Pending(req, payload, self.msgno))
        try:
            self.back.send(HEADER.pack(header.request, header.flags,
                                       header.size) + raw, fds)
        finally:
            close_fds(fds)  # the receiver has its own copies now
        self.judge_queue.append((header, raw, judge_fds,
                                 req if req in OFFER_REQUESTS else None))
        self._feed_judge()

    def _feed_judge(self) -> None:
        """Feed queued requests to the judge in order; one that asks what
        the back-end offers waits until the back-end has answered."""
        while self.judge_queue:
            header, raw, fds, offer = self.judge_queue[0]
            if offer is not None and any(p.request is offer
                                         for p in self.pending):
                return
            self.judge_queue.popleft()
            # as sent: the flags are judged too (NEED_REPLY without
            # REPLY_ACK)
            self.judge.feed(header, raw, fds)

    # --- back-end -> front-end ------------------------------------------------
    def _from_back(self, header: Header, raw: bytes, fds: List[int]) -> None:
        self._judge_reply(header, raw, fds)
        try:
            self.front.send(HEADER.pack(header.request, header.flags,
                                        header.size) + raw, fds)
        finally:
            close_fds(fds)
        self._feed_judge()

    def _judge_reply(self, header: Header, raw: bytes,
                     fds: List[int]) -> None:
        proxy = self.proxy
        name = request_name(header.request)
        if not self.pending:
            proxy.trace.add(self.cid, TraceKind.TX, name, header.flags, header.size,
                            len(fds), raw[:32].hex())
            proxy._violation(Side.BACK_END, "reply-owed",
                             f"reply {name} to no request "
                             "that expects one")
            return
        want = self.pending.popleft()
        where = f"reply to message {want.msgno} {want.request.name}"
        payload: object = None
        try:
            payload = decode_reply(want.request, raw)
        except ProtocolError as exc:
            proxy._violation(Side.BACK_END, "reply-payload",
                             f"{where}: {exc}")
        proxy.trace.add(self.cid, TraceKind.TX, name, header.flags,
                        header.size, len(fds), payload if payload is not None
                        else raw[:32].hex())
        if header.request != want.request:
            proxy._violation(Side.BACK_END, "reply-names-request",
                             f"{where} names request {name}")
        if not header.flags & FLAG_REPLY:
            proxy._violation(Side.BACK_END, "reply-flag",
                             f"{where} lacks the REPLY flag "
                             f"(flags 0x{header.flags:x})")
        if header.version != VERSION:
            proxy._violation(Side.BACK_END, "reply-version",
                             f"{where} has version bits "
                             f"{header.version}, not {VERSION}")
        if want.request in OFFER_REQUESTS and payload is not None:
            self.judge.offer(want.request, int(getattr(payload, "value", 0)))
        if want.request is Request.GET_VRING_BASE and isinstance(
                payload, VringState) and isinstance(want.payload,
                                                    VringState):
            ring = want.payload.index
            if payload.index != ring:
                proxy._violation(Side.BACK_END,
                                 "vring-base-of-the-ring-asked",
                                 f"{where} names ring "
                                 f"{payload.index}, asked for ring {ring}")
            elif ring not in self.started and ring in self.bases \
                    and payload.num != self.bases[ring]:
                # a ring that never ran cannot have moved
                proxy._violation(
                    Side.BACK_END, "unstarted-ring-keeps-its-base",
                    f"{where}: ring {ring} never started since "
                    f"its base was {self.bases[ring]}, the reply says "
                    f"{payload.num}")
            elif ring in self.started:
                self._judge_stop_with_requests_taken(where, ring, payload.num)
            self.started.discard(ring)
            self.bases[ring] = payload.num

    def _judge_stop_with_requests_taken(self, where: str, ring: int,
                                        base: int) -> None:
        """A split ring stopped by GET_VRING_BASE must have every request
        it took completed -- its used index equals the base it reports --
        unless GET_VRING_BASE_INFLIGHT lets the back-end suspend them.

        The used index is read from guest memory through the judge's own
        mapping; a ring the judge cannot locate is not judged.
        """
        state = self.judge.state  # judged up to this reply's request
        vring = state.vrings.get(ring)
        if (vring is None or vring.addr is None
                or state.feature_acked(VirtioFeature.RING_PACKED)
                or state.protocol_negotiated(
                    ProtocolFeature.GET_VRING_BASE_INFLIGHT)):
            return
        try:
            gpa = state.memory.uva_to_gpa(vring.addr.used)
            used = int.from_bytes(state.memory.read(gpa + 2, 2), "little")
        except (LookupError, ValueError):
            return
        taken = (base - used) & 0xFFFF
        if taken:
            self.proxy._violation(
                Side.BACK_END, "stop-completes-inflight",
                f"{where}: ring {ring} stopped with {taken} "
                f"request(s) taken and not completed (base {base}, used idx "
                f"{used}); vhost-user: \"By default, the back-end must "
                "complete all inflight I/O requests for the specified vring "
                "before stopping it\"")

    # --- the back-end channel ---------------------------------------------------
    def _on_channel(self, conn: Connection, header: Header, raw: bytes,
                    fds: List[int]) -> None:
        to_front = conn is self.chan_back
        other = self.chan_front if to_front else self.chan_back
        kind = TraceKind.CHAN_TX if to_front else TraceKind.CHAN_RX
        if (to_front and not header.flags & FLAG_REPLY
                and header.request not in _BACKEND_REQUESTS):
            self.proxy._violation(
                Side.BACK_END, "channel-requests-known",
                f"unknown request {header.request} on the back-end channel")
        name = request_name(header.request, BackendRequest)
        self.proxy.trace.add(self.cid, kind, name, header.flags, header.size,
                             len(fds), raw[:32].hex())
        assert other is not None
        try:
            other.send(HEADER.pack(header.request, header.flags,
                                   header.size) + raw, fds)
        finally:
            close_fds(fds)
