"""
The known-defect registry: a failure is a known defect only when its
message shows the defect's behaviour *and* the QEMU under test is known to
carry it; the same failure on a QEMU with the fix stays a failure.
"""

import re
import unittest

from avocado_vhost.checks.known_defects import DEFECTS, defects_for_test, match

ABORT = ("the back-end refused to start logging: expected the migration to "
         "fail with the source VM running; migration source died; source "
         "QEMU killed by signal 6; destination did not resume")


class KnownDefects(unittest.TestCase):

    def test_a_matching_failure_on_a_carrier_is_the_defect(self):
        defect = match(ABORT, (7, 2, 22))
        self.assertIsNotNone(defect)
        self.assertEqual(defect.commit, "c1997099dc")

    def test_the_same_failure_on_a_fixed_qemu_is_a_failure(self):
        self.assertIsNone(match(ABORT, (10, 2, 2)))
        self.assertIsNone(match(ABORT, (10, 1, 0)))

    def test_a_backport_to_a_stable_release_counts_as_the_fix(self):
        self.assertIsNone(match(ABORT, (10, 0, 13)))
        self.assertIsNotNone(match(ABORT, (10, 0, 2)))

    def test_another_failure_on_a_carrier_is_a_failure(self):
        self.assertIsNone(match("2 != 3 : some other check", (7, 2, 22)))

    def test_a_defect_is_carried_only_from_its_introduction(self):
        unplug = DEFECTS["unplug-skips-vhost-stop"]
        self.assertFalse(unplug.carried_by((7, 2, 22)))
        self.assertTrue(unplug.carried_by((8, 2, 0)))
        self.assertFalse(unplug.carried_by((9, 1, 0)))

    def test_every_defect_names_its_tests_and_a_valid_signature(self):
        for defect in DEFECTS.values():
            self.assertTrue(defect.tests, defect.id)
            re.compile(defect.signature)
            for test in defect.tests:
                self.assertIn(defect, defects_for_test(test), test)


if __name__ == "__main__":
    unittest.main()
