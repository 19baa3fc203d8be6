"""
The in-flight area (vhost-user, "Inflight I/O tracking", split rings):
what a back-end records, what its successor recovers, and what it refuses
to believe.
"""

import unittest

from avocado_vhost.vhost_user.error import MalformedMessage
from avocado_vhost.vhost_user.inflight import (InflightArea, region_size,
                                               resubmission_base)

SIZE = 8


class Area(unittest.TestCase):

    def setUp(self):
        self.area = InflightArea.create(num_queues=1, queue_size=SIZE)
        self.queue = self.area.queue(0)

    def tearDown(self):
        self.area.close()

    def complete(self, head, used_idx):
        self.queue.completing(head)
        self.queue.completed([head], used_idx)

    def test_regions_are_cache_line_aligned(self):
        self.assertEqual(region_size(256), 4160)  # 16 + 16 * 256, up to 64
        self.assertEqual(region_size(3), 64)

    def test_heads_in_flight_come_back_in_the_order_taken(self):
        """Taken 5, 2, 7, 1; 2 completed: 5, 7, 1 are resubmitted in that
        order, and the ring resumes after all four."""
        for head in (5, 2, 7, 1):
            self.queue.fetched(head)
        self.complete(2, used_idx=1)
        self.assertEqual(self.queue.recover(ring_used_idx=1), [5, 7, 1])
        self.assertEqual(resubmission_base(1, [5, 7, 1]), 4)

    def test_a_back_end_that_died_inside_a_batch(self):
        """The used index moved (head 3 is on the used ring) but the
        back-end died before clearing its flag: the successor finishes the
        batch instead of resubmitting 3."""
        for head in (3, 4):
            self.queue.fetched(head)
        self.queue.completing(3)  # then the used index went to 1 ... died
        self.assertEqual(self.queue.recover(ring_used_idx=1), [4])
        self.assertEqual(self.queue.used_idx, 1)

    def test_the_counter_continues_after_recovery(self):
        self.queue.fetched(6)
        self.queue.recover(0)
        self.queue.fetched(0)
        self.assertEqual(self.queue.in_flight(), [6, 0])

    def test_a_region_not_written_by_a_back_end_is_refused(self):
        self.area.map[8:10] = b"\x02\x00"  # version 2
        with self.assertRaisesRegex(MalformedMessage, "version 2"):
            self.queue.recover(0)

    def test_a_region_for_another_ring_size_is_refused(self):
        self.area.map[10:12] = b"\x10\x00"  # desc_num 16, the ring has 8
        with self.assertRaisesRegex(MalformedMessage, "16 descriptors"):
            self.queue.recover(0)

    def test_a_used_ring_too_far_ahead_is_refused(self):
        with self.assertRaisesRegex(MalformedMessage, "more than a ring"):
            self.queue.recover(SIZE + 1)

    def test_a_batch_list_naming_a_head_beyond_the_ring(self):
        self.area.map[12:14] = b"\x40\x00"  # last_batch_head 64
        with self.assertRaisesRegex(MalformedMessage, "descriptor 64"):
            self.queue.recover(1)

    def test_a_flag_that_is_neither_0_nor_1(self):
        self.area.map[16] = 7
        with self.assertRaisesRegex(MalformedMessage, "neither 0 nor 1"):
            self.queue.recover(0)

    def test_a_head_beyond_the_ring_is_not_recorded(self):
        with self.assertRaisesRegex(MalformedMessage, "beyond"):
            self.queue.fetched(SIZE)

    def test_no_region_for_a_ring_beyond_the_area(self):
        with self.assertRaisesRegex(MalformedMessage, "none for ring 1"):
            self.area.queue(1)


if __name__ == "__main__":
    unittest.main()
