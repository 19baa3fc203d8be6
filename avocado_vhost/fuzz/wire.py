"""
The fuzzer's end of one connection: it turns :class:`.step.Step` s into
bytes and fds, and asks after each whether the back-end still answers.

The probe is a GET_FEATURES, which every back-end answers at any time; the
replies before it (to the step) are read and dropped, with their fds.  The
probe's answer is the one that settles every well-formed GET_FEATURES sent
so far (a step may send some too): an earlier answer still unread is not
taken for it.
Three answers: *answered*; *closed* (the back-end hung up, which is how a
back-end may refuse bad input); *silent* (no answer within the hang
timeout).  While waiting, the back-end channel (SET_BACKEND_REQ_FD) is
served: each request that wants a reply gets one, well framed but not
always what the back-end hoped for (a failure, a wrong request number, no
REPLY flag, no body), so that a back-end's handling of the front-end's
replies is fuzzed too.
"""

from __future__ import annotations

import array
import errno
import mmap
import os
import random
import select
import socket
import struct
import time
from typing import Callable, Dict, List, Optional, Tuple

from avocado_vhost.vhost_user.message import (FLAG_NEED_REPLY, FLAG_REPLY,
                                              HEADER, HEADER_SIZE, VERSION,
                                              Request)
from avocado_vhost.fuzz.generate import REGION_SIZES
from avocado_vhost.fuzz.step import FdSpec, Step

__all__ = ["Wire", "SharedMemory", "ANSWERED", "CLOSED", "SILENT", "ENDED",
           "GREW"]

ANSWERED, CLOSED, SILENT, ENDED, GREW = ("answered", "closed", "silent",
                                         "ended", "grew")
_U64 = struct.Struct("=Q")
#: a reply bigger than this is garbage, not a vhost-user message
_MAX_REPLY = 1 << 20
#: a hang-up step sends its message this many times (at most this many
#: bytes) before it closes the connection
HANGUP_REPEATS = 64
HANGUP_BYTES = 16 << 10


