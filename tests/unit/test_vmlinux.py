"""
PVH boot takes the ELF kernel out of an x86 bzImage only when it has the
PVH entry note; anything else (no note, not a bzImage) keeps the bzImage.
"""

import lzma
import struct
import unittest

from avocado_vhost.peers.guest.vmlinux import (PHYS32_ENTRY, has_pvh_entry,
                                               pvh_elf)


def elf_with_note(name: bytes, ntype: int) -> bytes:
    """A 64-bit little-endian ELF header, one PT_NOTE segment, one note."""
    note = struct.pack("<III", len(name) + 1, 4, ntype) + name + b"\0"
    note += bytes(-len(note) % 4) + b"\x00\x00\x10\x00"
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)          # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)      # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note),
                       len(note), 4)
    return bytes(header) + phdr + note


def bzimage(payload: bytes) -> bytes:
    setup = bytearray(0x400)
    setup[0x202:0x206] = b"HdrS"
    return bytes(setup) + lzma.compress(payload, format=lzma.FORMAT_XZ) \
        + b"trailing bytes"


class PvhElf(unittest.TestCase):

    def test_an_elf_with_the_pvh_note_is_taken_out(self):
        elf = elf_with_note(b"Xen", PHYS32_ENTRY)
        self.assertTrue(has_pvh_entry(elf))
        self.assertEqual(pvh_elf(bzimage(elf)), elf)

    def test_an_elf_without_it_keeps_the_bzimage(self):
        self.assertIsNone(pvh_elf(bzimage(elf_with_note(b"Xen", 5))))
        self.assertIsNone(pvh_elf(bzimage(elf_with_note(b"GNU",
                                                        PHYS32_ENTRY))))

    def test_not_a_bzimage(self):
        elf = elf_with_note(b"Xen", PHYS32_ENTRY)
        self.assertIsNone(pvh_elf(b"\0" * 0x400 + lzma.compress(elf)))


if __name__ == "__main__":
    unittest.main()
