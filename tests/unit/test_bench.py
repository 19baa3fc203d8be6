"""The benchmarks' shared figures: an order that no case always leads, and
medians, ratios and differences that refuse a case never measured."""

import unittest

from avocado_vhost.tools.bench import Samples, rounds


class Rounds(unittest.TestCase):

    def test_each_case_leads_a_round_in_turn(self):
        orders = [order for _, order in rounds(4, ["a", "b", "c"])]
        self.assertEqual(orders, [["a", "b", "c"], ["b", "c", "a"],
                                  ["c", "a", "b"], ["a", "b", "c"]])

    def test_two_cases_alternate(self):
        self.assertEqual([o for _, o in rounds(3, ["x", "y"])],
                         [["x", "y"], ["y", "x"], ["x", "y"]])


class Figures(unittest.TestCase):

    def setUp(self):
        self.samples = Samples()
        for value in (1.0, 9.0, 2.0):  # one disturbed run: 9
            self.samples.add("base", value)
        for value in (3.0, 4.0, 5.0):
            self.samples.add("case", value)

    def test_the_median_ignores_one_disturbed_run(self):
        self.assertEqual(self.samples.median("base"), 2.0)

    def test_ratio_and_difference_are_against_the_baseline_of_this_run(self):
        self.assertEqual(self.samples.ratio("case", "base"), 2.0)
        self.assertEqual(self.samples.difference("case", "base"), 2.0)

    def test_a_case_never_measured_is_an_error_not_a_zero(self):
        with self.assertRaisesRegex(KeyError, "no measurement of 'cas'"):
            self.samples.median("cas")

    def test_a_zero_baseline_is_refused(self):
        self.samples.add("zero", 0.0)
        with self.assertRaises(ZeroDivisionError):
            self.samples.ratio("case", "zero")

    def test_progress_shows_each_cases_latest(self):
        self.assertEqual(self.samples.progress(2, "{:.0f}"),
                         "round 3: base 2, case 5")


if __name__ == "__main__":
    unittest.main()
