"""
The back-end's thread: one poll loop over its wake-up pipe, the listening
socket or the current connection, and the kick eventfds of started rings.

:class:`Server` owns the thread, the sockets and the
:class:`.conversation.Conversation` of the connection being served; it
knows nothing of devices or records.  What a connection means is the
subclass's (:class:`.backend.VhostUserBackend`): it makes each
connection's session, hears when one ends, names the kick fds to watch and
serves their kicks.  The hooks run in the thread; those that read or
change the state (``_new_session``, ``_connection_ended``, ``_kick_fds``,
``_between_polls``, ``_check_stalls``, ``_reconnect_failed``) with the
lock held, :meth:`Server._kicked` takes it itself.

Nothing in the loop waits on a peer: sockets and eventfds are read and
written without blocking, each message within ``message_timeout``; a
held message only stops the reading of its socket.
"""

from __future__ import annotations

import enum
import os
import select
import socket
import threading
import time
import traceback
from typing import Dict, List, Optional, Tuple

from .connection import Connection, Listener, connect
from .conversation import Conversation, Ended
from .records import DisconnectCause
from .session import Session

__all__ = ["Server", "Runstate"]

#: How often the thread looks for stalled rings while rings are started.
_STALL_POLL_MS = 500


class Runstate(enum.Enum):
    """Where the back-end is in its life."""

    #: made; :meth:`Server.start` not called yet
    IDLE = "idle"
    #: the thread runs, with no connection (listening, or between two)
    WAITING = "waiting"
    #: the thread serves a connection
    CONNECTED = "connected"
    #: :meth:`Server.stop` was called
    STOPPING = "stopping"
    #: the thread is gone and every fd released
    STOPPED = "stopped"


