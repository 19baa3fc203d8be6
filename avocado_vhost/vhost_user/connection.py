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
import os
import select
import socket
import time
from typing import List, Optional, Sequence, Tuple

from .error import ConnectionClosed, MalformedMessage, PeerStuck
from .message import HEADER_SIZE, MAX_PAYLOAD, Header, decode_header

__all__ = ["Connection", "Listener", "connect", "close_fds", "socketpair",
           "signal_eventfd", "check_socket_path", "SUN_PATH_MAX",
           "MAX_FDS"]

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


def signal_eventfd(fd: int) -> None:
    """Add 1 to an eventfd without ever blocking: a counter at its maximum
    already signals, so the write may be dropped."""
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass


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
        self.sock.settimeout(None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def wait_readable(self, timeout: float) -> bool:
        """Whether something (a message, or EOF) arrives within
        ``timeout`` seconds."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def _recv_exact(self, want: int, fds: List[int], first: bool,
                    deadline: Optional[float] = None) -> bytes:
        """Read exactly ``want`` bytes, collecting fds from each piece, by
        ``deadline`` (monotonic) once the first byte is in."""
        chunks = []
        got = 0
        while got < want:
            if not first or got:
                if deadline is None:
                    deadline = time.monotonic() + self.message_timeout
                left = max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    raise MalformedMessage(
                        f"truncated message: {got} of {want} bytes arrived "
                        f"within {self.message_timeout}s of its start")
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(
                    want - got, _CMSG_SPACE)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ConnectionClosed(f"connection reset: {exc}",
                                       partial=bool(got or not first))
            fds.extend(_fds_from_ancdata(ancdata))
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

        Blocks until the first byte arrives (callers poll first), then for at
        most ``message_timeout`` for the whole rest of the message.

        :raise ConnectionClosed: EOF, possibly in the middle of a message.
        :raise MalformedMessage: truncated, oversized or too many fds; the
            fds received so far are closed and the exception's ``fds`` is [].
        """
        fds: List[int] = []
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
        """Send one whole message, with ``fds`` as SCM_RIGHTS.

        :raise ConnectionClosed: the peer is gone.
        """
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array("i", fds).tobytes())]
        # A front-end that reads no replies fills the socket buffer; the
        # send is bounded so that it cannot hang the back-end's thread.
        self.sock.settimeout(self.message_timeout)
        try:
            sent = self.sock.sendmsg([data], anc)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except socket.timeout:
            raise PeerStuck(
                f"the peer read nothing for {self.message_timeout}s: its "
                "receive buffer is full")
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(f"peer gone while sending: {exc}")
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                raise ConnectionClosed(f"peer gone while sending: {exc}")
            raise
        finally:
            if self.sock.fileno() >= 0:
                self.sock.settimeout(None)

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


