"""
A TAP (Test Anything Protocol) runner for unittest, as QEMU's meson runs
functional tests: ``1..N`` first, then ``ok``/``not ok`` per test, skips as
``ok N - name # SKIP reason``.  Details of a failure go to stderr (and the
test's own log), so the TAP stream on stdout stays parseable.
"""

from __future__ import annotations

import sys
import unittest
from typing import Any, Optional, TextIO, Union

__all__ = ["TapRunner"]


class _TapResult(unittest.TestResult):

    def __init__(self, out: TextIO, err: TextIO, total: int):
        super().__init__()
        self.out, self.err = out, err
        self.number = 0
        out.write(f"1..{total}\n")
        out.flush()

    def _line(self, test: unittest.TestCase, ok: bool,
              directive: str = "") -> None:
        self.number += 1
        word = "ok" if ok else "not ok"
        name = getattr(test, "qemu_test_id", test.id)()
        self.out.write(f"{word} {self.number} - {name}{directive}\n")
        self.out.flush()

    def _details(self, what: str, test: unittest.TestCase, text: str) -> None:
        self.err.write(f"# {what}: {test.id()}\n")
        for line in text.rstrip().splitlines():
            self.err.write(f"# {line}\n")
        self.err.flush()

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._line(test, True)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._line(test, True, f" # SKIP {reason}".replace("\n", " "))

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._line(test, False)
        self._details("FAIL", test, self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._line(test, False)
        self._details("ERROR", test, self.errors[-1][1])

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._line(test, True, " # TODO expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._line(test, False, " # unexpected success")


class TapRunner:
    """``unittest.main(testRunner=TapRunner)``."""

    def __init__(self, stream: Optional[TextIO] = None, **_: Any):
        self.out = stream or sys.stdout

    def run(self, test: Union[unittest.TestSuite, unittest.TestCase]
            ) -> unittest.TestResult:
        result = _TapResult(self.out, sys.stderr, test.countTestCases())
        test.run(result)
        return result
