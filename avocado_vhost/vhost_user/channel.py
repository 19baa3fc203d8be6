"""
The back-end channel: requests from the back-end to the front-end.

With the BACKEND_REQ protocol feature the front-end hands the back-end one
end of a socketpair (SET_BACKEND_REQ_FD).  On it the roles are swapped: the
back-end sends requests (:class:`.message.BackendRequest`: a configuration
change, a host notifier to map, an IOTLB miss, a shared object) with the
same header as the front-end's, and the front-end answers with a u64
REPLY_ACK when the back-end sets NEED_REPLY ("the front-end must respond
with zero when operation is successfully completed, or non-zero
otherwise").

:class:`BackendChannel` is that end of the socketpair.  It is used from
the test's thread (a test makes the back-end ask); it never takes the
back-end's lock, and every read and write is bounded by the connection's
``message_timeout``, so a front-end that never answers costs one bounded
wait, not a hung test.
"""

from __future__ import annotations

import socket
from typing import List, Optional, Sequence

from .connection import Connection, close_fds
from .error import MalformedMessage, ProtocolError
from .message import (FLAG_NEED_REPLY, FLAG_REPLY, VERSION, BackendRequest,
                      Payload, U64, encode, request_name)
from .trace import Trace, TraceKind

__all__ = ["BackendChannel"]


class BackendChannel:
    """The back-end's end of the back-end channel of one connection.

    :param fd: the socket from SET_BACKEND_REQ_FD; owned from now on.
    :param trace: where every message in both directions is recorded
        (kinds ``chan-tx``, ``chan-rx``).
    :param conn: the connection number it belongs to, for the trace.
    """

    def __init__(self, fd: int, trace: Trace, conn: int,
                 message_timeout: float = 5.0):
        sock = socket.socket(fileno=fd)
        self.conn = Connection(sock, message_timeout)
        self.trace = trace
        self.number = conn

    def request(self, request: BackendRequest, payload: Payload,
                fds: Sequence[int] = (), need_reply: bool = True,
                reply_fds: Optional[List[int]] = None) -> Optional[int]:
        """Send one back-end request; with ``need_reply``, wait for the
        front-end's REPLY_ACK and return its value (0: done).

        :param reply_fds: the answer may carry fds (SHARED_OBJECT_LOOKUP's
            dma-buf): they are appended here, the caller's to close; else
            an answer with fds is malformed.

        :raise ConnectionClosed: the front-end closed the channel.
        :raise ProtocolError: the answer is not a REPLY_ACK to this request,
            or none came within the message timeout.
        """
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        data = encode(request, payload, flags)
        self.trace.add(self.number, TraceKind.CHAN_TX, request.name, flags,
                       len(data) - 12, len(fds), payload)
        self.conn.send(data, fds)
        if not need_reply:
            return None
        if not self.conn.wait_readable(self.conn.message_timeout):
            raise ProtocolError(
                f"no answer to {request.name} on the back-end channel "
                f"within {self.conn.message_timeout}s")
        header, raw, got = self.conn.recv()
        name = request_name(header.request, BackendRequest)
        self.trace.add(self.number, TraceKind.CHAN_RX, name, header.flags,
                       header.size, len(got), raw.hex())
        if got and reply_fds is not None:
            reply_fds.extend(got)
        elif got:
            close_fds(got)
            raise MalformedMessage(f"the answer to {request.name} carried "
                                   f"{len(got)} fds")
        if (header.request != request or not header.flags & FLAG_REPLY
                or len(raw) != 8):
            raise ProtocolError(
                f"expected the REPLY_ACK of {request.name}, got {name} "
                f"flags 0x{header.flags:x} with {len(raw)} bytes")
        return U64.unpack(raw).value

    def close(self) -> None:
        self.conn.close()

