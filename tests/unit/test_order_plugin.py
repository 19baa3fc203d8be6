"""The longest-first order of a job's tests (avocado_vhost.runner.avocado_order):
history wins over the tags' prior, ties keep Avocado's order, and the
history is read from real results.json files."""

import json
import os
import tempfile
import unittest
from types import SimpleNamespace

from avocado_vhost.runner.avocado_order import (DEFAULT_PRIOR, PRIORS,
                                                history, order, test_key)


def runnable(uri, *tags):
    return SimpleNamespace(uri=uri, tags={t: None for t in tags})


class Order(unittest.TestCase):

    def test_longest_first_and_ties_in_the_given_order(self):
        a = runnable("tests/functional/test_a.py:A.test_1")
        b = runnable("tests/functional/test_b.py:B.test_1", "guest")
        c = runnable("tests/functional/test_c.py:C.test_1")
        d = runnable("tests/functional/test_d.py:D.test_1", "fault-sweep")
        self.assertEqual(order([a, b, c, d], {}), [d, b, a, c])

    def test_history_wins_over_the_prior(self):
        quick_guest = runnable("t/test_g.py:G.test_1", "guest")
        slow = runnable("t/test_s.py:S.test_1")
        times = {"test_g.py:G.test_1": 0.2, "test_s.py:S.test_1": 9.0}
        self.assertEqual(order([quick_guest, slow], times),
                         [slow, quick_guest])

    def test_the_key_drops_the_path_and_the_task_number(self):
        self.assertEqual(test_key("012-tests/functional/test_x.py:X.test_y"),
                         "test_x.py:X.test_y")
        self.assertEqual(test_key("/abs/tests/functional/test_x.py:X.test_y"),
                         "test_x.py:X.test_y")

    def test_priors_are_above_the_default(self):
        self.assertTrue(all(v > DEFAULT_PRIOR for v in PRIORS.values()))


class History(unittest.TestCase):

    def write_job(self, root, name, tests):
        os.makedirs(os.path.join(root, name))
        with open(os.path.join(root, name, "results.json"), "w",
                  encoding="utf-8") as out:
            json.dump({"tests": tests}, out)

    def test_the_newest_job_that_ran_a_test_gives_its_time(self):
        with tempfile.TemporaryDirectory() as root:
            self.write_job(root, "job-1", [
                {"name": "tests/functional/test_x.py:X.test_y",
                 "time_elapsed": 5.0},
                {"name": "tests/functional/test_x.py:X.test_z",
                 "time_elapsed": 3.0}])
            os.utime(os.path.join(root, "job-1", "results.json"), (1, 1))
            self.write_job(root, "job-2", [
                {"name": "tests/functional/test_x.py:X.test_y",
                 "time_elapsed": 1.0}])
            os.makedirs(os.path.join(root, "job-3"))  # still running
            self.write_job(root, "job-4", [])
            with open(os.path.join(root, "job-4", "results.json"), "w",
                      encoding="utf-8") as out:
                out.write("{not json")
            self.assertEqual(history(root), {"test_x.py:X.test_y": 1.0,
                                             "test_x.py:X.test_z": 3.0})


if __name__ == "__main__":
    unittest.main()
