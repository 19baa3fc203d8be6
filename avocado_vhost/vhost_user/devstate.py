"""
Back-end state migration (DEVICE_STATE): the transfer over the pipe.

With DEVICE_STATE, QEMU moves the back-end's internal state with the
migration: on the source it hands the back-end the writing end of a pipe
(SET_DEVICE_STATE_FD, direction save), reads the state until the back-end
closes it, and asks CHECK_DEVICE_STATE; on the destination it hands over
the reading end (direction load), writes what the source saved, closes it,
and asks CHECK_DEVICE_STATE whether the back-end took it.

:class:`StateTransfer` is one such transfer.  It runs on a thread of its
own: QEMU reads (or writes) the pipe from its migration thread only after
the back-end has answered SET_DEVICE_STATE_FD, so the back-end's thread
must answer first and never wait on the pipe.  Every wait of the transfer
is bounded (a front-end that stops reading costs one timeout, not a hang)
and what it loads is bounded in size.

The state travels framed -- ``AVHSTATE``, its length, the bytes, their
CRC-32 -- so that a destination tells a whole state from a truncated or
garbled one, as a real back-end's deserializer must.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
import zlib
from typing import Optional

from .connection import close_fds

__all__ = ["StateTransfer", "SAVE", "LOAD", "PHASE_STOPPED", "frame",
           "unframe", "INVALID_FD"]

#: SET_DEVICE_STATE_FD's transfer direction and migration phase
SAVE, LOAD = 0, 1
PHASE_STOPPED = 0
#: bit 8 of the reply: no fd of the back-end's own comes back
INVALID_FD = 1 << 8

_MAGIC = b"AVHSTATE"
_HEADER = struct.Struct("<8sQ")
_CHUNK = 64 * 1024


def frame(state: bytes) -> bytes:
    """``state`` as this back-end writes it to the pipe."""
    return (_HEADER.pack(_MAGIC, len(state)) + state
            + struct.pack("<I", zlib.crc32(state)))


def unframe(data: bytes) -> bytes:
    """The state in ``data`` as written by :func:`frame`.

    :raise ValueError: ``data`` is not one whole, intact frame (the reason
        in the text).
    """
    if len(data) < _HEADER.size + 4:
        raise ValueError(f"{len(data)} bytes: shorter than an empty state")
    magic, length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"no state header (starts {data[:8].hex()})")
    if len(data) != _HEADER.size + length + 4:
        raise ValueError(f"the header announces {length} bytes of state, "
                         f"{len(data) - _HEADER.size - 4} arrived")
    state = data[_HEADER.size:_HEADER.size + length]
    crc, = struct.unpack_from("<I", data, _HEADER.size + length)
    if crc != zlib.crc32(state):
        raise ValueError("the state's CRC-32 does not match")
    return state


class StateTransfer:
    """One save or load over the pipe QEMU gave; owns the fd.

    :param fd: the pipe end from SET_DEVICE_STATE_FD.
    :param direction: :data:`SAVE` (write ``data``) or :data:`LOAD`.
    :param data: the bytes to write when saving.
    :param limit: the most a load accepts.
    :param timeout: bound on each wait for the pipe, and on the whole.
    """

    def __init__(self, fd: int, direction: int, data: bytes = b"",
                 limit: int = 64 << 20, timeout: float = 10.0) -> None:
        self.fd: Optional[int] = fd
        self.direction = direction
        self._data = data
        self._limit = limit
        self._timeout = timeout
        #: what a load read (whole, before any check)
        self.received = b""
        #: why the transfer failed, None while it runs or once it succeeded
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name=f"device-state-{'save' if direction == SAVE else 'load'}")

    def start(self) -> "StateTransfer":
        os.set_blocking(self._fd(), False)
        self._thread.start()
        return self

    def _fd(self) -> int:
        assert self.fd is not None
        return self.fd

    def finish(self, timeout: float) -> Optional[str]:
        """Wait (at most ``timeout``) for the transfer to end: None when it
        succeeded, else why not."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return (f"the transfer had not ended {timeout}s after the "
                    f"front-end asked CHECK_DEVICE_STATE")
        return self.error

    def close(self) -> None:
        """Stop a transfer in progress (its thread ends within one slice
        of its poll) and release the fd."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._timeout)
        if self.fd is not None and not self._thread.is_alive():
            close_fds([self.fd])
            self.fd = None

    # --- the transfer thread ---------------------------------------------
    _deadline = float("inf")
    #: how often a waiting transfer looks whether it was closed
    _SLICE = 0.05

    def _run(self) -> None:
        self._deadline = time.monotonic() + self._timeout
        try:
            if self.direction == SAVE:
                self._save()
            else:
                self._load()
        except OSError as exc:
            self.error = f"the pipe failed: {exc}"
        finally:
            fd, self.fd = self.fd, None
            if fd is not None:
                close_fds([fd])  # the end of the transfer (EOF for QEMU)

    def _wait(self, event: int, what: str) -> bool:
        poller = select.poll()
        poller.register(self._fd(), event | select.POLLERR | select.POLLHUP)
        while not self._stop.is_set():
            left = self._deadline - time.monotonic()
            if left <= 0:
                self.error = (f"timed out after {self._timeout}s waiting to "
                              f"{what}")
                return False
            if poller.poll(min(left, self._SLICE) * 1000):
                return True
        self.error = f"closed while waiting to {what}"
        return False

    def _save(self) -> None:
        sent = 0
        while sent < len(self._data):
            if not self._wait(select.POLLOUT, "write the state"):
                return
            try:
                sent += os.write(self._fd(), self._data[sent:sent + _CHUNK])
            except BrokenPipeError:
                self.error = (f"the front-end closed the pipe after {sent} "
                              f"of {len(self._data)} bytes")
                return
            except BlockingIOError:
                continue

    def _load(self) -> None:
        chunks = []
        size = 0
        while True:
            if not self._wait(select.POLLIN, "read the state"):
                return
            try:
                chunk = os.read(self._fd(), _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break  # EOF: the front-end has written all
            size += len(chunk)
            if size > self._limit:
                self.error = (f"more than {self._limit} bytes of state: "
                              "refused")
                return
            chunks.append(chunk)
        self.received = b"".join(chunks)
