"""
``VhostUserTest``, the base class of every functional test, for whichever
runner is running the test file.

Under Avocado (``avocado run tests/functional``) it is an Avocado
instrumented test (:mod:`.runner.avocado_test`); anywhere else -- ``python3
tests/functional/test_x.py``, QEMU's meson runner, ``python -m unittest`` --
it is a ``unittest.TestCase`` that prints TAP (:mod:`.runner.unittest_test`).
The harness itself (:mod:`.harness`) is the same in both.  Avocado's
instrumented runner has imported its runner module before it imports the
test file: that is how the runner is told apart.

Each test file ends with::

    if __name__ == "__main__":
        main()
"""

from __future__ import annotations

import sys

__all__ = ["VhostUserTest", "main", "UNDER_AVOCADO"]

#: whether Avocado's instrumented runner is running this process's tests
UNDER_AVOCADO = "avocado.plugins.runners.avocado_instrumented" in sys.modules

if UNDER_AVOCADO:
    from avocado_vhost.runner.avocado_test import VhostUserTest
    from avocado_vhost.runner.unittest_test import main
else:
    from avocado_vhost.runner.unittest_test import main
    from avocado_vhost.runner.unittest_test import (  # type: ignore
        VhostUserTest)
