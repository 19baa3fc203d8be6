"""
Seeded moves of a hostile front-end: mostly what a front-end sends, with
values at and past every boundary, and sometimes messages no front-end
should send at all.

Most moves are *plausible*: the requests QEMU sends, in the shapes it
sends them, with rings laid out in the memory the fuzzer shares with the
back-end (so the back-end really walks rings the fuzzer then writes
garbage into).  Their fields are drawn from boundary values: ring indexes
at and past the number of rings, sizes 0, 1, 2**15, 2**16, 2**32 - 1,
memory regions that overlap, wrap around 2**64, outgrow their file or
shrink.  The rest are *hostile*: unknown requests, wrong header flags, a
size field that disagrees with the body, fds of the wrong number or kind.

The same seed gives the same moves (:class:`random.Random`), whatever the
back-end answers: the fuzzer's state never depends on the replies, so a
run replays exactly (:mod:`.campaign`).
"""

from __future__ import annotations

import random
import struct
from typing import Callable, List, Optional, Sequence, Tuple

from avocado_vhost.vhost_user.message import (FLAG_NEED_REPLY, FLAG_REPLY,
                                  VRING_NOFD_FLAG, VERSION, Request)
from avocado_vhost.fuzz.step import FdSpec, Step

__all__ = ["Generator", "REGION_SIZES", "region_gpa", "region_uva",
           "ring_layout"]

#: the guest memory the fuzzer shares with the back-end, region by region
REGION_SIZES = (0x40000, 0x40000, 0x100000)
_U64 = struct.Struct("=Q")
_STATE = struct.Struct("=II")
_ADDR = struct.Struct("=IIQQQQ")
_REGION = struct.Struct("=QQQQ")
_DESC = struct.Struct("=QIHH")


def region_gpa(index: int) -> int:
    """Guest physical address of shared region ``index``."""
    return index * 0x10000000


def region_uva(index: int) -> int:
    """The front-end's (made-up) user address of shared region ``index``."""
    return 0x7F0000000000 + index * 0x10000000


def ring_layout(ring: int) -> Tuple[int, int, int]:
    """Offsets in region 0 of ring ``ring``'s descriptor table, available
    and used rings (room for 256 entries each)."""
    base = (ring % 16) * 0x4000
    return base, base + 0x1000, base + 0x2000


_INDEXES = (0, 1, 2, 3, 7, 8, 255, 256, 0x1FF, 0x7FFFFFFF, 0xFFFFFFFF)
_NUMS = (0, 1, 2, 3, 64, 256, 257, 1024, 32768, 32769, 65535, 65536,
         0xFFFFFFFF)
_SIZES64 = (0, 1, 4096, 0x40000, 0x40001, 0x100000, 1 << 32, 1 << 63,
            (1 << 64) - 4096, (1 << 64) - 1)


