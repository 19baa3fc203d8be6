"""
What the back-end offers beyond the rings: the back-end channel
(BACKEND_REQ), the objects it exports (SHARED_OBJECT) and crypto sessions
(CRYPTO_SESSION).
"""

from __future__ import annotations

import os
import struct
from ..channel import BackendChannel
from ..connection import close_fds
from ..error import MalformedMessage
from ..message import Empty, Opaque, Request, SharedObject, U64
from .base import Fds, Group, WithFds, handles, require_kind

__all__ = ["ObjectRequests"]

#: the size of QEMU's VhostUserCryptoSession up to 8.0 (id first)
_CRYPTO_SESSION_UP_TO_8_0 = 632


class ObjectRequests(Group):
    """The back-end channel, shared objects and crypto sessions."""

    @handles(Request.SET_BACKEND_REQ_FD)
    def set_backend_req_fd(self, payload: Empty, fds: Fds) -> None:
        require_kind(fds, "socket", "back-end channel fd")
        if self.state.backend_channel is not None:
            self.state.backend_channel.close()
        self.state.backend_channel = BackendChannel(
            fds[0], self.host.trace, self.number,
            self.host.config.message_timeout)

    @handles(Request.GET_SHARED_OBJECT)
    def get_shared_object(self, payload: SharedObject, fds: Fds) -> WithFds:
        """An object this back-end exports, as an fd with the answer; no fd
        for a UUID it does not export (spec: "or no fd otherwise").  A
        request without a UUID (a front-end's fault, recorded) is answered
        with the one object exported only by a back-end told to guess
        (``answer_unnamed_lookup``: what libvhost-user ends up doing)."""
        close_fds(fds)
        objects = self.host.config.shared_objects
        uuid = payload.uuid
        if (not uuid and self.host.config.answer_unnamed_lookup
                and len(objects) == 1):
            uuid = next(iter(objects))
        content = objects.get(uuid)
        if content is None:
            self.host.record_error(f"GET_SHARED_OBJECT of "
                                   f"{payload.uuid.hex()}, which this "
                                   "back-end does not export")
            return WithFds(U64(1), [])
        fd = os.memfd_create("vhost-shared-object", os.MFD_CLOEXEC)
        os.write(fd, content)
        return WithFds(U64(0), [fd], close_after=True)

    @handles(Request.CREATE_CRYPTO_SESSION)
    def create_crypto_session(self, payload: Opaque, fds: Fds) -> Opaque:
        """A session for QEMU's VhostUserCryptoSession; the answer is the
        same with the id this back-end assigns.

        The spec gives the payload no layout, and QEMU changed its own in
        8.1 (5c33f9783a) with nothing negotiated: up to 8.0 the id comes
        first (632 bytes: id, the session's set-up, the keys), since 8.1
        last (1072 bytes: op code, set-up and keys, id).  Told apart by
        size.
        """
        close_fds(fds)
        data = payload.data
        if len(data) < 16:
            raise MalformedMessage(f"CREATE_CRYPTO_SESSION of {len(data)} "
                                   "bytes: no room for its op code and id")
        at = 0 if len(data) == _CRYPTO_SESSION_UP_TO_8_0 else len(data) - 8
        limit = 64  # sessions open at once: a front-end cannot grow them
        if len(self.state.crypto_sessions) >= limit:
            self.host.record_error(f"CREATE_CRYPTO_SESSION beyond {limit} "
                                   "open sessions: refused (id -1)")
            session = -1
        else:
            session = self.state.next_crypto_session
            self.state.next_crypto_session += 1
            self.state.crypto_sessions[session] = data
        return Opaque(data[:at] + struct.pack("<q", session)
                      + data[at + 8:])

    @handles(Request.CLOSE_CRYPTO_SESSION)
    def close_crypto_session(self, payload: U64, fds: Fds) -> None:
        """Close a session this back-end opened."""
        close_fds(fds)
        if self.state.crypto_sessions.pop(payload.value, None) is None:
            raise MalformedMessage(f"CLOSE_CRYPTO_SESSION of session "
                                   f"{payload.value}, which is not open")