class SharedMemory:
    """The guest memory the fuzzer shares: one memfd per region, mapped
    here too so that pokes land where the back-end reads."""

    def __init__(self) -> None:
        self.fds: List[int] = []
        self.maps: List[mmap.mmap] = []
        for i, size in enumerate(REGION_SIZES):
            fd = os.memfd_create(f"fuzz-region-{i}", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            self.fds.append(fd)
            self.maps.append(mmap.mmap(fd, size))

    def write(self, region: int, offset: int, data: bytes) -> None:
        area = self.maps[region % len(self.maps)]
        end = min(len(area), offset + len(data))
        if offset < end:
            area[offset:end] = data[:end - offset]

    def clear(self) -> None:
        for area in self.maps:
            area[:] = bytes(len(area))

    def close(self) -> None:
        for area in self.maps:
            area.close()
        for fd in self.fds:
            os.close(fd)
        self.maps, self.fds = [], []


class Wire:
    """One connection to the back-end at ``path``."""

    def __init__(self, path: str, memory: SharedMemory, seed: int,
                 hang_timeout: float):
        self.path = path
        self.memory = memory
        self.hang_timeout = hang_timeout
        self.sock: Optional[socket.socket] = None
        self.channel: Optional[socket.socket] = None
        self.kicks: Dict[int, int] = {}
        self.buffer = b""
        #: well-formed GET_FEATURES sent on this connection (steps and
        #: probes) and answers read: the probe waits for its own answer,
        #: not an earlier one still unread
        self.asked = self.answered = 0
        self.rng = random.Random(seed)
        self.sent = 0
        self.channel_requests = 0
        #: the back-end's pidfd, if known: every wait also ends on it
        self.pidfd: Optional[int] = None
        #: asked while a probe waits: True when the back-end outgrew its
        #: limit (the probe then ends with GREW)
        self.guard: Optional[Callable[[], bool]] = None

    def died(self, timeout: float = 0.0) -> bool:
        if self.pidfd is None:
            return False
        return bool(select.select([self.pidfd], [], [], timeout)[0])

    # --- the connection ---------------------------------------------------
    def open(self, timeout: float) -> bool:
        """Connect; False if the back-end does not accept within
        ``timeout`` (it may be restarting, or gone)."""
        self.close()
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                if time.monotonic() >= deadline:
                    return False
                # the socket is gone or its backlog full: the back-end is
                # between connections; look again in 10 ms unless it dies
                # meanwhile (bounded by the deadline)
                if self.died(0.01):
                    return False
                continue
            sock.settimeout(self.hang_timeout)
            self.sock = sock
            return True

    def close(self) -> None:
        for fd in self.kicks.values():
            os.close(fd)
        self.kicks = {}
        for sock in (self.sock, self.channel):
            if sock is not None:
                sock.close()
        self.sock = self.channel = None
        self.buffer = b""
        self.asked = self.answered = 0

    # --- steps ------------------------------------------------------------
    def do(self, step: Step) -> str:
        """Carry ``step`` out; CLOSED if the socket broke while sending,
        SILENT if the back-end stopped reading, else ANSWERED (meaning:
        sent; :meth:`probe` tells whether the back-end lives)."""
        if step.kind == "poke":
            self.memory.write(step.region, step.offset, step.data)
            return ANSWERED
        if step.kind == "kick":
            fd = self.kicks.get(step.ring)
            if fd is not None:
                os.write(fd, (1).to_bytes(8, "little"))
            return ANSWERED
        if self.sock is None:
            return CLOSED
        if step.kind == "hangup":
            # The message several times over, then the close: answers are
            # still to be written when the back-end meets the hang-up, on a
            # busy machine too (one message alone races the close).
            message = step.wire()
            try:
                self.sock.sendall(message * max(1, min(
                    HANGUP_REPEATS, HANGUP_BYTES // len(message))))
            except OSError:
                pass
            self.sent += 1
            self.close()
            return CLOSED
        fds = [self._make(spec, step) for spec in step.fds]
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array("i", fds).tobytes())] if fds else []
            self.sock.sendmsg([step.wire()], anc)
            self.sent += 1
            if (step.request == Request.GET_FEATURES and not step.payload
                    and step.size is None and step.flags & ~FLAG_NEED_REPLY
                    == VERSION):
                self.asked += 1  # a back-end must answer this one
        except socket.timeout:
            return SILENT
        except OSError:
            return CLOSED
        finally:
            for fd in fds:
                os.close(fd)
        return ANSWERED

    def _make(self, spec: FdSpec, step: Step) -> int:
        if spec.kind == "eventfd":
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            if step.request == Request.SET_VRING_KICK and len(
                    step.payload) >= 8:
                ring = step.payload[0]
                old = self.kicks.pop(ring, None)
                if old is not None:
                    os.close(old)
                self.kicks[ring] = os.dup(fd)
            return fd
        if spec.kind == "region":
            return os.dup(self.memory.fds[spec.size % len(self.memory.fds)])
        if spec.kind == "memfd":
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
            os.ftruncate(fd, spec.size)
            return fd
        if spec.kind == "pipe":
            r, w = os.pipe2(os.O_CLOEXEC)
            os.close(w)
            return r
        if spec.kind == "socket":
            ours, theirs = socket.socketpair()
            if self.channel is not None:
                self.channel.close()
            self.channel = ours
            return theirs.detach()
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    # --- is it alive? -----------------------------------------------------
    def probe(self) -> str:
        """Send GET_FEATURES and wait for its reply, reading and dropping
        what comes before it, serving the back-end channel meanwhile."""
        if self.sock is None:
            return CLOSED
        try:
            self.sock.sendall(HEADER.pack(Request.GET_FEATURES, VERSION, 0))
            self.asked += 1
        except socket.timeout:
            return SILENT
        except OSError:
            return CLOSED
        deadline = time.monotonic() + self.hang_timeout
        while True:
            answer = self._take_replies()
            if answer is not None:
                return answer
            left = deadline - time.monotonic()
            if left <= 0:
                return SILENT
            watched = [self.sock.fileno()]
            watched += [self.channel.fileno()] if self.channel else []
            watched += [self.pidfd] if self.pidfd is not None else []
            # wake every 100 ms to ask the guard: a back-end that grows
            # while it does not answer is stopped before it eats the host
            ready, _, _ = select.select(watched, [], [], min(left, 0.1))
            if self.pidfd is not None and self.pidfd in ready:
                return ENDED
            if not ready and self.guard is not None and self.guard():
                return GREW
            if self.channel is not None and self.channel.fileno() in ready:
                self._serve_channel()
            if self.sock.fileno() in ready:
                try:
                    data, anc, _, _ = self.sock.recvmsg(65536, 1024)
                except OSError:
                    return CLOSED
                _close_passed(anc)
                if not data:
                    return CLOSED
                self.buffer += data

    def _take_replies(self) -> Optional[str]:
        while len(self.buffer) >= HEADER_SIZE:
            request, flags, size = HEADER.unpack_from(self.buffer)
            if size > _MAX_REPLY:
                return CLOSED  # garbage: nothing after it can be framed
            if len(self.buffer) < HEADER_SIZE + size:
                return None
            self.buffer = self.buffer[HEADER_SIZE + size:]
            if (request == Request.GET_FEATURES and flags & FLAG_REPLY
                    and self.answered < self.asked):  # else: an extra one
                self.answered += 1
                if self.answered == self.asked:
                    return ANSWERED
        return None

    def _serve_channel(self) -> None:
        assert self.channel is not None
        try:
            data, anc, _, _ = self.channel.recvmsg(4096 + HEADER_SIZE, 1024)
        except OSError:
            data, anc = b"", []
        _close_passed(anc)
        if len(data) < HEADER_SIZE:
            self.channel.close()
            self.channel = None
            return
        self.channel_requests += 1
        request, flags, _ = HEADER.unpack_from(data)
        if not flags & FLAG_NEED_REPLY:
            return
        kind = self.rng.randrange(5)
        reply = {
            0: HEADER.pack(request, VERSION | FLAG_REPLY, 8) + _U64.pack(0),
            1: HEADER.pack(request, VERSION | FLAG_REPLY, 8) + _U64.pack(1),
            2: HEADER.pack(request + 1, VERSION | FLAG_REPLY, 8)
            + _U64.pack(0),
            3: HEADER.pack(request, VERSION, 8) + _U64.pack(0),
            4: HEADER.pack(request, VERSION | FLAG_REPLY, 0),
        }[kind]
        try:
            self.channel.sendall(reply)
        except OSError:
            pass


def _close_passed(anc: List[Tuple[int, int, bytes]]) -> None:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            for fd in fds:
                try:
                    os.close(fd)
                except OSError as exc:  # pragma: no cover
                    if exc.errno != errno.EBADF:
                        raise
