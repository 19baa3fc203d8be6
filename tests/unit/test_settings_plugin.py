"""The machine's settings that ./setup.sh wrote are read when they exist,
and only then (another environment has none)."""

import os
import sys
import tempfile
import unittest
from unittest import mock

from avocado_vhost.runner.avocado_settings import VhostSettings, machine_config


class MachineSettings(unittest.TestCase):

    def test_the_file_lives_in_the_environment_the_suite_runs_from(self):
        self.assertTrue(machine_config().startswith(sys.prefix + os.sep))

    def test_an_existing_file_is_added_after_the_others(self):
        with tempfile.TemporaryDirectory() as prefix:
            os.makedirs(os.path.join(prefix, "etc"))
            path = os.path.join(prefix, "etc", "avocado-vhost.conf")
            with open(path, "w", encoding="utf-8") as conf:
                conf.write("[run]\nmax_parallel_tasks = 4\n")
            paths = ["/etc/avocado/avocado.conf"]
            with mock.patch.object(sys, "prefix", prefix):
                VhostSettings().adjust_settings_paths(paths)
            self.assertEqual(paths, ["/etc/avocado/avocado.conf", path])

    def test_no_file_adds_nothing(self):
        with tempfile.TemporaryDirectory() as prefix:
            paths = ["/etc/avocado/avocado.conf"]
            with mock.patch.object(sys, "prefix", prefix):
                VhostSettings().adjust_settings_paths(paths)
            self.assertEqual(paths, ["/etc/avocado/avocado.conf"])


if __name__ == "__main__":
    unittest.main()
