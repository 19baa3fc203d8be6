"""
The guest's serial console, as QEMU's functional tests use it: every byte
goes to a log file, and the test waits for patterns in what arrived.

QEMU serves the console on a UNIX socket (``-chardev socket,server=on,
wait=off`` + ``-serial chardev:``); a reader thread copies it to
``console.log`` and a buffer.  :meth:`GuestConsole.run` types a command
into the guest's shell and waits for a marker that carries its exit
status, so a test knows when a command ended and whether it worked.
"""

from __future__ import annotations

import itertools
import re
import socket
import threading
from typing import List, Tuple

from avocado_vhost.errors import Misbehaved

__all__ = ["GuestConsole", "ConsoleTimeout", "console_args"]

#: output kept in memory for pattern waits (the log file has all of it)
_KEEP = 1 << 20


class ConsoleTimeout(Misbehaved):
    """The guest did not print what a test waited for (a test failure: the
    message has the console's tail)."""


def console_args(path: str) -> List[str]:
    """QEMU arguments that put the first serial port on socket ``path``."""
    return ["-chardev", f"socket,id=con0,path={path},server=on,wait=off",
            "-serial", "chardev:con0"]


class GuestConsole:
    """Connected to QEMU's console socket once QEMU runs.

    :param path: the console socket.
    :param log_path: where every byte goes.
    """

    def __init__(self, path: str, log_path: str):
        self.log_path = log_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._text = ""
        self._dropped = 0  # characters before _text (trimmed)
        self._closed = False
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="guest-console")
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "ab") as log:
            while True:
                try:
                    chunk = self._sock.recv(65536)
                except OSError:
                    chunk = b""
                log.write(chunk)
                log.flush()
                with self._cond:
                    if chunk:
                        self._text += chunk.decode("utf-8", "replace")
                        if len(self._text) > 2 * _KEEP:
                            cut = len(self._text) - _KEEP
                            self._text = self._text[cut:]
                            self._dropped += cut
                    else:
                        self._closed = True
                    self._cond.notify_all()
                if not chunk:
                    return

    @property
    def position(self) -> int:
        """How many characters arrived so far (a mark for waits)."""
        with self._cond:
            return self._dropped + len(self._text)

    def tail(self, chars: int = 1500) -> str:
        with self._cond:
            return self._text[-chars:]

    def wait_for(self, pattern: str, timeout: float, what: str,
                 since: int = 0) -> "re.Match[str]":
        """Until ``pattern`` appears after position ``since``.

        :raise ConsoleTimeout: not within ``timeout`` s, or the console
            closed (QEMU ended); the message has the console's tail.
        """
        return self._wait(pattern, timeout, what, since)[0]

    def _wait(self, pattern: str, timeout: float, what: str,
              since: int) -> Tuple["re.Match[str]", str]:
        """The match, and the text from ``since`` up to it."""
        regex = re.compile(pattern)
        found: List[Tuple["re.Match[str]", str]] = []

        def seen() -> bool:
            start = max(0, since - self._dropped)
            match = regex.search(self._text, start)
            if match:
                found.append((match, self._text[start:match.start()]))
            return bool(found) or self._closed
        with self._cond:
            self._cond.wait_for(seen, timeout)
            closed = self._closed
        if found:
            return found[0]
        raise ConsoleTimeout(
            f"waited {timeout}s for the guest console to show {what} "
            f"(/{pattern}/)" + ("; the console closed (QEMU ended)"
                                if closed else "")
            + f"; console ends:\n{self.tail()}")

    def write(self, text: str) -> None:
        self._sock.sendall(text.encode())

    def run(self, command: str, timeout: float = 30.0,
            check: bool = True) -> Tuple[int, str]:
        """Type ``command`` into the guest's shell; its exit status and
        output.

        :raise ConsoleTimeout: it did not end within ``timeout`` s.
        :raise AssertionError: ``check`` and a non-zero status.
        """
        n = next(self._ids)
        mark = self.position
        # The marker is printed by echo; the typed line (echoed back by the
        # tty) has "$?" where the status will be, so it cannot match.
        self.write(f"{command}; echo AVH-END-{n}-$?-\n")
        match, text = self._wait(rf"AVH-END-{n}-(\d+)-", timeout,
                                 f"the end of '{command}'", mark)
        status = int(match.group(1))
        # drop the echoed command line
        output = text.split("\n", 1)[1] if "\n" in text else ""
        if check and status != 0:
            raise AssertionError(f"guest command '{command}' exited with "
                                 f"{status}:\n{output[-1500:]}")
        return status, output

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)

