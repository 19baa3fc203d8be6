"""The device IOTLB: updates, invalidations, permissions, bounds, and
guest memory reached by IOVA through it."""

import os
import unittest

from avocado_vhost.vhost_user.iotlb import (PERM_RO, PERM_RW, Iotlb,
                                            IotlbEntry, IotlbMiss,
                                            TranslatedMemory)
from avocado_vhost.vhost_user.memory import AddressError, GuestMemory
from avocado_vhost.vhost_user.message import MemoryRegion

UVA = 0x7F0000000000
PAGE = 0x1000


class IotlbTable(unittest.TestCase):

    def test_an_update_translates_its_range_and_nothing_else(self):
        tlb = Iotlb()
        tlb.update(IotlbEntry(0x10000, PAGE, UVA, PERM_RW))
        self.assertEqual(tlb.find(0x10000 + 8, 8, True).user_addr, UVA)
        for iova, length in ((0xF000, 1), (0x10FFF, 2), (0x11000, 1)):
            with self.assertRaises(IotlbMiss):
                tlb.find(iova, length, False)

    def test_a_read_only_entry_is_a_miss_for_a_write(self):
        tlb = Iotlb()
        tlb.update(IotlbEntry(0, PAGE, UVA, PERM_RO))
        tlb.find(0, 1, False)
        with self.assertRaises(IotlbMiss) as caught:
            tlb.find(0, 1, True)
        self.assertTrue(caught.exception.write)

    def test_an_update_replaces_what_it_overlaps(self):
        tlb = Iotlb()
        tlb.update(IotlbEntry(0, 2 * PAGE, UVA, PERM_RW))
        tlb.update(IotlbEntry(PAGE, PAGE, UVA + 0x100000, PERM_RW))
        self.assertEqual(len(tlb), 1)
        self.assertEqual(tlb.find(PAGE, 1, False).user_addr, UVA + 0x100000)
        with self.assertRaises(IotlbMiss):
            tlb.find(0, 1, False)

    def test_an_invalidation_drops_every_entry_it_touches(self):
        tlb = Iotlb()
        for i in range(4):
            tlb.update(IotlbEntry(i * PAGE, PAGE, UVA + i * PAGE, PERM_RW))
        self.assertEqual(tlb.invalidate(PAGE + 1, PAGE), 2)
        self.assertEqual([e.iova for e in tlb.entries], [0, 3 * PAGE])

    def test_the_table_is_bounded(self):
        tlb = Iotlb(limit=8)
        for i in range(100):
            tlb.update(IotlbEntry(i * PAGE, PAGE, UVA, PERM_RW))
        self.assertEqual(len(tlb), 8)
        self.assertEqual(tlb.entries[0].iova, 92 * PAGE, "the oldest go")

    def test_a_miss_is_asked_once_until_an_update_covers_it(self):
        tlb = Iotlb()
        self.assertTrue(tlb.ask(0x5000, False))
        self.assertFalse(tlb.ask(0x5008, False))
        self.assertTrue(tlb.ask(0x5000, True))
        tlb.update(IotlbEntry(0, PAGE, UVA, PERM_RW))
        self.assertFalse(tlb.ask(0x5000, False), "another page's update")
        tlb.update(IotlbEntry(0x5000, PAGE, UVA, PERM_RW))
        self.assertTrue(tlb.ask(0x5000, False))

    def test_an_empty_or_wrapping_update_is_refused(self):
        for entry in (IotlbEntry(0, 0, UVA, PERM_RW),
                      IotlbEntry((1 << 64) - PAGE, 2 * PAGE, UVA, PERM_RW)):
            with self.assertRaises(AddressError):
                Iotlb().update(entry)


class Translated(unittest.TestCase):

    def setUp(self):
        self.memory = GuestMemory()
        fd = os.memfd_create("guest")
        os.ftruncate(fd, 16 * PAGE)
        self.memory.add(MemoryRegion(0, 16 * PAGE, UVA, 0), fd)
        self.addCleanup(self.memory.clear)
        self.tlb = Iotlb()
        self.dma = TranslatedMemory(self.memory, self.tlb)

    def test_an_iova_reaches_the_guest_page_its_entry_names(self):
        # IOVA 1 GiB names guest page 5
        self.tlb.update(IotlbEntry(1 << 30, PAGE, UVA + 5 * PAGE, PERM_RW))
        self.dma.write((1 << 30) + 16, b"through the iotlb")
        self.assertEqual(self.memory.read(5 * PAGE + 16, 17),
                         b"through the iotlb")
        self.assertEqual(self.dma.to_gpa((1 << 30) + 16), 5 * PAGE + 16)

    def test_a_span_is_the_entry_within_its_region(self):
        self.tlb.update(IotlbEntry(1 << 30, 4 * PAGE, UVA + 14 * PAGE,
                                   PERM_RW))
        mapping, first, end, delta = self.dma.span((1 << 30) + 8, 8)
        self.assertEqual((first, end), (1 << 30, (1 << 30) + 2 * PAGE),
                         "cut where the region ends")
        self.assertEqual((1 << 30) + 8 + delta, 14 * PAGE + 8)

    def test_an_entry_outside_the_memory_table_is_an_address_error(self):
        self.tlb.update(IotlbEntry(0, PAGE, UVA + 64 * PAGE, PERM_RW))
        with self.assertRaises(AddressError) as caught:
            self.dma.read(0, 4)
        self.assertNotIsInstance(caught.exception, IotlbMiss)


if __name__ == "__main__":
    unittest.main()