class Generator:
    """Moves for a back-end that offered ``features`` and
    ``protocol_features`` (read once before the run, so that the moves do
    not depend on what it answers later)."""

    def __init__(self, seed: int, features: int, protocol_features: int,
                 rings: Optional[int] = None):
        self.rng = random.Random(seed)
        self.features = features
        self.protocol_features = protocol_features
        #: when set, ring indexes stay below it: a back-end's known
        #: unchecked index is stepped around, to reach further
        self.rings = rings
        plausible: Sequence[Tuple[int, Callable[[], Step]]] = (
            (6, self.mem_table), (3, self.mem_slot), (8, self.vring_state),
            (6, self.vring_addr), (8, self.vring_fd), (10, self.kick),
            (10, self.poke), (4, self.features_msg), (2, self.log),
            (2, self.inflight), (3, self.config), (2, self.channel),
            (3, self.status), (4, self.misc), (2, self.reconnect_or_owner))
        hostile: Sequence[Tuple[int, Callable[[], Step]]] = (
            (3, self.bad_header), (3, self.bad_size), (2, self.unknown),
            (3, self.bad_fds))
        self._moves = [m for w, m in plausible for _ in range(w)]
        self._hostile = [m for w, m in hostile for _ in range(w)]

    # --- the run -----------------------------------------------------------
    def opening(self) -> List[Step]:
        """What QEMU says first on a connection."""
        steps = [Step(request=Request.SET_OWNER, why="opening"),
                 Step(request=Request.GET_FEATURES, why="opening")]
        if self.features & (1 << 30):
            steps += [Step(request=Request.GET_PROTOCOL_FEATURES,
                           why="opening"),
                      Step(request=Request.SET_PROTOCOL_FEATURES,
                           payload=_U64.pack(self.protocol_features),
                           why="opening")]
        steps.append(Step(request=Request.SET_FEATURES,
                          payload=_U64.pack(self.features), why="opening"))
        return steps

    def next(self) -> Step:
        moves = self._hostile if self.rng.random() < 0.15 else self._moves
        return self.rng.choice(moves)()

    # --- helpers -----------------------------------------------------------
    def _flags(self) -> int:
        return VERSION | (FLAG_NEED_REPLY if self.rng.random() < 0.5 else 0)

    def _index(self) -> int:
        if self.rings is not None:
            return self.rng.randrange(self.rings)
        r = self.rng.random()
        if r < 0.7:
            return self.rng.randrange(4)
        return self.rng.choice(_INDEXES)

    def _num(self) -> int:
        if self.rng.random() < 0.5:
            return self.rng.choice((64, 128, 256))
        return self.rng.choice(_NUMS)

    def _msg(self, request: int, payload: bytes = b"",
             fds: Tuple[FdSpec, ...] = (), why: str = "") -> Step:
        return Step(request=int(request), flags=self._flags(),
                    payload=payload, fds=fds, why=why)

    def _region(self) -> Tuple[bytes, FdSpec, str]:
        """One memory region description and its fd: mostly a shared
        region as it is, else bent (too long, offset past the end,
        overlapping, wrapping, a file too small)."""
        i = self.rng.randrange(len(REGION_SIZES))
        gpa, size, uva, off = region_gpa(i), REGION_SIZES[i], region_uva(i), 0
        fd = FdSpec("region", i)
        why = f"region {i}"
        bend = self.rng.random()
        if bend < 0.12:
            size, why = self.rng.choice(_SIZES64), f"region {i}, odd size"
        elif bend < 0.2:
            off = self.rng.choice((4096, REGION_SIZES[i], 1 << 40,
                                   (1 << 64) - 4096))
            why = f"region {i}, mmap offset {off:#x}"
        elif bend < 0.27:
            gpa, why = (1 << 64) - 4096, f"region {i} wraps 2**64"
        elif bend < 0.34:
            gpa, why = region_gpa(0) + 0x1000, f"region {i} overlaps region 0"
        elif bend < 0.4:
            fd = FdSpec("memfd", self.rng.choice((0, 4096)))
            why = f"region {i} on a file of {fd.size} bytes"
        return _REGION.pack(gpa, size, uva, off), fd, why

    # --- plausible moves ---------------------------------------------------
    def mem_table(self) -> Step:
        count = self.rng.choice((0, 1, 2, 3, 3, 3, 8, 9))
        regions = [self._region() for _ in range(count)]
        fds = tuple(fd for _, fd, _ in regions)
        if self.rng.random() < 0.1:  # one fd too few or too many
            fds = fds[:-1] if fds and self.rng.random() < 0.5 else (
                fds + (FdSpec("eventfd"),))
        body = struct.pack("=II", count, 0) + b"".join(r for r, _, _ in regions)
        return self._msg(Request.SET_MEM_TABLE, body, fds,
                         "; ".join(w for _, _, w in regions) or "no region")

    def mem_slot(self) -> Step:
        region, fd, why = self._region()
        if self.rng.random() < 0.5:
            return self._msg(Request.ADD_MEM_REG, bytes(8) + region, (fd,),
                             why)
        return self._msg(Request.REM_MEM_REG, bytes(8) + region,
                         (fd,) if self.rng.random() < 0.5 else (), why)

    def vring_state(self) -> Step:
        request = self.rng.choice((Request.SET_VRING_NUM,
                                   Request.SET_VRING_BASE,
                                   Request.SET_VRING_ENABLE,
                                   Request.GET_VRING_BASE,
                                   Request.SET_VRING_ENDIAN))
        value = (self._num() if request is not Request.SET_VRING_ENABLE
                 else self.rng.choice((0, 1, 1, 2, 0xFFFFFFFF)))
        return self._msg(request, _STATE.pack(self._index(), value))

    def vring_addr(self) -> Step:
        ring = self._index()
        desc, avail, used = ring_layout(ring)
        base = region_uva(0)
        addrs = [base + desc, base + used, base + avail]
        why = "rings in region 0"
        if self.rng.random() < 0.3:
            slot = self.rng.randrange(3)
            addrs[slot] = self.rng.choice(
                (0, base + REGION_SIZES[0] - 2, base + REGION_SIZES[0],
                 region_uva(5), (1 << 64) - 2, base + 1))
            why = f"ring part {slot} at {addrs[slot]:#x}"
        flags = self.rng.choice((0, 0, 0, 1, 0xFFFFFFFF))
        log = self.rng.choice((0, region_gpa(0), (1 << 64) - 1))
        return self._msg(Request.SET_VRING_ADDR,
                         _ADDR.pack(ring & 0xFFFFFFFF, flags, addrs[0],
                                    addrs[1], addrs[2], log), why=why)

    def vring_fd(self) -> Step:
        request = self.rng.choice((Request.SET_VRING_KICK,
                                   Request.SET_VRING_KICK,
                                   Request.SET_VRING_CALL,
                                   Request.SET_VRING_ERR))
        index = self._index() & 0xFF if (
            self.rings is not None or self.rng.random() < 0.9) else (
            self.rng.choice(_INDEXES))
        r = self.rng.random()
        if r < 0.1:
            return self._msg(request, _U64.pack(index | VRING_NOFD_FLAG),
                             why="no fd (polling)")
        fds: Tuple[FdSpec, ...] = (FdSpec("eventfd"),)
        why = ""
        if r < 0.2:
            fds, why = (FdSpec(self.rng.choice(("pipe", "memfd", "devnull",
                                                "socket"))),), "odd fd kind"
        elif r < 0.25:
            fds, why = (), "fd missing"
        return self._msg(request, _U64.pack(index), fds, why)

    def kick(self) -> Step:
        return Step(kind="kick", ring=self.rng.randrange(4))

    def poke(self) -> Step:
        """Garbage where a ring is: descriptors pointing anywhere, chains
        that loop, available indexes far ahead."""
        ring = self.rng.randrange(4)
        desc, avail, used = ring_layout(ring)
        r = self.rng.random()
        if r < 0.45:
            entries = b"".join(_DESC.pack(
                self.rng.choice((region_gpa(0) + 0x30000, region_gpa(1),
                                 region_gpa(2) + 0xFFFF0, 0, 1 << 63,
                                 (1 << 64) - 16)),
                self.rng.choice((0, 1, 14, 1500, 4096, 0xFFFFFFFF)),
                self.rng.choice((0, 1, 2, 3, 4, 5, 0xFFFF)),
                self.rng.choice((0, 1, 2, 255, 0xFFFF)))
                for _ in range(self.rng.randrange(1, 8)))
            start = self.rng.randrange(8) * _DESC.size
            return Step(kind="poke", offset=desc + start, data=entries,
                        why=f"descriptors of ring {ring}")
        if r < 0.8:
            idx = self.rng.choice((1, 2, 8, 255, 256, 0x8000, 0xFFFF))
            heads = b"".join(struct.pack("=H", self.rng.choice(
                (0, 1, 2, 255, 256, 0xFFFF))) for _ in range(8))
            return Step(kind="poke", offset=avail,
                        data=struct.pack("=HH", 0, idx) + heads,
                        why=f"available ring of ring {ring}, idx {idx}")
        return Step(kind="poke", offset=used,
                    data=struct.pack("=HH", self.rng.choice((0, 1)),
                                     self.rng.choice((0, 0xFFFF))),
                    why=f"used ring of ring {ring}")

    def features_msg(self) -> Step:
        request = self.rng.choice((Request.SET_FEATURES,
                                   Request.SET_PROTOCOL_FEATURES,
                                   Request.GET_FEATURES,
                                   Request.GET_PROTOCOL_FEATURES))
        if request in (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES):
            return self._msg(request)
        mine = (self.features if request is Request.SET_FEATURES
                else self.protocol_features)
        value = self.rng.choice((mine, 0, (1 << 64) - 1,
                                 mine | (1 << self.rng.randrange(64)),
                                 mine & ~(1 << self.rng.randrange(64))))
        return self._msg(request, _U64.pack(value & ((1 << 64) - 1)))

    def log(self) -> Step:
        if self.rng.random() < 0.3:
            return self._msg(Request.SET_LOG_FD, fds=(FdSpec("eventfd"),))
        size = self.rng.choice((0, 8, 4096, 1 << 20, (1 << 64) - 1))
        offset = self.rng.choice((0, 4096, (1 << 64) - 4096))
        fd = FdSpec("memfd", self.rng.choice((0, 4096)))
        return self._msg(Request.SET_LOG_BASE, struct.pack("=QQ", size,
                                                           offset), (fd,),
                         f"log of {size:#x} at {offset:#x}")

    def inflight(self) -> Step:
        size = self.rng.choice((0, 4096, 1 << 20, (1 << 64) - 1))
        # QEMU sends the C struct's 24 bytes (4 of padding); the spec's
        # fields are 20: both, and garbage sizes from bad_size
        body = struct.pack("=QQHH", size, self.rng.choice((0, 4096)),
                           self.rng.choice((0, 1, 2, 0xFFFF)),
                           self.rng.choice((0, 1, 64, 1024, 0xFFFF)))
        if self.rng.random() < 0.7:
            body += bytes(4)
        if self.rng.random() < 0.5:
            return self._msg(Request.GET_INFLIGHT_FD, body)
        return self._msg(Request.SET_INFLIGHT_FD, body,
                         (FdSpec("memfd", self.rng.choice((0, 4096))),))

    def config(self) -> Step:
        offset = self.rng.choice((0, 4, 8, 20, 255, 256, 0xFFFFFFFF))
        size = self.rng.choice((0, 1, 4, 8, 60, 256))
        claimed = size if self.rng.random() < 0.8 else self.rng.choice(
            (size + 1, 257, 0xFFFFFFFF))
        request = self.rng.choice((Request.GET_CONFIG, Request.SET_CONFIG))
        body = struct.pack("=III", offset, claimed,
                           self.rng.choice((0, 1))) + bytes(size)
        return Step(request=int(request), flags=VERSION | FLAG_NEED_REPLY,
                    payload=body, why=f"config +{offset} size {claimed}")

    def channel(self) -> Step:
        return self._msg(Request.SET_BACKEND_REQ_FD, fds=(FdSpec(
            "socket" if self.rng.random() < 0.85 else "eventfd"),))

    def status(self) -> Step:
        request = self.rng.choice((Request.SET_STATUS, Request.GET_STATUS,
                                   Request.RESET_DEVICE, Request.RESET_OWNER))
        if request is Request.SET_STATUS:
            return self._msg(request, _U64.pack(self.rng.choice(
                (0, 1, 3, 7, 15, 0x40, 0x80, (1 << 64) - 1))))
        return self._msg(request)

    def misc(self) -> Step:
        choice = self.rng.randrange(10)
        if choice == 0:
            return self._msg(Request.GET_QUEUE_NUM)
        if choice == 1:
            return self._msg(Request.GET_MAX_MEM_SLOTS)
        if choice == 2:
            return self._msg(Request.SEND_RARP, bytes(8))
        if choice == 3:
            return self._msg(Request.NET_SET_MTU, _U64.pack(
                self.rng.choice((0, 68, 1500, 65535, (1 << 64) - 1))))
        if choice == 4:
            return self._msg(Request.IOTLB_MSG, struct.pack(
                "=QQQBB6x", region_gpa(0), self.rng.choice((0, 4096,
                                                            (1 << 64) - 1)),
                region_uva(0), self.rng.randrange(4),
                self.rng.randrange(6)))
        if choice == 5:
            return self._msg(Request.VRING_KICK, _STATE.pack(self._index(), 0))
        if choice == 6:
            return self._msg(Request.SET_DEVICE_STATE_FD,
                             _STATE.pack(self.rng.randrange(3),
                                         self.rng.randrange(3)),
                             (FdSpec("pipe"),))
        if choice == 7:
            return self._msg(Request.CHECK_DEVICE_STATE)
        if choice == 8:
            return self._msg(Request.GET_SHARED_OBJECT, bytes(16))
        return self._msg(self.rng.choice((Request.POSTCOPY_ADVISE,
                                          Request.POSTCOPY_LISTEN,
                                          Request.POSTCOPY_END)))

    def reconnect_or_owner(self) -> Step:
        r = self.rng.random()
        if r < 0.3:
            return Step(kind="connect")
        if r < 0.5:  # a front-end that dies with a request unanswered
            return Step(kind="hangup", request=int(self.rng.choice(
                (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                 Request.GET_VRING_BASE, Request.GET_QUEUE_NUM))),
                payload=_STATE.pack(0, 0) if self.rng.random() < 0.3
                else b"")
        return self._msg(Request.SET_OWNER)

    # --- hostile moves -----------------------------------------------------
    def bad_header(self) -> Step:
        step = self.rng.choice(self._moves)()
        if step.kind != "msg":
            return step
        flags = self.rng.choice((0, 2, 3, VERSION | FLAG_REPLY, 0xFFFFFFFF))
        return Step(request=step.request, flags=flags, payload=step.payload,
                    fds=step.fds, why=f"header flags {flags:#x}")

    def bad_size(self) -> Step:
        request = self.rng.choice(list(Request)[1:])
        length = self.rng.choice((0, 1, 7, 9, 12, 40, 264, 300, 4096))
        body = bytes(self.rng.getrandbits(8) for _ in range(length))
        if self.rng.random() < 0.3:  # a size field past the limit, no body
            return Step(request=int(request), size=self.rng.choice(
                (4097, 0x10000, 0xFFFFFFFF)), why="size field too big")
        return Step(request=int(request), flags=self._flags(), payload=body,
                    why=f"{length} random bytes")

    def unknown(self) -> Step:
        return self._msg(self.rng.choice((0, 44, 45, 99, 255, 0xFFFFFFFF)),
                         bytes(self.rng.choice((0, 8))), why="unknown request")

    def bad_fds(self) -> Step:
        step = self.rng.choice(self._moves)()
        if step.kind != "msg":
            return step
        count = self.rng.choice((1, 2, 8, 9, 16, 64))
        return Step(request=step.request, flags=step.flags,
                    payload=step.payload,
                    fds=tuple(FdSpec(self.rng.choice(("eventfd", "pipe",
                                                      "devnull")))
                              for _ in range(count)),
                    why=f"{count} fds")
