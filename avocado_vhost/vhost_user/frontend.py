"""
A scripted vhost-user front-end, for testing back-ends without QEMU.

Unit tests, the fuzzer and the benchmark use it to send exactly the bytes
and fds they choose -- including malformed ones -- and to read the
back-end's replies.  It is deliberately thin: it does not negotiate on its
own; each call is one message.
"""

from __future__ import annotations

import array
import select
import socket
from typing import List, Optional, Sequence, Tuple

from .connection import Connection, _fds_from_ancdata, close_fds, socketpair
from .error import ConnectionClosed
from .message import (FLAG_NEED_REPLY, HEADER, HEADER_SIZE, VERSION, Payload,
                      Request, encode)

__all__ = ["FrontEnd"]


class FrontEnd:
    """The front-end end of a socket connected to a back-end.

    :param sock: connected socket; see :meth:`pair` for a socketpair whose
        other end is ready for ``VhostUserBackend.adopt``.
    """

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.timeout = timeout

    @classmethod
    def pair(cls, timeout: float = 5.0) -> Tuple["FrontEnd", Connection]:
        backend_side, frontend_sock = socketpair()
        return cls(frontend_sock, timeout), backend_side

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array("i", fds).tobytes())]
        self.sock.sendmsg([data], anc)

    def send(self, request: Request, payload: Optional[Payload] = None,
             fds: Sequence[int] = (), need_reply: bool = False) -> None:
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        self.send_raw(encode(request, payload, flags), fds)

    def _recv_exact(self, n: int, keep: Optional[List[int]] = None) -> bytes:
        """``n`` bytes; fds that come with them are closed, or appended to
        ``keep`` (the caller owns them then)."""
        buf = b""
        while len(buf) < n:
            ready, _, _ = select.select([self.sock], [], [], self.timeout)
            if not ready:
                raise TimeoutError(f"no reply within {self.timeout}s "
                                   f"({len(buf)} of {n} bytes)")
            data, anc, _, _ = self.sock.recvmsg(n - len(buf), 256)
            fds = _fds_from_ancdata(anc)
            if keep is None:
                close_fds(fds)
            else:
                keep.extend(fds)
            if not data:
                raise ConnectionClosed("back-end closed the connection",
                                       partial=bool(buf))
            buf += data
        return buf

    def recv(self, keep: Optional[List[int]] = None
             ) -> Tuple[int, int, bytes]:
        """One reply: ``(request, flags, payload)``; the fds that came
        with it are appended to ``keep`` (else closed)."""
        request, flags, size = HEADER.unpack(
            self._recv_exact(HEADER_SIZE, keep))
        return request, flags, self._recv_exact(size, keep) if size else b""

    def call_for_fds(self, request: Request,
                     payload: Optional[Payload] = None
                     ) -> Tuple[int, int, bytes, List[int]]:
        """Send a request and read a reply that carries fds (the caller
        closes them): ``(request, flags, payload, fds)``."""
        self.send(request, payload)
        fds: List[int] = []
        return (*self.recv(fds), fds)

    def call(self, request: Request, payload: Optional[Payload] = None,
             fds: Sequence[int] = (), need_reply: bool = False
             ) -> Tuple[int, int, bytes]:
        """Send a request and read its reply."""
        self.send(request, payload, fds, need_reply)
        return self.recv()

    def closed_by_peer(self, timeout: Optional[float] = None) -> bool:
        """Whether the back-end has closed its end (EOF readable)."""
        ready, _, _ = select.select([self.sock], [], [],
                                    self.timeout if timeout is None
                                    else timeout)
        if not ready:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
