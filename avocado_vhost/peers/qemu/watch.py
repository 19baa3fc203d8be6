"""
Waiting for something to happen in a folder, without polling.

A QEMU in vhost-user server mode creates its socket, starts listening,
prints "QEMU waiting for connection on: ..." and then blocks its whole
start-up until a back-end connects.  The back-end must connect right then:
not before ``listen()`` (the connection would be refused), and not after
``launch()`` returns (it never would).  :class:`FolderWatch` wakes on every
inotify event in the folders it watches (a file created, written, moved in)
and on the completion of a Future, and re-checks a condition each time.
"""

from __future__ import annotations

import ctypes
import os
import select
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Optional

__all__ = ["FolderWatch"]

_IN_MODIFY = 0x2
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_libc: Optional[ctypes.CDLL] = None


class FolderWatch:
    """inotify on some folders, plus an optional Future to also wake on.

    :param folders: folders whose content changes are events.
    """

    def __init__(self, folders: Iterable[str]):
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        self._libc = _libc
        self.fd = _libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._closed = False
        try:
            for folder in set(folders):
                mask = _IN_CREATE | _IN_MOVED_TO | _IN_MODIFY | _IN_CLOSE_WRITE
                if _libc.inotify_add_watch(self.fd, folder.encode(),
                                           mask) < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"inotify_add_watch {folder}: "
                                       f"{os.strerror(err)}")
        except BaseException:
            self.close()
            raise

    def wait(self, condition: Callable[[], bool], what: str, timeout: float,
             also: "Optional[Future[Any]]" = None) -> bool:
        """Block until ``condition()`` holds or ``also`` completes.

        :return: True if the condition holds, False if ``also`` completed
            first.
        :raise TimeoutError: neither within ``timeout``; says ``what``.
        """
        if also is not None:
            also.add_done_callback(self._wake)
        deadline = time.monotonic() + timeout
        while not condition():
            if also is not None and also.done():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for "
                                   f"{what}")
            ready, _, _ = select.select([self.fd, self._wake_r], [], [], left)
            for fd in ready:
                try:
                    os.read(fd, 65536)
                except BlockingIOError:
                    pass
        return True

    def _wake(self, _future: object) -> None:
        # May run after close() (the Future completes later): never write
        # to an fd number that may belong to someone else by then.
        with self._lock:
            if not self._closed:
                os.write(self._wake_w, b"x")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fd in (self.fd, self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
