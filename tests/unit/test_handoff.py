"""The ring handoff monitor flags overlaps, wrong resume positions and a
used idx that did not migrate."""

import unittest
from unittest import mock

from avocado_vhost.checks.handoff import RingHandoffMonitor
from avocado_vhost.vhost_user import RingEvent, VhostUserBackend
from avocado_vhost.vhost_user.state import Vring


class HandoffTest(unittest.TestCase):

    def setUp(self):
        self.src = VhostUserBackend("src")
        self.dst = VhostUserBackend("dst")
        self.monitor = RingHandoffMonitor(self.src, self.dst)

    def tearDown(self):
        self.src.stop()
        self.dst.stop()

    def event(self, backend, index, event, base=0):
        ring = Vring(index, base=base, reported_base=base)
        for listener in backend.ring_listeners:
            listener(backend, ring, event)

    def test_clean_handoff(self):
        self.event(self.src, 0, RingEvent.STARTED)
        self.event(self.src, 0, RingEvent.STOPPED, base=5)
        self.event(self.dst, 0, RingEvent.STARTED, base=5)
        self.assertEqual(self.monitor.problems(), [])
        self.monitor.check()

    def test_overlap_is_caught_when_it_happens(self):
        self.event(self.src, 0, RingEvent.STARTED)
        self.event(self.src, 1, RingEvent.STARTED)
        self.event(self.src, 0, RingEvent.STOPPED, base=3)
        self.event(self.dst, 0, RingEvent.STARTED, base=3)  # src ring 1 still runs
        problems = self.monitor.problems()
        self.assertEqual(len(problems), 1)
        self.assertIn("still runs rings [1]", problems[0])
        with self.assertRaisesRegex(AssertionError, "timeline"):
            self.monitor.check()

    def test_wrong_resume_position(self):
        self.event(self.src, 0, RingEvent.STARTED)
        self.event(self.src, 0, RingEvent.STOPPED, base=9)
        self.event(self.dst, 0, RingEvent.STARTED, base=0)
        self.assertIn("resumed ring 0 at 0, the source reported 9",
                      self.monitor.problems()[0])

    def test_a_used_idx_that_did_not_migrate(self):
        """The destination's memory holds another used idx than the source
        left: the source's last used-ring writes were not carried."""
        used = {"src": 7, "dst": 5}
        with mock.patch("avocado_vhost.checks.handoff.used_idx_in_memory",
                        lambda backend, ring: used[backend.name]):
            self.event(self.src, 0, RingEvent.STARTED)
            self.event(self.src, 0, RingEvent.STOPPED, base=7)
            self.event(self.dst, 0, RingEvent.STARTED, base=7)
        problems = self.monitor.problems()
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("used idx was 7 in the source's memory when it "
                      "stopped, 5 in the destination's", problems[0])

    def test_the_same_used_idx_on_both_sides_is_clean(self):
        with mock.patch("avocado_vhost.checks.handoff.used_idx_in_memory",
                        lambda backend, ring: 7):
            self.event(self.src, 0, RingEvent.STARTED)
            self.event(self.src, 0, RingEvent.STOPPED, base=7)
            self.event(self.dst, 0, RingEvent.STARTED, base=7)
        self.assertEqual(self.monitor.problems(), [])

    def test_destination_start_without_source_report(self):
        self.event(self.dst, 1, RingEvent.STARTED)
        self.assertIn("never reported", self.monitor.problems()[0])


if __name__ == "__main__":
    unittest.main()
