"""
DPDK's ``dpdk-testpmd`` as a vhost-user peer nobody here wrote.

:class:`Testpmd` runs testpmd in interactive mode with one virtual device:
``net_virtio_user`` (a vhost-user *front-end* and virtio driver in user
space, polling its rings from another CPU) or ``net_vhost`` (DPDK's own
vhost-user *back-end*).  Commands go to its stdin; its output is read by a
thread into ``testpmd.log`` and waits are for the ``testpmd>`` prompt or a
pattern, bounded, with the output seen in the error.

It runs without hugepages or PCI (``--no-huge --no-pci``) with a private
``--file-prefix``, under ``setpriv --pdeathsig KILL`` from the launcher
thread so that it dies with the test process, and :meth:`Testpmd.close`
kills it and removes its runtime directory whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from avocado_vhost.errors import Misbehaved, NotAvailable
from avocado_vhost.peers.qemu.launcher import call_in_launcher, die_with_parent
from avocado_vhost.plumbing.phases import phase
from avocado_vhost.plumbing.tmpdirs import dpdk_runtime_base

if TYPE_CHECKING:
    from avocado_vhost.harness import Harness

__all__ = ["Testpmd", "TestpmdError", "NoTestpmd", "PortStats", "find_testpmd",
           "start_testpmd",
           "TESTPMD_PACKAGE", "SERVER_WAITING"]

#: The Debian package with dpdk-testpmd (``dpdk`` has only the libraries).
TESTPMD_PACKAGE = "dpdk-dev"

_PROMPT = "testpmd> "
#: What virtio-user with ``server=1`` prints once it listens; it waits for
#: its client before testpmd goes on.
SERVER_WAITING = r"waiting for client connection"


class TestpmdError(Misbehaved):
    """testpmd did not start, answer, or stay alive."""


class NoTestpmd(NotAvailable):
    """This host has no dpdk-testpmd."""


@dataclass(frozen=True)
class PortStats:
    """One port's counters from testpmd's forward statistics."""

    rx_packets: int
    rx_dropped: int
    tx_packets: int
    tx_dropped: int


def find_testpmd(name: Optional[str] = None) -> Optional[str]:
    """The testpmd binary: ``name`` if given, else ``dpdk-testpmd`` on
    PATH; None when there is none."""
    return shutil.which(name or "dpdk-testpmd")


def runtime_dir(prefix: str) -> str:
    """Where DPDK's EAL keeps its files for ``--file-prefix=prefix``."""
    return os.path.join(dpdk_runtime_base(), prefix)


