"""
The in-flight area (vhost-user, "Inflight I/O tracking", split and packed
rings): what a back-end records, what its successor recovers, and what it
refuses to believe.
"""

import unittest

from avocado_vhost.vhost_user.error import MalformedMessage
from avocado_vhost.vhost_user.inflight import (InflightArea,
                                               PackedInflightQueue,
                                               region_size,
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


def chain(buf_id, parts):
    """A packed chain's descriptors: (buffer id, flags, length, address);
    NEXT (1) on all but the last."""
    return [(buf_id, 1 if i < parts - 1 else 0, 16 + i, 0x1000 * (i + 1))
            for i in range(parts)]


class PackedArea(unittest.TestCase):

    def setUp(self):
        self.area = InflightArea.create(num_queues=1, queue_size=SIZE,
                                        packed=True)
        self.queue = self.area.queue(0)
        self.assertIsInstance(self.queue, PackedInflightQueue)

    def tearDown(self):
        self.area.close()

    def test_regions_are_cache_line_aligned(self):
        self.assertEqual(region_size(256, packed=True), 8256)  # 32 + 32*256
        self.assertEqual(region_size(1, packed=True), 64)

    def test_chains_in_flight_come_back_with_their_descriptors(self):
        """Chains of 2, 3 and 1 descriptors taken; the second completed
        (its used element at position 0): the first and the third come
        back, in the order taken, with the descriptors as fetched, and the
        ring resumes at used position 1 (wrap 1)."""
        first = self.queue.fetched(chain(7, 2))
        second = self.queue.fetched(chain(3, 3))
        self.queue.fetched(chain(5, 1))
        self.queue.completing(second)
        self.queue.completed([second], used_idx=1, used_wrap=True)
        used, wrap, chains = self.queue.recover(lambda pos, w: False)
        self.assertEqual((used, wrap), (1, True))
        self.assertEqual([descs for _, descs in chains],
                         [chain(7, 2), chain(5, 1)])
        self.assertEqual(chains[0][0], first)

    def test_an_unpublished_batch_is_rolled_back(self):
        """The back-end died after moving the used position but before
        publishing the element (the slot still reads available): the chain
        is resubmitted and the ring resumes at the old position."""
        head = self.queue.fetched(chain(2, 1))
        self.queue.completing(head)
        self.queue._put([0, 1, SIZE, head, 1, 1, 0, 1, 1])  # used_idx moved
        used, _, chains = self.queue.recover(lambda pos, w: False)
        self.assertEqual(used, 0)
        self.assertEqual([descs for _, descs in chains], [chain(2, 1)])

    def test_a_published_batch_is_finished(self):
        """The same death after the element was published: the batch is
        committed, nothing is resubmitted, the ring resumes after it."""
        head = self.queue.fetched(chain(2, 1))
        self.queue.completing(head)
        header = self.queue._get()
        header[5] = 1  # used_idx moved, old_used_idx still 0
        self.queue._put(header)
        h = self.queue._desc(head)
        h[0] = 0  # the flag cleared
        self.queue._set(head, h)
        used, _, chains = self.queue.recover(lambda pos, w: pos == 0)
        self.assertEqual((used, chains), (1, []))

    def test_a_free_list_that_loops_is_refused(self):
        entry = self.queue._desc(0)
        entry[1] = 0  # next: itself
        self.queue._set(0, entry)
        with self.assertRaisesRegex(MalformedMessage, "loops"):
            self.queue.recover(lambda pos, w: False)

    def test_a_region_for_another_ring_size_is_refused(self):
        header = self.queue._get()
        header[2] = SIZE * 2
        self.queue._put(header)
        with self.assertRaisesRegex(MalformedMessage, "descriptors"):
            self.queue.recover(lambda pos, w: False)


if __name__ == "__main__":
    unittest.main()
