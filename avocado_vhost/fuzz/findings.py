"""
Defects the fuzzer found in real back-ends, with their reproducers.

Like :mod:`avocado_vhost.checks.known_defects` for QEMU's front-end: a finding
whose cut-down run matches an entry here (same kind, its last message one
of the entry's requests, on a back-end the entry names) is *known*: the
test reports it as found and does not fail; any other finding fails.  The
reproducers (``data/fuzz-findings/*.jsonl``) replay with
``python -m avocado_vhost fuzz --backend NAME --replay FILE``.

The libvhost-user ones were read in the source of QEMU 10.2.2 and of
QEMU master 75fdca413d (February 2026, ``github:pbo-linaro/qemu-ci``):
both are still there.  The DPDK one is in Debian 12's DPDK 22.11.11.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

__all__ = ["BackendDefect", "FINDINGS", "match", "known_id", "rings_limit",
           "reproducer_path"]

_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data", "fuzz-findings")
_LIBVHOST_USER = ("qsd", "vhost-user-blk", "vhost-user-bridge")


@dataclass(frozen=True)
class BackendDefect:
    """One defect of a back-end (or of the library under several)."""

    id: str
    #: the code that carries it
    where: str
    #: the kit's back-ends built on that code
    backends: Tuple[str, ...]
    #: outcome kinds it shows as (crash, hang)
    kinds: FrozenSet[str]
    #: the requests whose message sets it off (empty, and no signal: any
    #: finding of its kinds on its back-ends -- a leak shows wherever the
    #: limit is crossed)
    requests: FrozenSet[str]
    title: str
    detail: str
    #: reproducer files (in data/fuzz-findings)
    reproducers: Tuple[str, ...]
    #: a crash by this signal matches whatever the last request (set when
    #: the signal itself is the defect)
    signal: str = ""
    #: a fuzz campaign on a back-end that carries it keeps ring indexes
    #: below this, to reach past it (None: nothing to step around)
    rings_limit: Optional[int] = None


FINDINGS: Tuple[BackendDefect, ...] = (
    BackendDefect(
        "libvhost-user-vring-index-unchecked",
        "subprojects/libvhost-user/libvhost-user.c: vu_set_vring_num_exec, "
        "vu_set_vring_addr_exec, vu_set_vring_base_exec, "
        "vu_get_vring_base_exec",
        _LIBVHOST_USER, frozenset({"crash"}),
        frozenset({"SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE",
                   "GET_VRING_BASE"}),
        "a ring index from the front-end indexes dev->vq[] unchecked",
        "SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE and GET_VRING_BASE "
        "use the message's ring index without comparing it to max_queues "
        "(the fd messages and SET_VRING_ENABLE do compare): one 20-byte "
        "message writes outside the array.  SET_VRING_BASE index 0x7fffffff "
        "kills qemu-storage-daemon, contrib/vhost-user-blk and the bridge "
        "with SIGSEGV; GET_VRING_BASE index 8 aborts them (qsd: "
        "'vu_get_queue: Assertion qidx < dev->max_queues failed').  The "
        "payload size is not checked per request either, so a 7-byte "
        "SET_VRING_NUM takes its index from stale bytes.  rust-vmm fixed "
        "the same in vhost-user-backend in 2023 (rust-vmm/vhost#211).",
        ("libvhost-user-set-vring-base-index.jsonl",
         "libvhost-user-get-vring-base-index.jsonl"), rings_limit=1),
    BackendDefect(
        "libvhost-user-mem-region-wraps",
        "subprojects/libvhost-user/libvhost-user.c: _vu_add_mem_reg",
        _LIBVHOST_USER, frozenset({"hang"}),
        frozenset({"SET_MEM_TABLE", "ADD_MEM_REG"}),
        "a memory region whose end wraps past 2**64 spins forever",
        "The binary search for the insertion point computes end = "
        "guest_phys_addr + memory_size without overflow check.  A region "
        "that starts inside an existing one and whose end wraps is "
        "neither 'overlapping' nor before or after it, so neither bound "
        "moves: the back-end's only thread spins at 100 % CPU and never "
        "answers again (one SET_MEM_TABLE or ADD_MEM_REG).",
        ("libvhost-user-mem-region-wraps.jsonl",)),
    BackendDefect(
        "libvhost-user-mem-table-count-unchecked",
        "subprojects/libvhost-user/libvhost-user.c: vu_set_mem_table_exec",
        _LIBVHOST_USER, frozenset({"crash"}), frozenset({"SET_MEM_TABLE"}),
        "SET_MEM_TABLE's region count is believed over the message's size",
        "The handler loops over memory.nregions regions without comparing "
        "the count to the payload's size, to the fds received or to the "
        "limit of 8: a 12-byte SET_MEM_TABLE whose count reads 3 billion "
        "walks off the message buffer (SIGSEGV in all three back-ends).",
        ("libvhost-user-mem-table-count.jsonl",)),
    BackendDefect(
        "libvhost-user-sigpipe",
        "subprojects/libvhost-user/libvhost-user.c: vu_message_write "
        "(sendmsg without MSG_NOSIGNAL); contrib/vhost-user-blk and "
        "tests/vhost-user-bridge.c leave SIGPIPE at its default",
        ("vhost-user-blk", "vhost-user-bridge"), frozenset({"crash"}),
        frozenset(),
        "a front-end that hangs up kills the back-end with SIGPIPE",
        "A front-end that hangs up before reading an answer (QEMU killed "
        "mid-request) makes the back-end's write of that answer raise "
        "SIGPIPE, which kills contrib/vhost-user-blk and the bridge "
        "instead of letting them see the hang-up: GET_FEATURES (sent 64 "
        "times in a row, so that an answer is still to be written when the "
        "hang-up comes: once alone races the close) and a close.  qemu-storage-daemon ignores SIGPIPE and is not affected; "
        "neither are DPDK and virtiofsd.",
        ("libvhost-user-sigpipe.jsonl",), signal="SIGPIPE"),
    BackendDefect(
        "libvhost-user-unused-fds-leak",
        "subprojects/libvhost-user/libvhost-user.c: vu_dispatch and the "
        "handlers (fds a message carries are closed only by the handler "
        "that uses them)",
        _LIBVHOST_USER, frozenset({"fds"}), frozenset(),
        "fds a message carries but does not use are never closed",
        "An fd sent with a request that takes none (GET_FEATURES with 3 "
        "fds: 3 fds kept per message), one more than a request uses "
        "(SET_MEM_TABLE with an extra fd), or carried by a request that "
        "is refused (SET_INFLIGHT_FD of 20 bytes) stays open in the "
        "back-end for good, while the connection goes on: 400 such "
        "messages take qemu-storage-daemon past 1200 open fds.  A "
        "front-end can exhaust the daemon's fd table on one connection.",
        ("libvhost-user-unused-fds-leak.jsonl",)),
    BackendDefect(
        "libvhost-user-inflight-unchecked",
        "subprojects/libvhost-user/libvhost-user.c: vu_get_inflight_fd, "
        "vu_set_inflight_fd",
        _LIBVHOST_USER, frozenset({"crash", "hang", "memory"}),
        frozenset({"GET_INFLIGHT_FD", "SET_INFLIGHT_FD"}),
        "the in-flight area's sizes from the front-end are believed",
        "GET_INFLIGHT_FD allocates and zeroes num_queues x queue_size "
        "entries with no bound (65535 x 65535: gigabytes, the back-end "
        "stops answering while its memory grows).  SET_INFLIGHT_FD maps "
        "mmap_size bytes without comparing them to the file (an empty "
        "memfd: SIGBUS) and lays num_queues x queue_size entries into "
        "the mapping without comparing them to mmap_size (2 queues of "
        "1024 in 4 KiB: SIGSEGV).",
        ("libvhost-user-inflight-get-huge.jsonl",
         "libvhost-user-inflight-set-short.jsonl",
         "libvhost-user-inflight-set-empty-file.jsonl")),
    BackendDefect(
        "dpdk-inflight-unchecked",
        "DPDK lib/vhost/vhost_user.c (Debian 12's librte-vhost23 "
        "22.11.11): vhost_user_get_inflight_fd, vhost_user_set_inflight_fd",
        ("dpdk",), frozenset({"crash", "hang", "memory"}),
        frozenset({"GET_INFLIGHT_FD", "SET_INFLIGHT_FD"}),
        "the in-flight area's sizes from the front-end are believed",
        "As in libvhost-user: GET_INFLIGHT_FD for 65535 queues of 65535 "
        "makes testpmd allocate and zero gigabytes without answering; "
        "SET_INFLIGHT_FD maps an empty memfd as 4 KiB and dies of SIGBUS "
        "on the first touch, and lays 2 queues of 1024 entries into 4 KiB "
        "(SIGSEGV).",
        ("dpdk-inflight-get-huge.jsonl",
         "dpdk-inflight-set-empty-file.jsonl",
         "libvhost-user-inflight-set-short.jsonl")),
    BackendDefect(
        "dpdk-region-past-file-end",
        "DPDK lib/vhost/vhost_user.c (Debian 12's librte-vhost23 "
        "22.11.11): vhost_user_mmap_region",
        ("dpdk",), frozenset({"crash"}),
        frozenset({"SET_VRING_KICK", "SET_VRING_ADDR", "SET_MEM_TABLE"}),
        "a memory region larger than its file is mapped, then read: SIGBUS",
        "SET_MEM_TABLE maps memory_size bytes of each region's fd without "
        "comparing them to the file's size (fstat).  A region of 256 KiB "
        "on an empty memfd maps; when a ring in it is then used "
        "(SET_VRING_KICK after SET_VRING_ADDR), the first read of the "
        "ring is past the end of the file and testpmd dies of SIGBUS.  "
        "The library's own security model (the top of vhost_user.c) says "
        "no message may crash the application.",
        ("dpdk-region-past-file-end.jsonl",)),
    BackendDefect(
        "dpdk-inflight-fd-leak",
        "DPDK lib/vhost/vhost_user.c (Debian 12's librte-vhost23 "
        "22.11.11): vhost_user_set_inflight_fd",
        ("dpdk",), frozenset({"fds"}), frozenset(),
        "a SET_INFLIGHT_FD of the wrong size leaks its fd",
        "A SET_INFLIGHT_FD whose payload is not 24 bytes is refused "
        "('invalid set_inflight_fd message size is 20') and the connection "
        "closed, but the fd it carried is never closed: one fd per message "
        "(30 messages, 30 fds).  A front-end that repeats it exhausts "
        "testpmd's fd table (1031 open after a 20 s campaign; the soft "
        "limit is 1024).  20 bytes is the spec's field list; QEMU sends "
        "the C struct's 24.",
        ("dpdk-inflight-fd-leak.jsonl",)),
)


def match(backend: str, kind: str, request: str, detail: str = ""
          ) -> Optional[BackendDefect]:
    """The known defect a finding on ``backend`` is, if any: its kind and
    last request, or the signal that killed it (``detail``)."""
    return next((d for d in FINDINGS if backend in d.backends
                 and kind in d.kinds and (
                     request in d.requests
                     or (d.signal and detail.endswith(d.signal))
                     or (not d.requests and not d.signal))), None)


def rings_limit(backend: str) -> Optional[int]:
    """The ring-index limit a campaign on ``backend`` keeps (see
    :attr:`BackendDefect.rings_limit`)."""
    limits = [d.rings_limit for d in FINDINGS
              if backend in d.backends and d.rings_limit is not None]
    return min(limits) if limits else None


def known_id(backend: str, kind: str, request: str, detail: str = ""
             ) -> Optional[str]:
    """:func:`match`'s id (the fuzzer's ``known`` callback)."""
    defect = match(backend, kind, request, detail)
    return defect.id if defect is not None else None


def reproducer_path(name: str) -> str:
    return os.path.join(_DATA, name)