class Testpmd:
    """One interactive testpmd.

    :param binary: the dpdk-testpmd executable.
    :param prefix: unique per instance (EAL's ``--file-prefix``).
    :param vdev: the ``--vdev`` argument.
    :param log_path: where its whole output goes.
    :param app_args: testpmd's own arguments (after ``--``).
    :param cores: ``-l`` (the main lcore first; DPDK gives the forwarding
        thread the others: on two CPUs, one each).
    """

    def __init__(self, binary: str, prefix: str, vdev: str, log_path: str,
                 app_args: Sequence[str] = (), cores: str = "0-1"):
        self.args = [
            "stdbuf", "-oL", binary, "-l", cores, "--no-pci", "--no-huge",
            "-m", "256", "--single-file-segments", f"--file-prefix={prefix}",
            f"--vdev={vdev}", "--", "-i", "--total-num-mbufs=16384",
            *app_args]
        self.prefix = prefix
        self.log_path = log_path
        self._out = ""
        self._cond = threading.Condition()
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[threading.Thread] = None

    # --- process -----------------------------------------------------------
    def start(self, timeout: float = 20.0,
              until: Optional[str] = None) -> None:
        """Start it and wait for ``until`` in its output (default: its
        first prompt; a server waits for its client before it prompts, see
        :data:`SERVER_WAITING`)."""
        self._proc = call_in_launcher(lambda: subprocess.Popen(
            die_with_parent(self.args), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True))
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"testpmd-{self.prefix}")
        self._reader.start()
        self.wait_output(until or re.escape(_PROMPT), timeout, "start-up")

    def wait_prompt(self, timeout: float = 20.0) -> None:
        """Until its first prompt."""
        self.wait_output(re.escape(_PROMPT), timeout, "first prompt")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with open(self.log_path, "ab") as log:
            while True:
                chunk = os.read(fd, 65536)
                log.write(chunk)
                log.flush()
                with self._cond:
                    if chunk:
                        self._out += chunk.decode("utf-8", "replace")
                    else:
                        self._out += "\n[testpmd output closed]\n"
                    self._cond.notify_all()
                if not chunk:
                    return

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.poll() if self._proc is not None else None

    def describe_exit(self) -> str:
        """How it ended, as a reader wants it ("killed by SIGSEGV")."""
        code = self.returncode
        if code is None:
            return "running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def kill(self) -> None:
        """SIGKILL (a front-end that vanishes without a word)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def close(self, timeout: float = 10.0) -> None:
        """Quit politely if it is alive, else kill; remove its runtime
        directory.  Always returns."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self.send("quit")
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(10)
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(runtime_dir(self.prefix), ignore_errors=True)

    # --- conversation --------------------------------------------------------
    @property
    def output(self) -> str:
        with self._cond:
            return self._out

    def send(self, line: str) -> int:
        """Write a command; returns the output offset before it."""
        assert self._proc is not None and self._proc.stdin is not None
        with self._cond:
            mark = len(self._out)
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()
        return mark

    def wait_output(self, pattern: str, timeout: float, what: str,
                    since: int = 0) -> "re.Match[str]":
        """Until ``pattern`` appears in the output after offset ``since``.

        :raise TestpmdError: on timeout, or when testpmd exits first; the
            message has the output's tail and how it ended.
        """
        regex = re.compile(pattern)
        found: List["re.Match[str]"] = []

        def seen() -> bool:
            match = regex.search(self._out, since)
            if match:
                found.append(match)
                return True
            return self._out.endswith("[testpmd output closed]\n")
        with self._cond:
            self._cond.wait_for(seen, timeout)
            tail = self._out[-1500:]
        if found:
            return found[0]
        raise TestpmdError(
            f"waited {timeout}s for testpmd's {what} (/{pattern}/); testpmd "
            f"{self.describe_exit()}; its output ends:\n{tail}")

    def command(self, line: str, timeout: float = 20.0) -> str:
        """Run one command; its output up to the next prompt."""
        mark = self.send(line)
        match = self.wait_output(re.escape(_PROMPT), timeout,
                                 f"prompt after '{line}'", since=mark)
        return self.output[mark:match.start()]

    def stop_forwarding(self, timeout: float = 20.0) -> Dict[int, PortStats]:
        """``stop``; the per-port forward statistics it prints."""
        return parse_forward_stats(self.command("stop", timeout))


_STATS = re.compile(
    r"Forward statistics for port (\d+)\s+-+\s+"
    r"RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+)\s+RX-total:\s*\d+\s+"
    r"TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)")


def parse_forward_stats(text: str) -> Dict[int, PortStats]:
    """The per-port blocks of testpmd's ``stop`` output."""
    stats = {int(m.group(1)): PortStats(*(int(m.group(i))
                                          for i in range(2, 6)))
             for m in _STATS.finditer(text)}
    if not stats:
        raise TestpmdError(f"no forward statistics in testpmd's output:\n"
                           f"{text[-1500:]}")
    return stats


def start_testpmd(test: "Harness", name: str, vdev: str,
                  app_args: Sequence[str] = (),
                  until: Optional[str] = None) -> Testpmd:
    """A started dpdk-testpmd for ``test`` (its output in
    ``<logdir>/<name>.log``), closed at tear-down; CANCEL where there is
    none.

    :param until: return once its output matches this (default: its first
        prompt).
    """
    binary = find_testpmd(test.param("testpmd"))
    if binary is None:
        raise NoTestpmd(f"no dpdk-testpmd (Debian package {TESTPMD_PACKAGE}, "
                    "which ./setup.sh installs; or -p testpmd=PATH)")
    prefix = f"{os.path.basename(test.workdir_short)}-{name}"
    testpmd = Testpmd(binary, prefix, vdev,
                      os.path.join(test.logdir, f"{name}.log"), app_args)
    test.cleanup(testpmd.close)
    with phase("testpmd-start"):
        testpmd.start(test.scaled(30), until)
    return testpmd
