"""The migration logging checks find each way a front-end can get logging
wrong, and nothing in a front-end that gets it right."""

import dataclasses
import unittest

from avocado_vhost.checks import migration_log as ml
from avocado_vhost.vhost_user.message import (LogDescription, U64,
                                              VirtioFeature, VringAddr)
from avocado_vhost.virtio.ring import split_sizes

LOG_ALL = int(VirtioFeature.LOG_ALL)
VERSION_1 = int(VirtioFeature.VERSION_1)
USED = {0: 0x402000, 1: 0x404000}
USED_LEN = {0: split_sizes(256)[2], 1: split_sizes(256)[2]}
TOP = 256 << 20  # 256 MiB of RAM from 0: 8192 bytes of log


def addr(index, flags=1, log=None):
    return VringAddr(index, flags, 0x7F0000400000, 0x7F0000000000 + USED[index],
                     0x7F0000401000, USED[index] if log is None else log)


def migration(log_size=8192):
    """What QEMU sends when migration starts, then at the final stop."""
    return [("SET_MEM_TABLE", None), ("SET_VRING_ADDR", addr(0, flags=0)),
            ("SET_VRING_ADDR", addr(1, flags=0)),
            ("SET_LOG_BASE", LogDescription(log_size, 0)),
            ("SET_FEATURES", U64(LOG_ALL | VERSION_1)),
            ("SET_VRING_ADDR", addr(0)), ("SET_VRING_ADDR", addr(1)),
            ("GET_VRING_BASE", None), ("SET_FEATURES", U64(VERSION_1))]


class CheckLogging(unittest.TestCase):

    def findings(self, messages):
        return ml.check_logging(messages, USED, USED_LEN, TOP)

    def test_a_correct_front_end_has_no_findings(self):
        self.assertEqual(self.findings(migration()), [])

    def test_no_log_base(self):
        found = self.findings(migration()[:3])
        self.assertIn("no SET_LOG_BASE", found[0])

    def test_each_breaker_is_found_with_its_spec_sentence(self):
        for breaker, sentence in (
                (ml.break_log_all, ml.SPEC_LOG_ALL),
                (ml.break_ring_log_flag, ml.SPEC_LOG_ALL),
                (ml.break_ring_log_addr, ml.SPEC_LOG_ADDR),
                (ml.break_log_size, ml.SPEC_LOG_SIZE)):
            with self.subTest(breaker=breaker.__name__):
                found = self.findings(breaker(migration()))
                self.assertTrue(found)
                self.assertTrue(all(sentence in f or ml.SPEC_LOG_SIZE in f
                                    for f in found), found)

    def test_breakers_leave_messages_outside_the_logging_window(self):
        broken = ml.break_ring_log_flag(migration())
        self.assertEqual(broken[1], migration()[1])  # before SET_LOG_BASE

    def test_log_all_dropped_while_logging(self):
        messages = migration()
        messages.insert(6, ("SET_FEATURES", U64(VERSION_1)))
        found = self.findings(messages)
        self.assertIn("dropped VHOST_F_LOG_ALL", found[0])

    def test_ring_without_logged_address(self):
        messages = [m for m in migration()
                    if not (m[0] == "SET_VRING_ADDR" and m[1].index == 1
                            and m[1].flags)]
        found = self.findings(messages)
        self.assertIn("ring 1: no SET_VRING_ADDR after SET_LOG_BASE", found[0])

    def test_used_ring_beyond_the_log(self):
        far = dataclasses.replace(addr(0), log=TOP - 16)
        messages = [(n, far if n == "SET_VRING_ADDR" and p.index == 0
                     and p.flags else p) for n, p in migration()]
        found = ml.check_logging(messages, {0: TOP - 16}, USED_LEN, TOP)
        self.assertTrue(any("beyond the log" in f for f in found), found)



class EdgePages(unittest.TestCase):
    """Where the dirty-log check writes (scenarios.migration.edge_pages)."""

    def test_a_region_from_one_megabyte(self):
        from avocado_vhost.scenarios.migration import edge_pages
        pages = edge_pages([(0x100000, 0xFF00000)], boundaries=1)
        self.assertEqual(pages[0], 0x100000)            # first page
        self.assertEqual(pages[-1], 0xFFFF000)          # last page
        self.assertIn(0x13F000, pages)                  # bottom 256 KiB
        self.assertIn(0xFFC0000, pages)                 # top 256 KiB
        # the first log-word boundary inside is at 1 MiB + 256 KiB: it
        # falls in the bottom 256 KiB already; bit 63 and bit 0 either side
        self.assertIn(0x13F000, pages)
        self.assertIn(0x140000, pages)
        self.assertEqual(len(pages), 64 + 64 + 2)

    def test_excluded_pages_and_small_regions(self):
        from avocado_vhost.scenarios.migration import edge_pages
        pages = edge_pages([(0xE0000, 0x10000)], exclude=[(0xE0000, 0xE1000)])
        self.assertEqual(pages, list(range(0xE1000, 0xF0000, 0x1000)))


if __name__ == "__main__":
    unittest.main()
