"""The message-sequence chart: what a reader sees, from real traces."""

import json
import os
import tempfile
import unittest

from avocado_vhost.tools.chart import render_files
from avocado_vhost.vhost_user.trace import Trace


def trace_file(tmp, name, violation=False):
    trace = Trace(name)
    trace.add(1, "event", "CONNECTED")
    trace.add(1, "rx", "GET_FEATURES", 1, 0, 0, "")
    trace.add(1, "tx", "GET_FEATURES", 5, 8, 0, "0x1")
    if violation:
        trace.add(1, "violation", detail="SET_VRING_ADDR outside memory")
    path = os.path.join(tmp, f"{name}.trace.json")
    trace.write_json(path)
    return path


class Chart(unittest.TestCase):

    def test_a_clean_conversation_says_so(self):
        with tempfile.TemporaryDirectory() as tmp:
            page = render_files([trace_file(tmp, "src")], "t")
        self.assertIn("2 messages between QEMU and 1 back-end(s)", page)
        self.assertIn("no violation, error or refusal", page)
        self.assertIn("GET_FEATURES", page)

    def test_a_violation_is_red_and_counted(self):
        """The negative control of the summary: one violation shows."""
        with tempfile.TemporaryDirectory() as tmp:
            page = render_files([trace_file(tmp, "src"),
                                 trace_file(tmp, "dst", violation=True)], "t")
        self.assertIn("1 violation(s), error(s) or refusal(s)", page)
        self.assertIn("VIOLATION: ", page)
        self.assertIn("SET_VRING_ADDR outside memory", page)
        self.assertLess(page.index("back-end src"), page.index("back-end dst"))

    def test_json_round_trip(self):
        with tempfile.TemporaryDirectory() as tmp:
            with open(trace_file(tmp, "b"), encoding="utf-8") as f:
                data = json.load(f)
        self.assertEqual(data["name"], "b")
        self.assertEqual([e["kind"] for e in data["entries"]],
                         ["event", "rx", "tx"])


if __name__ == "__main__":
    unittest.main()
