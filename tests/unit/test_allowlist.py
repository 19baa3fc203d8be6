"""An allow-list accepts exactly the deviations it names, each with why."""

import unittest

from avocado_vhost.allowlist import AllowListError, allowed, parse

TEXT = """
# side     | text                          | why
back-end   | names request GET_FEATURES    | an old DPDK answers so (spec: ...)
front-end  | after SET_STATUS 0            | QEMU 7.2, fixed in 8.1
"""


class AllowList(unittest.TestCase):

    def test_a_listed_deviation_of_that_side_is_accepted(self):
        entries = parse(TEXT)
        hit = allowed("back-end: reply to message 3 GET_VRING_BASE names "
                      "request GET_FEATURES", entries)
        self.assertEqual(hit.why, "an old DPDK answers so (spec: ...)")

    def test_the_same_text_from_the_other_side_is_not(self):
        self.assertIsNone(allowed("front-end: names request GET_FEATURES",
                                  parse(TEXT)))
        self.assertIsNone(allowed("back-end: something else", parse(TEXT)))

    def test_an_entry_must_say_why(self):
        for bad in ("back-end | text", "back-end | text |", "nobody | t | w"):
            with self.assertRaises(AllowListError):
                parse(bad)


if __name__ == "__main__":
    unittest.main()
