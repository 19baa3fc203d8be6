"""
The harness as an Avocado instrumented test.

Parameters come from ``-p``/yaml-to-mux (``self.params``), then the
environment; CANCEL is ``Test.cancel``; the log directory and ``self.log``
are Avocado's.  Every test has a timeout (class attribute ``timeout``,
scaled by ``-p timeout_factor=``): with none, an Avocado job whose test
process was killed waits forever.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Iterable, Optional

from avocado import Test

from avocado_vhost.harness import Harness
from avocado_vhost.params import PARAMS

__all__ = ["VhostUserTest"]

#: Avocado logs every local variable of a failing test method; a page of
#: guest memory or a trace turns debug.log into megabytes.  Values are cut.
_LOCAL_MAX = 300


class _ShortLocals(logging.Filter):
    """Truncate Avocado's " -> name type: value" local-variable lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == " -> %s %s: %s" and isinstance(record.args, tuple):
            name, kind, value = record.args
            text = str(value)
            if len(text) > _LOCAL_MAX:
                text = f"{text[:_LOCAL_MAX]}... ({len(text)} characters)"
            record.args = (name, kind, text)
        return True


class VhostUserTest(Harness, Test):
    """Base class of the suite's tests under Avocado."""

    #: seconds; QEMU's runner default (a test file may set its own)
    timeout = 90

    def setUp(self) -> None:
        self.log.addFilter(_ShortLocals())
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        # results.json and the HTML report show it; the vhost result
        # plugin turns it into fields of results.json.
        self.whiteboard = json.dumps(self.run_info())

    def _runner_param(self, name: str) -> Optional[object]:
        """``-p name=``; else, unless the environment variable is set, the
        ``vhost.<name>`` setting of Avocado's configuration."""
        value: Optional[object] = self.params.get(name, default=None)
        if value is None and PARAMS[name].env not in os.environ:
            value = self._config.get(f"vhost.{name}")
        return value

    def _runner_result_fd(self) -> Optional[int]:
        # Avocado's instrumented runner hands its result queue to the test
        # process as sys.stdout (messages.StreamToQueue).
        writer = getattr(getattr(sys.stdout, "queue", None), "_writer", None)
        try:
            return int(writer.fileno()) if writer is not None else None
        except (OSError, ValueError):
            return None

    def _runner_param_names(self) -> Iterable[str]:
        return {key for _, key, _ in self.params.iteritems()}
