"""The runner-independent pieces: parameters, the TAP runner, and the temp
dirs a dead test process leaves."""

import io
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

from avocado_vhost import params
from avocado_vhost.runner.tap import TapRunner
from avocado_vhost.plumbing.tmpdirs import make_private_tmpdir, remove_orphans


class Params(unittest.TestCase):

    def test_precedence_runner_then_environment_then_default(self):
        with mock.patch.dict(os.environ, {"AVOCADO_VHOST_MEMBACKEND": "shm"}):
            self.assertEqual(params.resolve("membackend", "memfile"),
                             "memfile")
            self.assertEqual(params.resolve("membackend", None), "shm")
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(params.resolve("membackend", None), "memfd")

    def test_invalid_values_name_the_parameter_and_what_is_valid(self):
        with self.assertRaisesRegex(params.ParamError,
                                    r"accel=xyz: invalid \(valid: qtest"):
            params.resolve("accel", "xyz")
        with self.assertRaisesRegex(params.ParamError, "positive int"):
            params.resolve("mem_mb", "-1")
        with mock.patch.dict(os.environ, {"AVOCADO_VHOST_MEM_MB": "lots"}):
            with self.assertRaisesRegex(params.ParamError,
                                        "AVOCADO_VHOST_MEM_MB=lots"):
                params.resolve("mem_mb", None)

    def test_unknown_keys(self):
        self.assertEqual(params.unknown(["membakend", "accel", "timeout"]),
                         ["membakend"])


class Tap(unittest.TestCase):

    def test_stream(self):
        class Sample(unittest.TestCase):
            def test_a_pass(self):
                pass

            def test_b_fail(self):
                self.fail("no")

            def test_c_skip(self):
                self.skipTest("not here")

        out = io.StringIO()
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(Sample)
        with mock.patch.object(sys, "stderr", io.StringIO()):
            result = TapRunner(out).run(suite)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], "1..3")
        self.assertRegex(lines[1], r"^ok 1 - .*test_a_pass$")
        self.assertRegex(lines[2], r"^not ok 2 - .*test_b_fail$")
        self.assertRegex(lines[3], r"^ok 3 - .*test_c_skip # SKIP not here$")
        self.assertFalse(result.wasSuccessful())


class OrphanedTmpdirs(unittest.TestCase):

    def test_only_dirs_of_dead_owners_are_removed(self):
        with tempfile.TemporaryDirectory() as base:
            mine = make_private_tmpdir(base)
            child = subprocess.run(
                [sys.executable, "-c",
                 "import sys; from avocado_vhost.plumbing.tmpdirs import "
                 "make_private_tmpdir; print(make_private_tmpdir(sys.argv[1]))",
                 base], capture_output=True, text=True, check=True)
            dead = child.stdout.strip()
            foreign = os.path.join(base, "avh-not-ours")
            os.mkdir(foreign)  # no owner file: never touched
            self.assertEqual(remove_orphans(base), [dead])
            self.assertTrue(os.path.isdir(mine))
            self.assertTrue(os.path.isdir(foreign))


if __name__ == "__main__":
    unittest.main()