class Server:
    """A thread serving one vhost-user connection at a time.

    :param name: the thread's name is ``vhost-user-<name>``.
    """

    def __init__(self, name: str):
        self.name = name
        self.runstate = Runstate.IDLE
        #: connections opened so far (the current one's number)
        self.connections = 0
        #: In connect mode: reconnect to this path as soon as a connection
        #: ends (QEMU's ``server=on`` socket keeps listening), no delay.
        self.reconnect_path: Optional[str] = None
        self._cond = threading.Condition(threading.RLock())
        #: test threads blocked on _cond (notified only when there are)
        self._waiters = 0
        self._conv: Optional[Conversation] = None
        self._listener: Optional[Listener] = None
        self._pending: List[Connection] = []
        self._drop_requested = False
        self._work = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: Optional[threading.Thread] = None

    # --- the subclass's hooks ---------------------------------------------
    def _message_timeout(self) -> float:
        """How long one message may take to arrive or leave."""
        raise NotImplementedError

    def _new_session(self, number: int) -> Session:
        """Connection ``number`` opens: its session."""
        raise NotImplementedError

    def _connection_ended(self, conv: Conversation, cause: DisconnectCause,
                          detail: str) -> None:
        """``conv`` ended (its socket is closed already)."""
        raise NotImplementedError

    def _kick_fds(self) -> Dict[int, int]:
        """The kick fds to watch, with their ring's index."""
        raise NotImplementedError

    def _kicked(self, fd: int, index: int) -> None:
        """Ring ``index`` was kicked on ``fd`` (takes the lock itself)."""
        raise NotImplementedError

    def _between_polls(self) -> None:
        """Work the test asked for (:meth:`poke`), before the next poll."""
        raise NotImplementedError

    def _check_stalls(self, now: float) -> None:
        """Twice a second while rings run: look for stalled rings."""
        raise NotImplementedError

    def _crashed(self, text: str) -> None:
        """A bug in the loop: record it where the test will see it."""
        raise NotImplementedError

    def record_error(self, text: str) -> None:
        raise NotImplementedError

    def _notify(self) -> None:
        """Wake the test's waits, if any (call with the lock held).

        Condition.notify_all() is Python code that costs microseconds even
        with nobody waiting; this runs for every message.
        """
        if self._waiters:
            self._cond.notify_all()

    # --- lifecycle ------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.runstate in (Runstate.STOPPING, Runstate.STOPPED)

    @property
    def messages(self) -> int:
        """Messages received on the current (or last) connection."""
        conv = self._conv
        return conv.session.messages if conv is not None else 0

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
        self.adopt(connect(path, self._message_timeout()))

    def adopt(self, conn: Connection) -> None:
        """Serve an already connected socket (unit tests, socketpairs).

        Served once the current connection, if any, has ended.
        """
        with self._cond:
            self._pending.append(conn)
        self._wake()

    def _start_thread(self) -> None:
        if self.runstate is not Runstate.IDLE:
            raise RuntimeError(f"back-end {self.name} is "
                               f"{self.runstate.value}, cannot start")
        self.runstate = Runstate.WAITING
        self._thread = threading.Thread(target=self._run,
                                        name=f"vhost-user-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and release every fd, mapping and socket.

        Returns within ``timeout`` whatever the peer did, with the thread
        gone: the thread makes no syscall that can wait on a peer (every
        peer fd is read and written without waiting, every wait is bounded
        by ``message_timeout``), and the connection is shut down here,
        which ends a bounded wait at once.  Works while QEMU waits for an
        answer (held or not): QEMU sees the back-end disconnect.
        """
        if self.runstate is Runstate.STOPPED:
            return
        self.runstate = Runstate.STOPPING
        conv = self._conv
        if conv is not None:
            try:  # ends a select() on it at once; the thread closes it
                conv.conn.sock.shutdown(socket.SHUT_RDWR)
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
                    watch, kicks = self._watch()
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
                if kicks:
                    now = time.monotonic()
                    if now >= next_stall_check:
                        next_stall_check = now + _STALL_POLL_MS / 1000
                        with self._cond:
                            self._check_stalls(now)
                            self._notify()
        except BaseException:  # a bug here must reach the test
            self._crashed("back-end thread crashed:\n"
                          + traceback.format_exc())
        finally:
            with self._cond:
                self._notify()

    def _watch(self) -> Tuple[List[int], Dict[int, int]]:
        """Act on the test's requests; the fds to poll, and the kick fds
        of started rings by fd (call with the lock held)."""
        if self._drop_requested:
            self._drop_requested = False
            self._close_connection(DisconnectCause.DROPPED, "")
        if self._conv is None and self._pending:
            self._open(self._pending.pop(0))
        if self._work:
            self._work = False
            self._between_polls()
        watch = [self._wake_r]
        kicks: Dict[int, int] = {}
        if self._conv is not None:
            fd = self._conv.watch()  # a held message holds only its socket
            if fd is not None:
                watch.append(fd)
            kicks = self._kick_fds()
            watch.extend(kicks)
        elif self._listener is not None:
            watch.append(self._listener.fileno())
        return watch, kicks

    def _poll_timeout(self, kicks: bool) -> Optional[int]:
        """How long the poll may wait (ms; None: for ever): started rings
        are looked at for stalls twice a second, and a held message is
        let go at its fault's timeout."""
        timeout: Optional[int] = _STALL_POLL_MS if kicks else None
        held = self._conv.timeout_ms() if self._conv is not None else None
        if held is not None:
            timeout = held if timeout is None else min(timeout, held)
        return timeout

    def _ready(self, fd: int, kicks: Dict[int, int]) -> None:
        """One fd the poll found readable."""
        conv = self._conv
        if fd == self._wake_r:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        elif (self._listener is not None and conv is None
              and fd == self._listener.fileno()):
            conn = self._listener.accept(self._message_timeout())
            with self._cond:
                self._open(conn)
        elif conv is not None and fd == conv.conn.fileno():
            self._serve_one(conv)
        elif fd in kicks:
            self._kicked(fd, kicks[fd])

    # --- connections ----------------------------------------------------
    def _open(self, conn: Connection) -> None:
        self.connections += 1
        self._conv = Conversation(conn, self._new_session(self.connections),
                                  self._wake)
        self.runstate = Runstate.CONNECTED
        self._notify()

    def _serve_one(self, conv: Conversation) -> None:
        conv.conn.message_timeout = self._message_timeout()
        message, ended = conv.receive()
        with self._cond:
            if message is not None:
                ended = conv.handle(*message)
            self._end_if(ended)
            self._notify()

    def _resume_if_released(self) -> None:
        """Answer a held message once it is due (call with the lock
        held)."""
        if self._conv is not None:
            answered, ended = self._conv.resume_if_released()
            self._end_if(ended)
            if answered:
                self._notify()

    def _end_if(self, ended: Optional[Ended]) -> None:
        if ended is not None:
            if ended.error is not None:
                self.record_error(ended.error)
            self._close_connection(ended.cause, ended.detail)

    def _close_connection(self, cause: DisconnectCause, detail: str) -> None:
        with self._cond:
            conv, self._conv = self._conv, None
            if conv is None:
                return
            detail = conv.close(cause, detail)
            if not self.stopping:
                self.runstate = Runstate.WAITING
            self._connection_ended(conv, cause, detail)
            if self.reconnect_path is not None and not self.stopping:
                self._reconnect(self.reconnect_path)
            self._notify()

    def _reconnect(self, path: str) -> None:
        try:
            self._pending.append(connect(path, self._message_timeout()))
        except OSError as exc:
            # QEMU is gone (or not listening): nothing to retry against.
            self._reconnect_failed(f"{path}: {exc}")

    def _reconnect_failed(self, detail: str) -> None:
        """A reconnection could not be made (QEMU is gone)."""
        raise NotImplementedError
