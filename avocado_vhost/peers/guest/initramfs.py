"""
A newc ("070701") cpio archive writer, for initramfs images.

The host has no ``cpio`` and the kernel needs only this one format, so the
suite writes it itself: a header of thirteen 8-digit hex fields, the name
(NUL-terminated), the data, each padded to 4 bytes; ``TRAILER!!!`` ends it.
"""

from __future__ import annotations

import gzip
import stat
from typing import List, Tuple

__all__ = ["Initramfs"]


class Initramfs:
    """Files, directories and symlinks, written as one gzipped newc cpio."""

    def __init__(self) -> None:
        self._entries: List[Tuple[str, int, bytes]] = []

    def directory(self, path: str) -> None:
        self._entries.append((path, stat.S_IFDIR | 0o755, b""))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entries.append((path, stat.S_IFREG | mode, data))

    def build(self) -> bytes:
        """The gzipped archive (mtime 0: the same input, the same bytes)."""
        out = bytearray()
        for ino, (path, mode, data) in enumerate(
                self._entries + [("TRAILER!!!", 0, b"")], start=1):
            name = path.lstrip("/").encode() + b"\0"
            fields = (ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1,
                      0, len(data), 0, 0, 0, 0, len(name), 0)
            out += b"070701" + b"".join(b"%08X" % f for f in fields) + name
            out += bytes(-len(out) % 4)
            out += data
            out += bytes(-len(out) % 4)
        return gzip.compress(bytes(out), mtime=0)
