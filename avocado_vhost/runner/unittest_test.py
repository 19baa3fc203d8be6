"""
The harness as a plain ``unittest.TestCase``, run the way QEMU runs its
functional tests: ``python3 tests/functional/test_x.py`` prints TAP, and
QEMU's meson runs the files with ``QEMU_TEST_QEMU_BINARY`` and
``QEMU_BUILD_ROOT`` set.

* Parameters come from the environment only (:mod:`avocado_vhost.params`).
* "Cannot run here" (CANCEL under Avocado) is a unittest skip with its
  reason; a broken configuration is an error.
* Logs go where QEMU's CI keeps them (its artifacts glob is ``*.log``):
  ``$QEMU_BUILD_ROOT/tests/functional/<arch>/<test id>/`` -- ``base.log``
  (the test's log, with QMP traffic), ``<vm>.log``, ``<vm>-qtest.log``,
  ``<backend>.trace.log``.  Without ``QEMU_BUILD_ROOT``: ``build/`` in this
  repository.
* Every test has a timeout (class attribute ``timeout``, default 90 s or
  ``AVOCADO_VHOST_TEST_TIMEOUT``): SIGALRM fails it, and tear-down still
  runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import unittest
from types import FrameType
from typing import Iterable, NoReturn, Optional

from avocado_vhost.errors import SetupError
from avocado_vhost import params
from avocado_vhost.harness import Harness
from avocado_vhost.peers.qemu.binary import QemuBinaryError, find_binary, probe
from avocado_vhost.runner.tap import TapRunner

__all__ = ["VhostUserTest", "ConfigurationError", "main", "results_root"]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class ConfigurationError(SetupError):
    """The test cannot start: a parameter, the QEMU binary or the set-up is
    wrong (Avocado's ERROR, not a skip)."""


def results_root() -> str:
    """Where test logs go: QEMU's layout under its build root."""
    build = os.environ.get("QEMU_BUILD_ROOT") or os.path.join(_REPO, "build")
    return os.path.join(build, "tests", "functional")


def _arch() -> str:
    try:
        return probe(find_binary(params.resolve("qemu_bin", None))).arch
    except (QemuBinaryError, params.ParamError, OSError):
        return "unknown"


class VhostUserTest(Harness, unittest.TestCase):
    """Base class of the suite's tests under unittest / TAP."""

    #: seconds (QEMU's runner default; a test file may set its own)
    timeout = int(os.environ.get("AVOCADO_VHOST_TEST_TIMEOUT", "90"))

    def qemu_test_id(self) -> str:
        """``test_file.Class.method``, also when the file runs as
        ``__main__`` (QEMU names log dirs this way)."""
        ident = self.id()
        if ident.startswith("__main__."):
            stem = os.path.splitext(os.path.basename(sys.argv[0]))[0]
            ident = stem + ident[len("__main__"):]
        return ident

    def setUp(self) -> None:
        self.logdir = os.path.join(results_root(), _arch(), self.qemu_test_id())
        # A log dir is reused by the next run of the same test: what the
        # last run wrote must not be mistaken for this run's output.
        shutil.rmtree(self.logdir, ignore_errors=True)
        os.makedirs(self.logdir)
        self.log = logging.getLogger(f"avocado_vhost.test.{self.qemu_test_id()}")
        self.log.setLevel(logging.DEBUG)
        handler = logging.FileHandler(os.path.join(self.logdir, "base.log"),
                                      mode="w")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(name)s %(levelname)s| %(message)s"))
        watched = [self.log, logging.getLogger("qemu"),
                   logging.getLogger("avocado_vhost")]
        for logger in watched:
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)

        def _close_log() -> None:
            for logger in watched:
                logger.removeHandler(handler)
            handler.close()
        self.addCleanup(_close_log)
        self._arm_timeout()
        # unittest runs tearDown only when setUp succeeded; the harness's
        # resources must go either way, so they are released by a cleanup.
        self.addCleanup(self._release)
        super().setUp()

    def tearDown(self) -> None:
        pass  # everything is released by _release (a cleanup)

    def _release(self) -> None:
        Harness.tearDown(self)

    def _arm_timeout(self) -> None:
        def expired(signum: int, frame: Optional[FrameType]) -> None:
            raise TimeoutError(f"{self.id()} exceeded its timeout of "
                               f"{self.timeout} s")
        previous = signal.signal(signal.SIGALRM, expired)
        signal.alarm(self.timeout)
        self.addCleanup(signal.signal, signal.SIGALRM, previous)
        self.addCleanup(signal.alarm, 0)

    def _runner_param(self, name: str) -> Optional[object]:
        return None  # the environment is the only source here

    def _runner_param_names(self) -> Iterable[str]:
        return ()

    def cancel(self, message: Optional[str] = None) -> NoReturn:
        self.log.info("SKIP: %s", message)
        raise unittest.SkipTest(message or "cancelled")

    def error(self, message: Optional[str] = None) -> NoReturn:
        self.log.error("ERROR: %s", message)
        raise ConfigurationError(message)


def main() -> None:
    """``if __name__ == "__main__": main()`` at the end of a test file: run
    its tests with TAP on stdout; exit status 1 on any failure."""
    program = unittest.main(module="__main__", testRunner=TapRunner,
                            exit=False)
    sys.exit(0 if program.result.wasSuccessful() else 1)
