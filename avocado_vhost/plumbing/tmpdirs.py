"""
Private temp dirs that a dead test process cannot leak for long.

A test removes its own temp dir at tear-down, but a test process that is
killed (a runner's timeout, SIGKILL, a crash) runs no tear-down.  So every
dir carries an owner file naming the process that made it, by pid *and*
that process's start time (a pid alone may be reused), and each test
begins by removing the dirs whose owner is gone.  A dir without an owner
file is never touched: it is not ours, or its owner is still writing it.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import List, Optional

__all__ = ["make_private_tmpdir", "remove_orphans", "remove_all_orphans",
           "dump_base", "PREFIX", "DUMP_PREFIX", "start_time",
           "dpdk_runtime_base"]

PREFIX = "avh-"
#: guest memory dumps (hundreds of MiB) go to tmpfs when there is one
DUMP_PREFIX = "avh-dump-"
_SHM = "/dev/shm"
_OWNER = ".owner"


def start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None
    when the process is gone -- or dead and not yet reaped (a zombie keeps
    its /proc entry until its parent waits for it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def make_private_tmpdir(base: str, prefix: str = PREFIX) -> str:
    """``mkdtemp`` (mode 0700) in ``base``, stamped with this process."""
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    with open(os.path.join(path, _OWNER), "w", encoding="ascii") as owner:
        owner.write(f"{os.getpid()} {start_time(os.getpid())}\n")
    return path


def _orphaned(path: str) -> bool:
    try:
        with open(os.path.join(path, _OWNER), encoding="ascii") as owner:
            pid_text, started = owner.read().split()
    except (OSError, ValueError):
        return False
    return start_time(int(pid_text)) != started


def dump_base() -> str:
    """Where memory dumps go: /dev/shm (tmpfs) when there is one."""
    return _SHM if os.path.isdir(_SHM) else tempfile.gettempdir()


def dpdk_runtime_base() -> str:
    """Where DPDK's EAL keeps a process's runtime files: the suite's
    testpmds use ``--file-prefix=<their test's temp dir name>-<name>``, so
    a dead test's are found by its temp dir's name."""
    base = "/var/run" if os.geteuid() == 0 else (
        os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    return os.path.join(base, "dpdk")


def remove_all_orphans(tmp_base: str) -> List[str]:
    """Every kind of dir the suite makes (``avh-*`` in ``tmp_base``, dump
    dirs in :func:`dump_base`) whose owner is gone; the paths removed."""
    return (remove_orphans(tmp_base)
            + remove_orphans(dump_base(), prefix=DUMP_PREFIX))


def remove_orphans(*bases: str, prefix: str = PREFIX) -> List[str]:
    """Remove the dirs under ``bases`` whose owner process is gone; the
    paths removed."""
    removed = []
    for base in bases:
        for path in glob.glob(os.path.join(base, prefix + "*")):
            if os.path.isdir(path) and _orphaned(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                # what DPDK made for the dead test's testpmds
                for extra in glob.glob(os.path.join(
                        dpdk_runtime_base(), os.path.basename(path) + "-*")):
                    shutil.rmtree(extra, ignore_errors=True)
                    removed.append(extra)
    return removed
