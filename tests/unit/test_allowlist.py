"""An allow-list accepts exactly the deviations it names -- a rule broken
by a side -- each with why; a rule that does not exist is refused, so an
entry can never silently accept nothing."""

import unittest

from avocado_vhost.checks.allowlist import AllowListError, allowed, parse
from avocado_vhost.vhost_user import Problem, ProblemKind, Side

TEXT = """
# side     | rule                  | why
back-end   | reply-names-request   | an old DPDK answers so (spec: ...)
front-end  | no-ring-state-after-reset | QEMU 7.2, fixed in 8.1
"""


def violation(side, rule):
    return Problem(ProblemKind.VIOLATION, "some words", rule=rule, side=side)


class AllowList(unittest.TestCase):

    def test_a_listed_deviation_of_that_side_is_accepted(self):
        hit = allowed(violation(Side.BACK_END, "reply-names-request"),
                      parse(TEXT))
        self.assertEqual(hit.why, "an old DPDK answers so (spec: ...)")

    def test_the_same_rule_from_the_other_side_is_not(self):
        self.assertIsNone(allowed(violation(Side.FRONT_END,
                                            "reply-names-request"),
                                  parse(TEXT)))
        self.assertIsNone(allowed(violation(Side.BACK_END, "reply-flag"),
                                  parse(TEXT)))

    def test_an_entry_must_say_why(self):
        for bad in ("back-end | reply-flag", "back-end | reply-flag |",
                    "nobody | reply-flag | w"):
            with self.assertRaises(AllowListError):
                parse(bad)

    def test_an_entry_must_name_a_rule_its_side_can_break(self):
        for bad in ("back-end | names request GET_FEATURES | text, not a "
                    "rule", "back-end | features-subset | a front-end's",
                    "front-end | reply-flag | a back-end's"):
            with self.assertRaisesRegex(AllowListError, "does not exist"):
                parse(bad)


if __name__ == "__main__":
    unittest.main()
