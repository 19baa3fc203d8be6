"""
Errors raised by the vhost-user back-end library.

The hierarchy::

    VhostUserError
     +-- ProtocolError            the front-end broke the wire protocol
     |    +-- MalformedMessage    bad header, size, payload or region
     |    +-- UnknownRequest      a request number the spec does not define
     |    +-- FdCountError        wrong number of SCM_RIGHTS fds
     +-- ConnectionClosed         the peer went away (possibly mid-message)
     |    +-- PeerStuck           ... or stopped reading our answers
     +-- WaitTimeout              a bounded wait expired (says what it saw)
     +-- BackendFailure           the back-end thread recorded errors; the
                                  message carries the trace around them

Protocol errors are caught by the back-end thread, recorded with the message
that caused them, and surface in the test through :class:`BackendFailure`;
they never kill the thread silently.
"""

from __future__ import annotations

__all__ = [
    "VhostUserError", "ProtocolError", "MalformedMessage", "UnknownRequest",
    "FdCountError", "ConnectionClosed", "PeerStuck", "WaitTimeout",
    "BackendFailure",
]


class VhostUserError(Exception):
    """Base class of every error of this library."""


class ProtocolError(VhostUserError):
    """The front-end sent something the vhost-user protocol does not allow."""


class MalformedMessage(ProtocolError):
    """A message whose header, size or payload is invalid."""


class UnknownRequest(ProtocolError):
    """A request number that the spec does not define.

    :param request: the number received.
    """

    def __init__(self, request: int):
        super().__init__(f"unknown request number {request}")
        self.request = request


class FdCountError(ProtocolError):
    """A message carried the wrong number of file descriptors."""


class ConnectionClosed(VhostUserError):
    """The peer closed the connection; ``partial`` says if mid-message."""

    def __init__(self, message: str = "connection closed by peer",
                 partial: bool = False):
        super().__init__(message)
        self.partial = partial


class PeerStuck(ConnectionClosed):
    """The peer stopped reading: an answer could not be sent within the
    message timeout (its receive buffer is full)."""


class WaitTimeout(VhostUserError, TimeoutError):
    """A bounded wait expired; the message names what was awaited and seen."""


class BackendFailure(VhostUserError, AssertionError):
    """Errors recorded by a back-end thread, raised in the test's thread.

    Deriving from :class:`AssertionError` makes Avocado report a FAIL (the
    front-end misbehaved) rather than an ERROR of the test itself.
    """
