"""
A QEMU VM with a vhost-user device, described as data and launched with
``qemu.machine.QEMUMachine``.

:class:`.spec.VMSpec` says what the VM is and builds the command line;
:class:`VhostVM` launches it, connects qtest, drives the device
to DRIVER_OK and shuts it down.  QEMU is started under
``setpriv --pdeathsig KILL`` so that it dies with the test process even when
that process is killed (QEMUMachine has no kill-on-exit of its own).
"""

from __future__ import annotations

import os
import signal
import re
import subprocess
import time
from concurrent import futures
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from qemu.machine.machine import AbnormalShutdown
from qemu.qmp.protocol import StateError
from qemu.qmp.qmp_client import ExecInterruptedError

from avocado_vhost.plumbing.phases import phase
from avocado_vhost.vhost_user.connection import check_socket_path
from avocado_vhost.peers.qemu.driver import DriverQueue, PackedDriverQueue
from avocado_vhost.peers.qemu.launcher import (call_in_launcher,
                                               die_with_parent,
                                               submit_to_launcher)
from avocado_vhost.peers.qemu.machine import VhostMachine, early_events
from avocado_vhost.peers.qemu.platform import BUFFER_WINDOW, RING_WINDOW
from avocado_vhost.peers.qemu.qtest import QtestLink
from avocado_vhost.peers.qemu.virtio_pci import (GuestAllocator,
                                                 VirtioPciDevice,
                                                 VIRTIO_VENDOR, config_space,
                                                 find_function,
                                                 modern_device_id)
from avocado_vhost.peers.qemu.spec import DEVICE_TYPES, VMSpec
from avocado_vhost.peers.qemu.watch import FolderWatch

__all__ = ["VhostVM"]

_MTREE_RAM = re.compile(
    r"^\s+([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ram\): (\S+)")

#: a QMP event to wait for: its name, and fields it must match (or None)
EventSpec = Tuple[str, Optional[Dict[str, Any]]]

#: how soon :meth:`VhostVM.events_or_exit` sees that QEMU has died
EXIT_SEEN_WITHIN = 0.25


