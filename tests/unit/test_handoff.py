"""The ring handoff monitor flags overlaps and wrong resume positions."""

import unittest

from avocado_vhost.handoff import RingHandoffMonitor
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

    def test_destination_start_without_source_report(self):
        self.event(self.dst, 1, RingEvent.STARTED)
        self.assertIn("never reported", self.monitor.problems()[0])


if __name__ == "__main__":
    unittest.main()
