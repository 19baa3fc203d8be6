"""
The uncompressed kernel inside an x86 ``bzImage``, for PVH boot.

Under TCG a ``bzImage`` is slow to start: SeaBIOS loads 8 MB through
fw_cfg and the guest then decompresses it, instruction by emulated
instruction -- about 4 s of Debian's kernel's 8 s to the guest's prompt.
Given an ELF kernel with a PVH entry note (Xen note 18,
``XEN_ELFNOTE_PHYS32_ENTRY``; Debian's amd64 kernels have it), QEMU's
``-kernel`` jumps straight to it through its PVH option ROM.  The payload
is decompressed here, once, on the host, when the assets are made.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from typing import Iterator, Optional, Tuple

__all__ = ["pvh_elf", "has_pvh_entry"]

#: Xen's ELF note type for the 32-bit PVH entry point
PHYS32_ENTRY = 18
_PT_NOTE = 4


def _payloads(image: bytes) -> Iterator[bytes]:
    """Each compressed stream a ``bzImage`` could carry, decompressed
    (a magic found by chance decompresses to garbage or fails)."""
    for magic, unpack in ((b"\xfd7zXZ\x00", _xz), (b"\x1f\x8b\x08", _gzip)):
        at = image.find(magic)
        while at != -1:
            try:
                yield unpack(image[at:])
            except (lzma.LZMAError, EOFError, zlib.error):
                pass
            at = image.find(magic, at + 1)


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _notes(elf: bytes) -> Iterator[Tuple[bytes, int]]:
    """(name, type) of each note in a 64-bit little-endian ELF's PT_NOTE
    segments."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _, offset, _, _, filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if ptype != _PT_NOTE:
            continue
        at, end = offset, offset + filesz
        while at + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, at)
            name = elf[at + 12:at + 12 + namesz].rstrip(b"\0")
            yield name, ntype
            at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4


def has_pvh_entry(elf: bytes) -> bool:
    """Whether ``elf`` is a 64-bit ELF with a PVH entry note."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    try:
        return any(name == b"Xen" and ntype == PHYS32_ENTRY
                   for name, ntype in _notes(elf))
    except struct.error:
        return False


def pvh_elf(image: bytes) -> Optional[bytes]:
    """The PVH-bootable ELF kernel inside ``image``, or None (not a
    ``bzImage`` this understands, or a kernel built without PVH)."""
    if image[0x202:0x206] != b"HdrS":
        return None
    for payload in _payloads(image):
        if has_pvh_entry(payload):
            return payload
    return None