class VhostVM:
    """A launched (or launchable) VM: QEMUMachine + qtest + test driver.

    :param spec: the VM description.
    :param log_dir: where QEMU's output goes (``<name>.log``).
    :param qtest: connect a qtest socket (needed to drive the device).
    """

    def __init__(self, spec: VMSpec, log_dir: str, qtest: bool = True,
                 qmp_timeout: float = 30.0):
        self._check_socket_paths(spec)
        self.spec = spec
        self.log_dir = log_dir
        self.qtest: Optional[QtestLink] = (
            QtestLink(os.path.join(spec.workdir, f"{spec.name}.qt"),
                      log_path=os.path.join(log_dir,
                                            f"{spec.name}-qtest.log"))
            if qtest else None)
        if self.qtest is not None:
            self.qtest.why_silent = self.why_silent
        # A monitor socket path (not a socketpair) bounds QMP's start-up
        # with qmp_timer: a QEMU stuck before its monitor runs fails the
        # launch instead of hanging it.
        self.machine = VhostMachine(
            spec.binary, args=spec.args() + (
                self.qtest.qemu_args if self.qtest else []),
            wrapper=die_with_parent([]), name=spec.name, base_temp_dir=spec.workdir,
            monitor_address=os.path.join(spec.workdir, f"{spec.name}.qmp"),
            log_dir=log_dir, qmp_timer=qmp_timeout, qtest=self.qtest)
        self.device: Optional[VirtioPciDevice] = None

    @property
    def name(self) -> str:
        return self.spec.name

    @staticmethod
    def _check_socket_paths(spec: VMSpec) -> None:
        """UNIX socket paths are limited to 107 bytes; QEMU would fail with
        a less helpful message, or the bind would fail much later."""
        paths = [spec.vhost_socket,
                 os.path.join(spec.workdir, f"{spec.name}.qmp"),
                 os.path.join(spec.workdir, f"{spec.name}.qt")]
        if spec.incoming and spec.incoming.startswith("unix:"):
            paths.append(spec.incoming[len("unix:"):])
        for path in paths:
            check_socket_path(path)

    def launch(self, connect: Optional[Callable[[str], None]] = None,
               timeout: float = 30.0) -> None:
        """Start QEMU; return once QMP (and qtest: the machine's launch
        hook accepts it) are connected.

        :param connect: for ``vhost_server``: called with the socket path
            once QEMU listens on it.  QEMU's vhost-user netdev blocks its
            start-up until a back-end connects (even with ``wait=off``), so
            the back-end must connect while ``launch()`` is under way: QEMU
            announces "waiting for connection" in its log, and that is
            awaited with inotify, not by polling.
        """
        with phase("qemu-launch"):
            if connect is None:
                call_in_launcher(self.machine.launch)
            else:
                self._launch_and_connect(connect, timeout)

    def _qemu_waits_for_backend(self) -> bool:
        try:
            with open(self.log_path, encoding="utf-8",
                      errors="replace") as log:
                # The line names the socket: output of another run in the
                # same log dir cannot match.
                return any("waiting for connection on" in line
                           and self.spec.vhost_socket in line for line in log)
        except FileNotFoundError:
            return False

    def _launch_and_connect(self, connect: Callable[[str], None],
                            timeout: float) -> None:
        watch = FolderWatch([os.path.dirname(self.log_path)])
        started = submit_to_launcher(self.machine.launch)
        try:
            if watch.wait(self._qemu_waits_for_backend,
                          f"QEMU to listen on {self.spec.vhost_socket}",
                          timeout, also=started):
                connect(self.spec.vhost_socket)
        except BaseException:
            # QEMU would wait for the back-end forever: end it, so that
            # launch() fails now rather than at its QMP timeout.
            pid = self.machine.get_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            raise
        finally:
            watch.close()
            # Nothing may touch the machine while launch() still runs.
            futures.wait([started], timeout=timeout)
        started.result()

    @property
    def log_path(self) -> str:
        """QEMU's output (QEMUMachine writes ``<log_dir>/<name>.log``)."""
        return os.path.join(self.log_dir, f"{self.spec.name}.log")

    def log_text(self) -> str:
        """What QEMU has written to its output so far ("" before launch):
        QEMU writes its errors unbuffered, so a step QEMU took
        synchronously (a qtest write, a QMP command) has said its part."""
        try:
            with open(self.log_path, encoding="utf-8",
                      errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 3) -> str:
        """The last ``lines`` lines QEMU wrote, on one line (`` | ``
        between them): for a failure message."""
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def drive_device(self, features: int = 0, queues: Optional[int] = None,
                     queue_size: int = 256,
                     window: Tuple[int, int] = RING_WINDOW,
                     msix: bool = False,
                     dma_offset: int = 0) -> VirtioPciDevice:
        """Bring the vhost-user device to DRIVER_OK from the test.

        :param window: guest RAM (offsets from the RAM base) where the
            driver lays out its rings.
        :param dma_offset: the device names guest address ``g`` as ``g +
            dma_offset`` (a vIOMMU mapping the test programmed).
        """
        assert self.qtest is not None, "driving the device needs qtest"
        platform = self.spec.platform
        vtype = DEVICE_TYPES[self.spec.device]
        with phase("driver-setup"):
            func = find_function(config_space(self.qtest, platform),
                                 VIRTIO_VENDOR, modern_device_id(vtype))
            self.device = VirtioPciDevice(self.qtest, func, platform.bar_base)
            self.device.dma_offset = dma_offset
            self.device.setup(GuestAllocator(*platform.window(window)),
                              features, queues, queue_size, msix)
        return self.device

    def net_queues(self) -> List[DriverQueue]:
        """Test-side drivers for every queue of the driven device, with
        buffers in guest RAM above the rings (:data:`.BUFFER_WINDOW`)."""
        assert self.device is not None and self.qtest is not None, \
            "drive the device first"
        alloc = GuestAllocator(*self.spec.platform.window(BUFFER_WINDOW))
        kind = PackedDriverQueue if self.device.packed else DriverQueue
        return [kind(self.qtest, q, alloc) for q in self.device.queues]

    def qmp(self, cmd: str, **args: object) -> object:
        """Run a QMP command and return its result (raises on error).

        :raise TimeoutError: QEMU is stopped by a signal: the answer would
            never come (QEMUMachine's commands have no bound).
        """
        if self._stopped():
            raise TimeoutError(f"{self.name}: QMP {cmd}: QEMU is stopped "
                               "by a signal")
        return self.machine.cmd(cmd, args_dict=args)

    def ram_ranges(self, memdev: str = "mem0") -> List[Tuple[int, int]]:
        """``(guest address, size)`` of every range where the system
        address space shows the RAM of ``memdev`` (``info mtree -f``).

        This is QEMU's own view: ROM and option-ROM windows (0xC0000 to
        0xFFFFF) hide the RAM beneath them.  The back-end's memory table may
        cover those windows too (with huge pages QEMU sends one aligned
        region), so a comparison with what QEMU shows must use these ranges.
        """
        out = self.machine.cmd("human-monitor-command",
                               args_dict={"command-line": "info mtree -f"})
        ranges: List[Tuple[int, int]] = []
        in_system = False
        for line in str(out).splitlines():
            if line.startswith("FlatView"):
                in_system = False
            elif line.strip() == 'AS "memory", root: system':
                in_system = True
            elif in_system:
                match = _MTREE_RAM.match(line)
                if match and match.group(3) == memdev:
                    start, end = (int(match.group(i), 16) for i in (1, 2))
                    ranges.append((start, end - start + 1))
        return ranges

    # --- what tests ask of the process (not of QEMUMachine) ----------------
    def is_running(self) -> bool:
        return bool(self.machine.is_running())

    @property
    def exitcode(self) -> Optional[int]:
        """QEMU's exit code once it ended (negative: the signal)."""
        code = self.machine.exitcode()
        return None if code is None else int(code)

    @property
    def pid(self) -> Optional[int]:
        pid = self.machine.get_pid()
        return None if pid is None else int(pid)

    def _stopped(self) -> bool:
        """QEMU is stopped by a signal (SIGSTOP, a debugger): it runs no
        code and answers nothing until continued."""
        pid = self.pid
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                # "pid (comm) S ...": comm may hold spaces and parentheses
                return stat.read().rsplit(")", 1)[1].split()[0] in "tT"
        except (OSError, IndexError):
            return False

    def why_silent(self) -> Optional[str]:
        """Why QEMU cannot answer at all (it exited, or a signal stopped
        it), or None while it might: asked between the slices of a wait,
        so that such a QEMU is seen at once rather than at the wait's
        bound."""
        code = self.machine._subp.poll() if self.machine._subp else None
        if code is not None:
            return (f"QEMU exited (killed by signal {-code})" if code < 0
                    else f"QEMU exited with code {code}")
        if self._stopped():
            return "QEMU is stopped by a signal (SIGSTOP, or a debugger)"
        return None

    def event_wait(self, name: str, timeout: float
                   ) -> Optional[Dict[str, Any]]:
        """The next QMP event ``name`` within ``timeout`` s (None if none)."""
        event = self.machine.event_wait(name, timeout=timeout)
        return None if event is None else dict(event)

    def events_wait(self, events: Sequence[EventSpec],
                    timeout: float) -> Optional[Dict[str, Any]]:
        """The first of ``events`` (name, match) within ``timeout`` s."""
        event = self.machine.events_wait(list(events), timeout=timeout)
        return None if event is None else dict(event)

    def events_or_exit(self, events: Sequence[EventSpec], timeout: float,
                       what: str) -> Optional[Dict[str, Any]]:
        """The first of ``events``, or None as soon as QEMU has exited
        (seen within :data:`EXIT_SEEN_WITHIN` s: QMP gives no event for a
        process that died, so the wait is cut into slices that look at the
        process between them).

        :raise TimeoutError: neither within ``timeout``; names ``what``.
        """
        deadline = time.monotonic() + timeout
        while self.machine.is_running():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {what} within "
                                   f"{timeout}s (QEMU still runs)")
            if self._stopped():
                raise TimeoutError(f"{self.name}: no {what}: QEMU is "
                                   "stopped by a signal")
            try:
                event = self.machine.events_wait(
                    list(events), timeout=min(left, EXIT_SEEN_WITHIN))
            except TimeoutError:
                continue
            except (ConnectionError, EOFError, StateError):
                break  # the monitor went away with QEMU
            if event is not None:
                return dict(event)
        self.wait_exit(EXIT_SEEN_WITHIN * 4)
        return None

    def early_events(self) -> List[Dict[str, Any]]:
        """QMP events QEMU sent before its capabilities reply (QEMU 10's
        race, see :mod:`.machine`)."""
        return early_events(self.machine)

    def wait_exit(self, timeout: float) -> Optional[int]:
        """Wait up to ``timeout`` s for QEMU to end by itself (a link that
        broke mid-answer means it is dying); its exit code (negative: the
        signal), or None while it still runs."""
        popen = self.machine._subp  # QEMUMachine has no bounded wait
        try:
            return popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def shutdown(self) -> None:
        """Stop QEMU (quit, then kill) and close the qtest link."""
        with phase("qemu-shutdown"):
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            if self.machine.is_running() and self._stopped():
                # Frozen by a signal: it would never answer "quit".
                self.machine.kill()
            elif self.machine.is_running():
                try:
                    self.machine.shutdown(timeout=10)
                except AbnormalShutdown as exc:
                    # It was exiting on its own (a failed incoming
                    # migration) as "quit" went out: the monitor hung up
                    # instead of answering.  Anything else is a real hang.
                    if not isinstance(exc.__cause__, (ExecInterruptedError,
                                                      EOFError,
                                                      ConnectionError)):
                        raise
            else:
                # Exited by itself (a failed migration, a crash): collect
                # it without asking a dead monitor to quit.
                self.machine.wait(timeout=10)
        finally:
            if self.qtest is not None:
                self.qtest.close()
