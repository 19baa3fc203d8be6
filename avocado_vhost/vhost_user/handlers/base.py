"""
What every group of request handlers shares: the types a handler returns
and raises, what it needs of its back-end (:class:`HandlerHost`), and the
checks of the fds a front-end hands over.

A handler is a method that takes the request's payload type and the fds
that came with it, which it owns from then on: it stores them or closes
them.  It returns the reply payload, or ``None`` (the session acks when
asked), and ends a request in one of three ways besides returning:

* :class:`Refused` -- legal, but not implemented here;
* :class:`CloseConnection` -- the spec says to close;
* :class:`..error.ProtocolError` -- the front-end sent something unusable.
"""

from __future__ import annotations

import os
import stat
from typing import (TYPE_CHECKING, Callable, Dict, List, NamedTuple,
                    Optional, TypeVar, Union)

from ..connection import close_fds
from ..error import MalformedMessage, ProtocolError
from ..message import Payload, Request
from ..records import DisconnectCause
from ..state import DeviceState

if TYPE_CHECKING:
    from typing import Protocol

    from ..config import BackendConfig
    from ..device import Device
    from ..records import RingEvent
    from ..state import Vring
    from ..trace import Event, Trace

    class HandlerHost(Protocol):
        """What request handling needs of the back-end that runs it."""

        config: BackendConfig
        device: Optional[Device]
        vring_base_override: Optional[int]
        trace: Trace

        def record_error(self, text: str) -> None: ...

        def trace_event(self, event: Event, detail: str = "") -> None: ...

        def ring_event(self, ring: Vring, event: RingEvent) -> None: ...

        def signal(self, ring: Vring) -> None: ...

__all__ = ["Fds", "WithFds", "Handler", "Reply", "Table", "handles",
           "Refused", "CloseConnection",
           "Group", "require_kind", "replace_fd", "fd_kind", "is_eventfd"]

#: The fds that came with a request; the handler owns them.
Fds = List[int]


class WithFds(NamedTuple):
    """A reply that carries fds (GET_INFLIGHT_FD's area): sent with the
    reply's first byte; the back-end keeps its own copies."""

    payload: Payload
    fds: List[int]
    #: the fds are the handler's own temporary ones: closed once sent
    close_after: bool = False


#: What a handler returns: the reply payload, a reply with fds, or None.
Reply = Union[None, Payload, WithFds]
#: How the session calls a handler.
Handler = Callable[[Payload, Fds], Reply]
#: A group's requests and their methods.  Each method takes its own
#: request's payload type, which decoding guarantees (a table keyed by
#: request cannot say so to the type checker).
Table = Dict[Request, Callable[..., Reply]]


class Refused(Exception):
    """A legal request this back-end does not implement."""


class CloseConnection(Exception):
    """End the current connection (the spec says to, or a fault does)."""

    def __init__(self, cause: DisconnectCause, detail: str):
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


#: the attribute :func:`handles` puts on a handler
_HANDLES = "handles_request"

_Method = TypeVar("_Method", bound=Callable[..., Reply])


def handles(request: Request) -> Callable[[_Method], _Method]:
    """Mark a method as the handler of ``request``: the table is written
    where the handlers are, one line above each."""
    def mark(method: _Method) -> _Method:
        setattr(method, _HANDLES, request)
        return method
    return mark


class Group:
    """The handlers of one concern, for one connection's device state."""

    def __init__(self, state: DeviceState, host: "HandlerHost",
                 number: int = 0):
        self.state = state
        self.host = host
        #: the connection's number (for the back-end channel's trace)
        self.number = number

    def table(self) -> Table:
        """The requests this group handles, each with its method: those
        marked :func:`handles`."""
        table: Table = {}
        for name in dir(type(self)):
            request = getattr(getattr(type(self), name), _HANDLES, None)
            if isinstance(request, Request):
                table[request] = getattr(self, name)
        return table

    def _within_mapping_limit(self, size: int, what: str) -> None:
        """Refuse to map more than ``max_mapped`` bytes in all (guest
        memory and dirty log): a front-end's sizes must not take the
        back-end's address space."""
        log = self.state.log.size if self.state.log is not None else 0
        limit = self.host.config.max_mapped
        if size + log > limit:
            raise MalformedMessage(
                f"{what} would map {size + log:#x} bytes (with the dirty "
                f"log), more than this back-end maps at most (max_mapped = "
                f"{limit:#x})")

    def _memory_changed(self) -> None:
        if self.host.device is not None:
            self.host.device.memory_changed()


def replace_fd(old: Optional[int], new: Optional[int]) -> Optional[int]:
    """Close ``old`` (if any) and return ``new``: a request that hands over
    a second fd for the same purpose must not leak the first."""
    if old is not None:
        close_fds([old])
    return new


def fd_kind(fd: int) -> str:
    """What a file descriptor is, as /proc names it."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def is_eventfd(fd: int) -> bool:
    return fd_kind(fd) == "anon_inode:[eventfd]"


_KINDS = {
    "eventfd": ("an eventfd", is_eventfd),
    "socket": ("a socket", lambda fd: stat.S_ISSOCK(os.fstat(fd).st_mode)),
    # memfds, hugetlbfs and tmpfs files, plain files: all regular files
    "file": ("a regular file", lambda fd: stat.S_ISREG(os.fstat(fd).st_mode)),
    # a pipe, or a FIFO: what SET_DEVICE_STATE_FD's "behave like a pipe" means
    "fifo": ("a pipe", lambda fd: stat.S_ISFIFO(os.fstat(fd).st_mode)),
}


def require_kind(fds: Fds, kind: str, what: str) -> None:
    """Every fd of a request must be of ``kind``.

    :raise ProtocolError: one is not (named in the text, with what it is
        instead); every fd of the request is closed first.
    """
    name, test = _KINDS[kind]
    for fd in fds:
        if not test(fd):
            found = fd_kind(fd)
            close_fds(fds)
            raise ProtocolError(f"the {what} is {found}, not {name}")
