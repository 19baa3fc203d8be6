"""
Postcopy live migration on the back-end's side (the PAGEFAULT protocol
feature): a userfaultfd over the guest memory the back-end maps.

On a postcopy destination the VM runs before all of its memory arrived.
QEMU catches its own accesses to missing pages; the back-end's accesses
it can only catch through a userfaultfd the back-end creates
(POSTCOPY_ADVISE hands it over), over the back-end's own mappings
(registered when the memory table arrives after POSTCOPY_LISTEN, whose
reply tells QEMU where the back-end mapped each region).  A back-end
thread that touches a missing page then sleeps in the kernel until QEMU
has fetched the page from the source and woken it (UFFDIO_WAKE).

Python sleeping in a page fault would hold the interpreter lock, and with
it every thread of the test, for as long as QEMU takes -- forever, if
QEMU is broken.  So :class:`FaultIn` looks before it touches: a page not
resident in the mapping (``mincore``) is touched first by a system call
that copies one byte from it with the lock released, and counted.  The
count is what the test reports as pages faulted in through the back-end.

The syscall numbers and ioctl encodings are Linux's (``linux/userfaultfd.h``)
for x86_64 and aarch64; elsewhere :class:`Userfault` raises OSError.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import platform
import struct
import threading
__all__ = ["Userfault", "FaultIn", "mapping_address"]

_SYSCALL = {"x86_64": 323, "aarch64": 282}
_UFFD_API = 0xAA
#: _IOWR(0xAA, 0x3F, struct uffdio_api) and _IOWR(0xAA, 0x00, struct
#: uffdio_register)
_UFFDIO_API = 0xC018AA3F
_UFFDIO_REGISTER = 0xC020AA00
_MODE_MISSING = 1
_PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)


def mapping_address(mapping: mmap.mmap) -> int:
    """Where ``mapping`` is in this process (what QEMU must be told)."""
    anchor = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # the mapping can be closed again


class Userfault:
    """A userfaultfd (non-blocking, close-on-exec) ready for registration.

    :raise OSError: the kernel refuses one (no privilege, no support).
    """

    def __init__(self) -> None:
        number = _SYSCALL.get(platform.machine())
        if number is None:
            raise OSError(f"no userfaultfd syscall number for "
                          f"{platform.machine()}")
        fd = int(_libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"userfaultfd: {os.strerror(err)}")
        self.fd = fd
        api = bytearray(struct.pack("<QQQ", _UFFD_API, 0, 0))
        try:
            fcntl.ioctl(fd, _UFFDIO_API, api, True)
        except OSError:
            os.close(fd)
            raise

    def register(self, mapping: mmap.mmap) -> None:
        """Missing pages of ``mapping`` fault through this fd from now on.

        :raise OSError: the kernel refuses (a mapping it cannot track).
        """
        arg = bytearray(struct.pack("<QQQQ", mapping_address(mapping),
                                    len(mapping), _MODE_MISSING, 0))
        fcntl.ioctl(self.fd, _UFFDIO_REGISTER, arg, True)

    def close(self) -> None:
        """Close the fd; the kernel unregisters every range and wakes any
        thread still waiting in a fault (once QEMU closed its copy)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FaultIn:
    """Touch the missing pages of a range before Python reads or writes
    it, without holding the interpreter lock while the kernel waits; count
    them."""

    def __init__(self) -> None:
        #: pages found missing and faulted in through this back-end
        self.pages = 0
        self._lock = threading.Lock()
        self._sink = os.memfd_create("vhost-postcopy-sink", os.MFD_CLOEXEC)

    def __call__(self, mapping: mmap.mmap, offset: int, length: int) -> None:
        first = offset - offset % _PAGE
        count = (offset + max(length, 1) - first + _PAGE - 1) // _PAGE
        base = mapping_address(mapping) + first
        vec = (ctypes.c_ubyte * count)()
        if _libc.mincore(ctypes.c_void_p(base),
                         ctypes.c_size_t(count * _PAGE), vec) != 0:
            return  # cannot tell: the access itself will fault if need be
        missing = [i for i in range(count) if not vec[i] & 1]
        if not missing:
            return
        with memoryview(mapping) as view:
            for i in missing:
                at = first + i * _PAGE
                # pwrite copies the byte with the lock released; a missing
                # page blocks this thread alone until QEMU wakes it
                os.pwrite(self._sink, view[at:at + 1], 0)
        with self._lock:
            self.pages += len(missing)

    def close(self) -> None:
        if self._sink >= 0:
            os.close(self._sink)
            self._sink = -1

