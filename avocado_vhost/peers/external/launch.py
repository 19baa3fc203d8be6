"""
Starting the back-end under test for the external scenarios.

The back-end is ``-p backend=NAME`` (a back-end of the kit,
:mod:`.backends`) or ``-p backend_cmd=TEMPLATE`` (your own, with
``-p backend_device=net|blk``).  A scenario written for another device
type CANCELs, naming the one it needs; no back-end at all CANCELs too.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Callable, List, Optional, Tuple

from avocado_vhost.errors import NotAvailable, SetupError
from avocado_vhost.peers.qemu.launcher import call_in_launcher, die_with_parent
from avocado_vhost.peers.qemu.watch import FolderWatch
from avocado_vhost.peers.external.backends import (BACKENDS, cleanup, ended,
                                                   fill, listening)

if TYPE_CHECKING:
    from avocado_vhost.harness import Harness

__all__ = ["ExternalBackend", "NoExternalBackend", "ExternalBackendError",
           "choose", "start", "start_backend", "ended",
           "deaths"]


@dataclass(frozen=True)
class ExternalBackend:
    """The back-end a run puts under test."""

    #: the kit's name for it, or "custom" for a backend_cmd
    name: str
    device: str
    template: str


class NoExternalBackend(NotAvailable):
    """No external back-end was named, or it is not installed here, or it
    serves another device than the scenario's."""


class ExternalBackendError(SetupError):
    """The back-end named is unknown, or would not start listening."""



def choose(test: "Harness", device: str) -> ExternalBackend:
    """The back-end under test, if it serves ``device``; CANCEL (or ERROR
    for a name the kit does not know) otherwise."""
    name = test.param("backend")
    if name:
        known = BACKENDS.get(name)
        if known is None:
            raise ExternalBackendError(f"-p backend={name}: the kit knows "
                                       f"{', '.join(sorted(BACKENDS))}")
        template = known.template()
        if template is None:
            raise NoExternalBackend(known.missing())
        chosen = ExternalBackend(known.name, known.device, template)
    else:
        template = test.param("backend_cmd")
        if not template:
            raise NoExternalBackend(
                "no external back-end: give -p backend=NAME ("
                f"{', '.join(sorted(BACKENDS))}) or -p "
                "backend_cmd='COMMAND ... {socket} ...'")
        chosen = ExternalBackend("custom", test.param("backend_device")
                                 or "net", template)
    if chosen.device != device:
        raise NoExternalBackend(f"a {device} scenario; the back-end under "
                                f"test ({chosen.name}) serves "
                                f"{chosen.device}")
    test.found.external_backend = chosen.name
    return chosen


def start(test: "Harness", backend: ExternalBackend, name: str,
          queues: int, log: IO[bytes],
          on_finish: Callable[[Callable[[], None]], None]
          ) -> "subprocess.Popen[bytes]":
    """Start ``backend`` listening at ``<tmp>/<name>.sock`` and return once
    it listens; killed (and its leftovers removed) by ``on_finish``'s
    callback at tear-down."""
    sock = test.socket_path(name)
    if os.path.exists(sock):  # left by a previous instance that died
        os.unlink(sock)
    unique = f"{os.path.basename(test.workdir_short)}-{name}"
    argv = shlex.split(fill(backend.template, sock, unique,
                            test.workdir_short, queues))
    proc: "subprocess.Popen[bytes]" = call_in_launcher(
        lambda: subprocess.Popen(die_with_parent(argv),
                                 stdin=subprocess.PIPE,
                                 stdout=log, stderr=subprocess.STDOUT))
    test.log.info("external back-end %s: %s", name, " ".join(argv))
    test.found.external_procs.append((name, proc))

    def finish() -> None:
        how = ended(proc)
        test.log.info("external back-end %s at tear-down: %s", name,
                      how or "running (killed now)")
        if proc.poll() is None:
            proc.kill()
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)
        cleanup(unique)
    on_finish(finish)
    deadline = time.monotonic() + test.scaled(30)
    watch = FolderWatch([test.workdir_short])
    try:  # the socket file appears at bind(): an inotify event
        watch.wait(lambda: os.path.exists(sock) or proc.poll() is not None,
                   f"the external back-end to create {sock}",
                   test.scaled(30))
    finally:
        watch.close()
    # listen() follows at once but raises no event: look every 2 ms,
    # ending early if the process dies, bounded by the deadline
    pidfd = os.pidfd_open(proc.pid)
    try:
        while not listening(sock) and proc.poll() is None:
            if time.monotonic() >= deadline:
                raise ExternalBackendError(
                    f"{sock} exists but the external back-end does not "
                    f"listen on it; see {name}.log")
            select.select([pidfd], [], [], 0.002)
    finally:
        os.close(pidfd)
    if proc.poll() is not None:
        raise ExternalBackendError(
            f"the external back-end exited with {proc.returncode} before "
            f"it listened; see {name}.log")
    return proc



def start_backend(test: "Harness", name: str, queues: int = 1,
                  device: str = "net",
                  backend: Optional[ExternalBackend] = None
                  ) -> Tuple["subprocess.Popen[bytes]", str]:
    """Start the back-end under test (``-p backend=`` or ``-p
    backend_cmd=``; or ``backend``, a test's own) listening at
    ``<tmp>/<name>.sock``; CANCEL when there is none or it serves another
    device.  Its output goes to ``<logdir>/<name>.log``.

    :return: its process and its socket.
    """
    if backend is None:
        backend = choose(test, device)
    log = open(os.path.join(test.logdir, f"{name}.log"), "ab")
    test.cleanup(log.close)
    proc = start(test, backend, name, queues, log, test.cleanup)
    return proc, test.socket_path(name)


def deaths(test: "Harness") -> List[str]:
    """The back-ends of this test that died of a signal the test did not
    send (SIGKILL is how the reconnect scenarios stop one): a crash."""
    return [f"the external back-end {name} was {ended(proc)}"
            for name, proc in test.found.external_procs
            if proc.poll() is not None and proc.returncode < 0
            and proc.returncode != -signal.SIGKILL]
