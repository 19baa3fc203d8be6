"""
The guest RAM's memory backends, by the names tests and ``-p membackend=``
use, and whether one can be used on this machine with this QEMU.

Every backend is shared (``share=on``): the back-end maps the same pages
through the fds QEMU passes.  ``hugetlbfs`` needs a mount and enough free
huge pages, which ``./setup.sh`` run as root provides.
"""

from __future__ import annotations

import os
from typing import List, Optional

from avocado_vhost.errors import NotAvailable
from avocado_vhost.peers.qemu.binary import Capabilities

__all__ = ["MEM_BACKENDS", "DEFAULT_MEM_MB", "Unavailable", "memory_path",
           "hugetlbfs_mounted", "hugetlbfs_mounts", "huge_pages_free"]

#: Guest RAM in MiB unless ``-p mem_mb=`` says otherwise.  128: every check
#: that covers all of RAM (read-guest-mem's byte-for-byte comparison, a
#: migration's RAM) costs in proportion to it, and a PC's or virt's RAM
#: below 4 GiB has the same layout (the low regions, one region above
#: 1 MiB) at 128 MiB as at 256; the real guest boots in it (upstream's
#: read-guest-mem used 256, its migration test 512).
DEFAULT_MEM_MB = 128

#: memory backend name -> QEMU object type
MEM_BACKENDS = {
    "memfd": "memory-backend-memfd",
    "memfile": "memory-backend-file",
    "hugetlbfs": "memory-backend-file",
    "shm": "memory-backend-shm",
}


class Unavailable(NotAvailable):
    """The memory backend cannot be used here (the reason is the text):
    a test CANCELs."""


def memory_path(backend: str, caps: Capabilities, binary: str,
                hugetlbfs_path: Optional[str], mem_mb: int) -> Optional[str]:
    """The memory path ``backend`` needs (a hugetlbfs mount), or None.

    :raise KeyError: ``backend`` is no name of :data:`MEM_BACKENDS` (a
        broken configuration, not a missing feature).
    :raise Unavailable: QEMU lacks the object, or the machine the mount or
        the huge pages.
    """
    if backend not in MEM_BACKENDS:
        raise KeyError(f"unknown membackend '{backend}' (valid: "
                       f"{', '.join(MEM_BACKENDS)})")
    qom = MEM_BACKENDS[backend]
    if not caps.has_object(qom):
        raise Unavailable(f"{binary} has no '{qom}' (membackend={backend})")
    if backend != "hugetlbfs":
        return None
    path = hugetlbfs_path
    if not path:
        mounts = hugetlbfs_mounts()
        if not mounts:
            raise Unavailable("membackend=hugetlbfs: no hugetlbfs mount here "
                              "(./setup.sh run as root mounts one and "
                              "reserves huge pages), and no -p "
                              "hugetlbfs_path=")
        path = mounts[0]
    if not os.path.isdir(path) or not hugetlbfs_mounted(path):
        raise Unavailable(f"hugetlbfs_path={path} is not a hugetlbfs mount")
    need = mem_mb << 20
    free = huge_pages_free()
    if free < need:
        raise Unavailable(f"membackend=hugetlbfs: {free >> 20} MiB of free "
                          f"huge pages, the guest needs {need >> 20} MiB "
                          "(./setup.sh run as root reserves them)")
    return path


def hugetlbfs_mounted(path: str) -> bool:
    """Whether ``path`` is (inside) a hugetlbfs mount, from /proc/mounts."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and \
                    len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    return fstype == "hugetlbfs"


def hugetlbfs_mounts() -> List[str]:
    """Every hugetlbfs mount point, from /proc/mounts."""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        return [line.split()[1] for line in mounts
                if line.split()[2:3] == ["hugetlbfs"]]


def huge_pages_free() -> int:
    """Bytes of free huge pages of the default size (/proc/meminfo)."""
    info = {}
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            key, _, value = line.partition(":")
            info[key] = value.split()
    free = int(info.get("HugePages_Free", ["0"])[0])
    size_kib = int(info.get("Hugepagesize", ["0"])[0])
    return free * size_kib * 1024
