"""The harness checks every back-end after every test method, whether or
not the test remembers to; a test declares the problems it provokes."""

import unittest

from avocado_vhost.harness import Harness
from avocado_vhost.vhost_user import (Problem, ProblemKind, Request,
                                      VhostUserBackend)


def _probe():
    """The probe test class (made here, so that test discovery does not
    run it by itself)."""

    class _Probe(Harness, unittest.TestCase):
        """A harness test without QEMU: its back-ends are made by hand."""

        def setUp(self):
            self.backends = []

        def tearDown(self):
            for backend in self.backends:
                backend.stop()

        def backend(self, name, *problems):
            backend = VhostUserBackend(name)
            for kind, text in problems:
                backend.record(Problem(kind, text, 1, 1, Request.SET_OWNER))
            self.backends.append(backend)
            return backend

        def test_clean(self):
            self.backend("ok")

        def test_error_not_checked_by_the_test(self):
            self.backend("bad", (ProblemKind.ERROR, "an unmappable region"))

        def test_violation_not_declared(self):
            self.backend("rude", (ProblemKind.VIOLATION, "SET_OWNER twice"))

        def test_violation_declared(self):
            backend = self.backend("rude", (ProblemKind.VIOLATION,
                                            "SET_OWNER twice"))
            self.expect_violations(backend)

        def test_error_with_violations_declared(self):
            backend = self.backend("bad", (ProblemKind.ERROR, "a crash"),
                                   (ProblemKind.VIOLATION, "SET_OWNER twice"))
            self.expect_violations(backend)

        def test_broken_on_purpose(self):
            backend = self.backend("broken", (ProblemKind.ERROR, "a crash"))
            self.expect_failure(backend)

        def test_already_failing(self):
            self.backend("bad", (ProblemKind.ERROR, "an unmappable region"))
            self.fail("the test's own failure")

    return _Probe


class AfterEveryTest(unittest.TestCase):

    def outcome(self, name):
        result = unittest.TestResult()
        _probe()(name).run(result)
        if result.failures:
            return "FAIL", result.failures[0][1]
        if result.errors:
            return "ERROR", result.errors[0][1]
        return "PASS", ""

    def test_a_clean_backend_passes(self):
        self.assertEqual(self.outcome("test_clean")[0], "PASS")

    def test_an_error_the_test_never_checked_fails_it(self):
        status, text = self.outcome("test_error_not_checked_by_the_test")
        self.assertEqual(status, "FAIL")
        self.assertIn("an unmappable region", text)

    def test_an_undeclared_violation_fails_it(self):
        status, text = self.outcome("test_violation_not_declared")
        self.assertEqual(status, "FAIL")
        self.assertIn("SET_OWNER twice", text)

    def test_declared_violations_pass(self):
        self.assertEqual(self.outcome("test_violation_declared")[0], "PASS")

    def test_declared_violations_do_not_excuse_errors(self):
        status, text = self.outcome("test_error_with_violations_declared")
        self.assertEqual(status, "FAIL")
        self.assertIn("a crash", text)

    def test_a_backend_broken_on_purpose_passes(self):
        self.assertEqual(self.outcome("test_broken_on_purpose")[0], "PASS")

    def test_a_failing_test_reports_its_own_failure(self):
        status, text = self.outcome("test_already_failing")
        self.assertEqual(status, "FAIL")
        self.assertIn("the test's own failure", text)
        self.assertNotIn("an unmappable region", text)


if __name__ == "__main__":
    unittest.main()
