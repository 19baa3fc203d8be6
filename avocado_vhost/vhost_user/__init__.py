"""
A vhost-user back-end for tests, in pure Python.

vhost-user moves the data path of a virtio device out of QEMU into another
process, the *back-end*.  The *front-end* (QEMU) talks to it over a UNIX
socket: it negotiates virtio and protocol features, hands over guest memory
as file descriptors with their guest-physical and QEMU-virtual addresses
(SET_MEM_TABLE), describes each virtqueue (SET_VRING_NUM/ADDR/BASE), passes
eventfds for notifications (SET_VRING_KICK/CALL/ERR) and, for live
migration, a shared dirty-page bitmap (SET_LOG_BASE) in which the back-end
marks every guest page it writes.  A ring runs from its kick fd until
GET_VRING_BASE stops it and returns the position the next owner resumes
from.

Layers, one concern each (after rust-vmm's ``vhost::vhost_user``):

``message``      wire format: request and reply payloads, flags, fd rules
``connection``   transport: UNIX socket, SCM_RIGHTS fds, framing
``config``       what a back-end offers (BackendConfig)
``server``       the thread: one poll loop (accept/reconnect, messages,
                 kicks, holds), one connection at a time
``conversation`` one connection: its socket, session and held message;
                 writes the answers
``backend``      the device's host on a server: records, trace, ring
                 events, signals; what tests read
``waits``        the test's side: bounded waits and the verdict (check)
``session``      the protocol core, no I/O: a message in, an Outcome out
                 (decode, judge, fault, handle, answer)
``handlers``     one typed method per request, in one explicit table built
                 from a group per concern (negotiation, rings, mappings,
                 carried state, objects)
``judge``        the session fed by the proxy to judge a front-end
``conformance``  rules the front-end must follow
``faults``       scripted misbehaviour (Fault, FaultAction)
``records``      typed records: problems, disconnects, ring events
``trace``        the decoded record of a session (TraceKind, Event)
``state``        device and ring state as the spec defines it
``memory``       mapped guest memory and the dirty log
``device``       the interfaces between back-end and device (Device, DeviceHost)
``virtq``        the device side of split and packed rings
``net``          a virtio-net data path (a Port, bounded; stall detector)
``frontend``     a scripted front-end, for unit tests
``proxy``        a conformance proxy between any front-end and back-end
``error``        the exception hierarchy

The spec's terms are used throughout: front-end and back-end.
"""

from .backend import Runstate, VhostUserBackend
from .config import NET_FEATURES, NET_PROTOCOL_FEATURES, BackendConfig
from .error import (BackendFailure, ConnectionClosed, FdCountError,
                    MalformedMessage, PeerStuck, ProtocolError,
                    UnknownRequest, VhostUserError, WaitTimeout)
from .memory import DirtyLog, GuestMemory
from .message import (BackendRequest, MemoryRegion, ProtocolFeature, Request,
                      VirtioFeature)
from .faults import Fault, FaultAction
from .records import (Disconnect, DisconnectCause, Problem, ProblemKind,
                      RingEvent, Side)
from .trace import Event, Trace, TraceEntry, TraceKind

__all__ = [
    "VhostUserBackend", "Runstate", "BackendConfig", "Fault", "FaultAction",
    "Problem", "ProblemKind", "Side", "Disconnect", "DisconnectCause", "RingEvent",
    "Event", "TraceKind", "NET_FEATURES",
    "NET_PROTOCOL_FEATURES", "Request", "BackendRequest", "VirtioFeature",
    "ProtocolFeature", "MemoryRegion", "GuestMemory", "DirtyLog", "Trace",
    "TraceEntry", "VhostUserError", "ProtocolError", "MalformedMessage",
    "UnknownRequest", "FdCountError", "ConnectionClosed", "PeerStuck",
    "WaitTimeout", "BackendFailure",
]
