"""
Comparing guest memory as the back-end sees it with QEMU's own view.

Zero pages prove nothing (an unmapped or misplaced region reads as zeros
too), so every comparison uses :func:`pattern`: random bytes that are
reproducible from a seed, with each 4 KiB page stamped with the seed and its
own guest-physical address.  A region mapped at the wrong offset, even by a
whole number of pages, then differs from what is expected.

QEMU's view of the whole RAM comes from QMP ``pmemsave`` (hundreds of MiB in
well under a second); small ranges come from qtest ``b64read``.
"""

from __future__ import annotations

import functools
import os
import random
import struct
from typing import Iterator, Optional, Tuple

from avocado_vhost.vhost_user.memory import GuestMemory

__all__ = ["pattern", "first_difference", "fill_pattern", "compare_dump",
           "PAGE"]

PAGE = 4096
_BLOCK = 1 << 20
_STAMP = struct.Struct("=4sIQ")


@functools.lru_cache(maxsize=4)
def _block(seed: int) -> bytes:
    return random.Random(seed).randbytes(_BLOCK)


def pattern(seed: int, gpa: int, length: int) -> bytes:
    """The expected bytes of ``[gpa, gpa+length)`` for ``seed``.

    The random block repeats every MiB; each page is stamped in place with
    ``pack_into`` (one C call per page: building pages one by one in Python
    made read-guest-mem three times slower than upstream's test).
    """
    start = gpa - gpa % PAGE
    end = gpa + length
    block = _block(seed)
    out = bytearray(end - start + PAGE)
    pos = 0
    while start + pos < end:
        off = (start + pos) % _BLOCK
        n = min(_BLOCK - off, len(out) - pos)
        out[pos:pos + n] = block[off:off + n]
        pos += n
    tag = seed & 0xFFFFFFFF
    for page in range(start, end, PAGE):
        _STAMP.pack_into(out, page - start, b"AVH!", tag, page)
    return bytes(out[gpa - start:gpa - start + length])


def _chunks(gpa: int, size: int, step: int = _BLOCK
            ) -> Iterator[Tuple[int, int]]:
    pos = gpa
    while pos < gpa + size:
        n = min(step - pos % step, gpa + size - pos)
        yield pos, n
        pos += n


def fill_pattern(memory: GuestMemory, seed: int) -> int:
    """Write :func:`pattern` over every mapped region; return bytes written.

    Written in place: the random block is copied into the mapping and each
    page stamped there with ``pack_into``, so no pattern is built in
    between (this is the largest cost of read-guest-mem).
    """
    total = 0
    block = _block(seed)
    tag = seed & 0xFFFFFFFF
    for gpa, size in memory.ram_ranges():
        for pos, n in _chunks(gpa, size):
            if pos % PAGE or n % PAGE:
                memory.write(pos, pattern(seed, pos, n))
            else:
                mapping, off = memory.locate(pos, n)
                mapping[off:off + n] = block[pos % _BLOCK:pos % _BLOCK + n]
                for page in range(pos, pos + n, PAGE):
                    _STAMP.pack_into(mapping, off + page - pos, b"AVH!", tag,
                                     page)
            total += n
    return total


def first_difference(expected: bytes, actual: bytes) -> Optional[int]:
    """Offset of the first differing byte, or None if equal."""
    if expected == actual:
        return None
    for i, (a, b) in enumerate(zip(expected, actual)):
        if a != b:
            return i
    return min(len(expected), len(actual))


def compare_dump(path: str, gpa: int, size: int, seed: int
                 ) -> Optional[str]:
    """Compare a ``pmemsave`` dump of ``[gpa, gpa+size)`` with the pattern.

    :return: None if equal, else where and how they differ.
    """
    actual_size = os.path.getsize(path)
    if actual_size != size:
        return f"dump of 0x{gpa:x} has {actual_size} bytes, expected {size}"
    with open(path, "rb") as dump:
        for pos, n in _chunks(gpa, size):
            actual = dump.read(n)
            expected = pattern(seed, pos, n)
            diff = first_difference(expected, actual)
            if diff is not None:
                at = pos + diff
                return (f"guest address 0x{at:x}: QEMU sees "
                        f"{actual[diff:diff + 16].hex()}, the back-end wrote "
                        f"{expected[diff:diff + 16].hex()}")
    return None
