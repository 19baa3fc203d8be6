"""
vhost-user transport: a UNIX stream socket that carries messages and fds.

QEMU sends each message with one ``sendmsg()``, its fds attached as
SCM_RIGHTS to the first byte, but the kernel may deliver it in pieces: this
module reassembles header and payload, gathers the fds from every piece, and
never hands out a message whose framing it could not verify.  Any fd it
received but cannot give to a caller (truncated control data, an error mid
message) is closed here, so a malformed message cannot leak descriptors.

Two ways to meet QEMU:

* :class:`Listener` -- listen mode: the back-end owns the socket path and
  QEMU's chardev connects (QEMU is the client).  The listener must exist
  before QEMU is launched, because QEMU blocks at start-up until accepted.
* :func:`connect` -- connect mode: QEMU's chardev is ``server=on`` and the
  back-end connects to it.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import socket
import time
from typing import List, Optional, Sequence, Tuple

from .error import ConnectionClosed, MalformedMessage, PeerStuck
from .message import HEADER_SIZE, MAX_PAYLOAD, Header, decode_header

__all__ = ["Connection", "Listener", "connect", "close_fds", "socketpair",
           "signal_eventfd", "read_eventfd", "ensure_nonblocking",
           "check_socket_path", "SUN_PATH_MAX", "MAX_FDS", "EVENTFD_MAX"]

#: Most fds one message may bring (SET_MEM_TABLE: 8); room for a few more so
#: that an excess is detected and closed instead of truncated by the kernel.
MAX_FDS = 16
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # a plain int: checked per message


def close_fds(fds: Sequence[int]) -> None:
    """Close fds, ignoring those already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _fds_from_ancdata(ancdata: List[Tuple[int, int, bytes]]) -> List[int]:
    fds: List[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[:len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


#: sizeof(sockaddr_un.sun_path) - 1: the longest UNIX socket path
SUN_PATH_MAX = 107


def check_socket_path(path: str) -> None:
    """Refuse a UNIX socket path the kernel would not take, before anything
    waits on it, with a way out.

    :raise ValueError: the path is too long.
    """
    if len(path.encode()) > SUN_PATH_MAX:
        raise ValueError(
            f"UNIX socket path is {len(path.encode())} bytes, the limit is "
            f"{SUN_PATH_MAX}: {path} (set AVOCADO_VHOST_TMPDIR to a shorter "
            "directory)")


#: the largest value an eventfd counter holds; a write past it waits
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE


def ensure_nonblocking(fd: int) -> bool:
    """Set O_NONBLOCK on ``fd`` if it is clear; whether it was clear.

    A peer that handed us an fd shares its file description, status flags
    included: it can clear O_NONBLOCK at any time, so the flag is checked
    right before each write instead of once on arrival.
    """
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_NONBLOCK:
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return True


def read_eventfd(fd: int) -> Optional[int]:
    """Read (and so reset) an eventfd's counter without ever waiting: its
    value, or None when it is 0 (a peer holding the same eventfd may have
    drained it between our poll and this read).

    ``preadv2(RWF_NOWAIT)`` makes this one read non-blocking whatever the
    file's flags (Linux 5.12 and later honour it on eventfds); where it is
    refused, the flag is set first.
    """
    buf = bytearray(8)
    try:
        os.preadv(fd, [buf], -1, _RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        ensure_nonblocking(fd)
        try:
            return os.eventfd_read(fd)
        except BlockingIOError:
            return None
    return int.from_bytes(buf, "little")


_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 8)


def signal_eventfd(fd: int) -> Optional[str]:
    """Add 1 to an eventfd without ever waiting.

    :return: None when signalled as asked; otherwise what was wrong with
        the fd, in a sentence for the record: its O_NONBLOCK had been
        cleared (set again, and the signal sent), or its counter is at its
        maximum -- a signal is pending already, and the peer does not read
        it -- so this one was dropped.
    """
    problems = []
    if ensure_nonblocking(fd):
        problems.append("its peer had cleared O_NONBLOCK on it (set again)")
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        problems.append("its counter is at its maximum, so the peer does not"
                        " read it: the signal was dropped, not waited for")
    return "; ".join(problems) or None


class Connection:
    """One connected vhost-user socket.

    :param sock: a connected ``AF_UNIX`` stream socket; owned from now on.
    :param message_timeout: bound, in seconds, on reading the rest of a
        message once its first byte has arrived -- the whole message, not
        each piece (a peer dribbling one byte just under the bound each
        time would otherwise hold the back-end for minutes); a peer that
        takes longer is reported as sending a truncated message.
    """

    def __init__(self, sock: socket.socket, message_timeout: float = 5.0):
        self.sock = sock
        self.message_timeout = message_timeout
        #: fds of the last message that came after its first read (the spec
        #: has the front-end send them with the header's first byte)
        self.late_fds = 0
        self.sock.settimeout(None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def wait_readable(self, timeout: float) -> bool:
        """Whether something (a message, or EOF) arrives within
        ``timeout`` seconds."""
        return self._wait(False, time.monotonic() + timeout)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def _wait(self, write: bool, deadline: float) -> bool:
        """Whether the socket turns readable (or writable) by ``deadline``;
        a hang-up counts (the next call then says what happened).  poll(),
        not select(): it reports a hang-up whatever was asked, and takes
        fds past 1023."""
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT if write else select.POLLIN)
        left = max(0.0, deadline - time.monotonic())
        return bool(poller.poll(left * 1000))

    def _recv_exact(self, want: int, fds: List[int], first: bool,
                    deadline: float) -> bytes:
        """Read exactly ``want`` bytes, collecting fds from each piece, by
        ``deadline`` (monotonic).

        Every read is MSG_DONTWAIT: whatever the socket's flags (a socket
        that came as an fd from the peer shares them with the peer), a read
        never waits; the waiting is a select() bounded by ``deadline``.
        """
        chunks = []
        got = 0
        while got < want:
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(
                    want - got, _CMSG_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not self._wait(False, deadline):
                    raise MalformedMessage(
                        f"truncated message: {got} of {want} bytes arrived "
                        f"within {self.message_timeout}s of its start")
                continue
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ConnectionClosed(f"connection reset: {exc}",
                                       partial=bool(got or not first))
            came = _fds_from_ancdata(ancdata)
            if came and (got or not first):
                self.late_fds += len(came)
            fds.extend(came)
            if flags & _MSG_CTRUNC:
                raise MalformedMessage(
                    f"more than {MAX_FDS} fds attached to one message")
            if not data:
                raise ConnectionClosed(
                    "peer closed the connection" + (
                        f" after {got} of {want} bytes" if got or not first
                        else ""),
                    partial=bool(got or not first))
            if not got and len(data) == want:
                return data
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def recv(self) -> Tuple[Header, bytes, List[int]]:
        """Receive one message: header, raw payload and the fds it carried.

        Waits at most ``message_timeout`` for the whole message (callers
        poll for its first byte first, so normally it is all there).

        :raise ConnectionClosed: EOF, possibly in the middle of a message.
        :raise MalformedMessage: truncated, oversized or too many fds; the
            fds received so far are closed and the exception's ``fds`` is [].
        """
        fds: List[int] = []
        self.late_fds = 0
        deadline = time.monotonic() + self.message_timeout
        try:
            header = decode_header(self._recv_exact(HEADER_SIZE, fds, True,
                                                    deadline))
            if header.size > MAX_PAYLOAD:
                # Framing cannot be trusted any more: the caller disconnects.
                raise MalformedMessage(
                    f"payload size {header.size} exceeds the maximum "
                    f"{MAX_PAYLOAD} (request {header.request})")
            payload = (self._recv_exact(header.size, fds, False, deadline)
                       if header.size else b"")
        except BaseException:
            close_fds(fds)
            raise
        return header, payload, fds

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one whole message, with ``fds`` as SCM_RIGHTS on its first
        byte, within ``message_timeout``.

        Every write is MSG_DONTWAIT, the waiting a bounded select(): a
        front-end that reads no replies fills the socket buffer, and must
        not hang the back-end's thread.

        :raise PeerStuck: the peer read nothing for ``message_timeout``.
        :raise ConnectionClosed: the peer is gone.
        """
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array("i", fds).tobytes())]
        deadline = time.monotonic() + self.message_timeout
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                sent += self.sock.sendmsg([view[sent:]], anc if not sent
                                          else [], socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not self._wait(True, deadline):
                    raise PeerStuck(
                        f"the peer read nothing for {self.message_timeout}s:"
                        " its receive buffer is full")
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ConnectionClosed(f"peer gone while sending: {exc}")
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                    raise ConnectionClosed(f"peer gone while sending: {exc}")
                raise

    def close(self) -> None:
        self.sock.close()


class Listener:
    """A listening socket at ``path`` for QEMU's client-mode chardev.

    The socket is bound at construction so that QEMU, launched right after,
    finds it.  ``close()`` unlinks the path.
    """

    def __init__(self, path: str):
        check_socket_path(path)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            self.sock.listen(1)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self, message_timeout: float = 5.0) -> Connection:
        """Accept one connection (call when ``fileno()`` polls readable)."""
        conn, _ = self.sock.accept()
        return Connection(conn, message_timeout)

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def connect(path: str, message_timeout: float = 5.0) -> Connection:
    """Connect to QEMU's ``server=on`` chardev at ``path``.

    :raise ConnectionRefusedError, FileNotFoundError: nobody listens there.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return Connection(sock, message_timeout)


def socketpair(message_timeout: float = 5.0
               ) -> Tuple[Connection, socket.socket]:
    """A back-end :class:`Connection` and the raw front-end socket facing it
    (for unit tests that play the front-end themselves)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Connection(a, message_timeout), b


