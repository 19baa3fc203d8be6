"""
The back-end under fuzz, as a process the fuzzer watches.

Given a command (``... {socket} ...``), the fuzzer starts the back-end
itself, in a folder of its own, and can start it again: for every replay
while a failing run is cut down, and after a finding.  Given only a socket
(and optionally ``--pid``), it connects to a back-end someone else runs and
can tell less: no restart, so no minimising.

What is watched: the process's end (an exit, or a signal: SIGSEGV, SIGABRT
and the like are crashes), its resident memory and its open fds (growth
without bound is a finding: a back-end keeps only what the current
connection gave it).
"""

from __future__ import annotations

import os
import select
import shlex
import subprocess
import time
from typing import IO, Optional

from avocado_vhost.errors import SetupError
from avocado_vhost.peers.external.backends import (cleanup, ended, fill,
                                                   listening)
from avocado_vhost.peers.qemu.launcher import die_with_parent
from avocado_vhost.peers.qemu.watch import FolderWatch

__all__ = ["Target", "TargetError"]


class TargetError(SetupError):
    """The back-end could not be started or reached (set-up, not a
    finding): the text says what was awaited and what was seen."""


class Target:
    """A back-end listening at ``socket_path``.

    :param command: a template, started with its placeholders replaced
        (:func:`avocado_vhost.peers.external.backends.fill`: ``{socket}``, ``{dir}``,
        ``{name}``, ``{disk}``, ``{port}``); ``None`` for a back-end run by someone
        else (``pid`` then names it, if known).
    :param log: the started process's stdout and stderr go here.
    """

    def __init__(self, socket_path: str, command: Optional[str] = None,
                 pid: Optional[int] = None, log: Optional[IO[bytes]] = None,
                 start_timeout: float = 10.0, name: Optional[str] = None):
        self.socket_path = socket_path
        self.command = command
        self.pid = pid
        self.log = log
        self.start_timeout = start_timeout
        #: unique to the run (default: its folder's name): DPDK's file
        #: prefix, the disk image's name
        self.name = name or os.path.basename(os.path.dirname(socket_path))
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.starts = 0
        #: readable once the process ends (pidfd_open), for the waits to
        #: include: a death is seen at once, not at the next timeout
        self.pidfd: Optional[int] = None
        if command is None and pid is not None:
            try:  # someone else's back-end: watched, never restarted
                self.pidfd = os.pidfd_open(pid)
            except OSError:
                pass

    @property
    def restartable(self) -> bool:
        return self.command is not None

    def start(self) -> None:
        """Start the back-end (once more) and return when its socket takes
        connections."""
        if self.command is None:
            if not self._accepts():
                raise TargetError(f"nothing accepts connections on "
                                  f"{self.socket_path}")
            return
        self.stop()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        folder = os.path.dirname(self.socket_path)
        argv = shlex.split(fill(self.command, self.socket_path,
                                self.name, folder))
        # stdin stays open and silent: some (testpmd) end at its EOF
        self.proc = subprocess.Popen(die_with_parent(argv),
                                     stdin=subprocess.PIPE,
                                     stdout=self.log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        watch = FolderWatch([folder])
        try:  # the socket file appears at bind(): an inotify event
            watch.wait(lambda: os.path.exists(self.socket_path)
                       or self.ended() is not None,
                       f"the back-end to create {self.socket_path}",
                       self.start_timeout)
        except TimeoutError as exc:
            raise TargetError(str(exc)) from None
        finally:
            watch.close()
        # listen() follows bind() at once but raises no event: look every
        # 2 ms (ending early if the process dies), bounded by the deadline
        while not self._accepts() and self.ended() is None:
            if time.monotonic() >= deadline:
                raise TargetError(f"{self.socket_path} exists but nothing "
                                  f"listens on it after {self.start_timeout}"
                                  " s")
            assert self.pidfd is not None
            select.select([self.pidfd], [], [], 0.002)
        if self.ended() is not None:
            raise TargetError(f"the back-end {self.ended()} before it "
                              f"listened: {self.command}")

    def _accepts(self) -> bool:
        return listening(self.socket_path)

    def ended(self) -> Optional[str]:
        """How the process ended ("killed by SIGSEGV", "exited with 1"),
        or None while it runs (or when it cannot be known)."""
        if self.proc is not None:
            return ended(self.proc)
        if self.pid is not None and (
                not os.path.exists(f"/proc/{self.pid}") or (
                    self.pidfd is not None
                    and select.select([self.pidfd], [], [], 0)[0])):
            return "ended (not started here: its exit status is unknown)"
        return None

    def crashed(self) -> bool:
        """Ended by a signal nobody here sent."""
        return bool(self.proc is not None and self.proc.returncode is not None
                    and self.proc.returncode < 0)

    def rss_kib(self) -> Optional[int]:
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, ValueError, TypeError):
            pass
        return None

    def open_fds(self) -> Optional[int]:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except (OSError, TypeError):
            return None

    def stop(self) -> None:
        """Kill a back-end this fuzzer started (always returns)."""
        proc, self.proc = self.proc, None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover (D state)
            pass
        cleanup(self.name)
