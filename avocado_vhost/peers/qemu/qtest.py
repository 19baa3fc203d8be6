"""
Guest memory and I/O access over QEMU's qtest protocol.

Debian's QEMU has no ``-accel qtest``, so :class:`qemu.machine.QEMUQtestMachine`
cannot start it; the qtest *protocol* still works beside TCG with
``-qtest unix:path=SOCK``.  :class:`QtestLink` listens on that socket before
QEMU starts, accepts QEMU's connection after ``launch()`` (then closes the
listening socket) and speaks the line protocol itself: it waits for each
answer in short slices and, between them, asks the VM whether QEMU can
still answer at all (``why_silent``: exited, or stopped by a signal), so a
dead or frozen QEMU is reported within a quarter of a second instead of at
the answer's bound.

Every command's answer is checked: qtest answers ``OK [value]`` or ``FAIL``,
and a FAIL becomes :class:`QtestError` with the command that caused it.
"""

from __future__ import annotations

import base64
import select
import socket
import time
from typing import Callable, List, Optional

from avocado_vhost.errors import Misbehaved

__all__ = ["QtestError", "QtestLink", "SLICE"]

#: how often a wait for an answer asks whether QEMU can still give one
SLICE = 0.25


class QtestError(Misbehaved):
    """A qtest command failed or QEMU did not answer it in time."""


class QtestLink:
    """The test's end of one VM's qtest socket.

    :param path: socket path, short (UNIX paths are limited to 108 bytes).
    :param timeout: bound on QEMU's connection and on every answer.
    :param log_path: where QEMU logs the qtest traffic (with times).
    """

    def __init__(self, path: str, timeout: float = 30.0,
                 log_path: Optional[str] = None):
        self.path = path
        self.log_path = log_path
        self.timeout = timeout
        self._listen: Optional[socket.socket] = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM)
        self._listen.bind(path)
        self._listen.listen(1)
        self._conn: Optional[socket.socket] = None
        self._pending = b""
        #: set by the VM: why QEMU cannot answer (gone, stopped), or None
        self.why_silent: Callable[[], Optional[str]] = lambda: None

    @property
    def qemu_args(self) -> List[str]:
        """The arguments that make QEMU connect here."""
        # -qtest-log: QEMU's record of every command and answer, in a file
        # of its own (by default QEMU echoes them into its main log).
        return ["-qtest", f"unix:{self.path}", "-qtest-log",
                self.log_path or "/dev/null"]

    def accept(self) -> None:
        """Accept QEMU's connection (call after ``launch()``)."""
        assert self._listen is not None
        self._listen.settimeout(self.timeout)
        try:
            conn, _ = self._listen.accept()
        except socket.timeout:
            raise QtestError(f"QEMU did not connect to the qtest socket "
                             f"{self.path} within {self.timeout}s") from None
        finally:
            self._listen.close()
            self._listen = None
        conn.settimeout(self.timeout)
        self._conn = conn

    def _answer(self, line: str) -> str:
        """The next line QEMU sends, within ``timeout``; a QEMU that
        cannot answer any more is seen within :data:`SLICE`."""
        assert self._conn is not None
        deadline = time.monotonic() + self.timeout
        poller = select.poll()  # not select(): fds past 1023
        poller.register(self._conn, select.POLLIN)
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QtestError(f"qtest '{line}': no answer within "
                                 f"{self.timeout}s (QEMU still runs)")
            if not poller.poll(min(SLICE, left) * 1000):
                reason = self.why_silent()
                if reason:
                    raise QtestError(f"qtest '{line}': no answer: {reason}")
                continue
            data = self._conn.recv(65536)
            if not data:
                raise QtestError(f"qtest '{line}': QEMU closed the link"
                                 + (f" ({self.why_silent() or 'exiting'})"))
            self._pending += data
        answer, self._pending = self._pending.split(b"\n", 1)
        return answer.decode("utf-8", "replace")

    def cmd(self, line: str) -> str:
        """Send one command; return what follows ``OK``."""
        if self._conn is None:
            raise QtestError(f"qtest not connected (command: {line})")
        try:
            self._conn.sendall((line + "\n").encode())
            answer = self._answer(line).strip()
        except (socket.timeout, OSError) as exc:
            reason = self.why_silent()
            raise QtestError(f"qtest '{line}': {exc}"
                             + (f" ({reason})" if reason else "")) from None
        if not answer.startswith("OK"):
            raise QtestError(f"qtest '{line}' answered {answer!r}")
        return answer[2:].strip()

    # memory
    def read(self, addr: int, size: int) -> int:
        """readb/readw/readl/readq by ``size`` in bytes."""
        op = {1: "readb", 2: "readw", 4: "readl", 8: "readq"}[size]
        return int(self.cmd(f"{op} 0x{addr:x}"), 16)

    def write(self, addr: int, size: int, value: int) -> None:
        op = {1: "writeb", 2: "writew", 4: "writel", 8: "writeq"}[size]
        self.cmd(f"{op} 0x{addr:x} 0x{value:x}")

    def memread(self, addr: int, length: int) -> bytes:
        """Read guest memory through QEMU (``b64read``)."""
        return base64.b64decode(self.cmd(f"b64read 0x{addr:x} 0x{length:x}"))

    def memwrite(self, addr: int, data: bytes) -> None:
        """Write guest memory through QEMU (``b64write``)."""
        enc = base64.b64encode(data).decode()
        self.cmd(f"b64write 0x{addr:x} 0x{len(data):x} {enc}")

    def memset(self, addr: int, length: int, value: int = 0) -> None:
        self.cmd(f"memset 0x{addr:x} 0x{length:x} 0x{value:x}")

    # port I/O
    def inl(self, port: int) -> int:
        return int(self.cmd(f"inl 0x{port:x}"), 16)

    def outl(self, port: int, value: int) -> None:
        self.cmd(f"outl 0x{port:x} 0x{value:x}")

    def outb(self, port: int, value: int) -> None:
        self.cmd(f"outb 0x{port:x} 0x{value:x}")

    def close(self) -> None:
        if self._listen is not None:
            self._listen.close()
            self._listen = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
