"""The phase clock charges every second to the innermost phase, so a
test's phases and its check add up to its time."""

import json
import os
import tempfile
import time
import unittest

from avocado_vhost.plumbing.phases import CHECK, PhaseClock


class PhaseClockTest(unittest.TestCase):

    def test_nested_time_is_charged_to_the_inner_phase(self):
        clock = PhaseClock()
        with clock.phase("teardown"):
            time.sleep(0.02)
            with clock.phase("qemu-shutdown"):
                time.sleep(0.05)
        self.assertGreaterEqual(clock.spent["qemu-shutdown"], 0.05)
        # the outer phase keeps only its own 20 ms, not the inner 50
        self.assertLess(clock.spent["teardown"], 0.045)
        self.assertGreaterEqual(clock.spent["teardown"], 0.02)

    def test_phases_and_check_add_up_to_the_total(self):
        clock = PhaseClock()
        with clock.phase("qemu-launch"):
            time.sleep(0.01)
        time.sleep(0.02)
        summary = clock.summary()
        self.assertAlmostEqual(sum(summary["phases"].values()),
                               summary["total"], delta=0.002)
        self.assertGreaterEqual(summary["phases"][CHECK], 0.02)

    def test_a_phase_that_raises_is_still_charged(self):
        clock = PhaseClock()
        with self.assertRaises(RuntimeError):
            with clock.phase("guest-boot"):
                raise RuntimeError("boot failed")
        self.assertEqual(clock.counts, {"guest-boot": 1})

    def test_written_as_json(self):
        clock = PhaseClock()
        with clock.phase("setup"):
            pass
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "phases.json")
            clock.write(path)
            with open(path, encoding="utf-8") as f:
                self.assertEqual(set(json.load(f)["phases"]),
                                 {"setup", CHECK})


if __name__ == "__main__":
    unittest.main()
