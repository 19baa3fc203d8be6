"""
One move of the hostile front-end, and its reproducer form.

A fuzz run is a list of :class:`Step` s: a message (any bytes, any header,
any fds), a kick of a ring's eventfd, a write into the guest memory the
fuzzer shares with the back-end, or a new connection.  A step is plain
data, so that a failing run can be written to a file, cut down and played
again byte for byte (:mod:`.minimise`, :mod:`.campaign`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from avocado_vhost.vhost_user.message import HEADER, VERSION, request_name

__all__ = ["FdSpec", "Step", "dump", "load", "FORMAT"]

#: the reproducer file's format tag (bump when a field changes meaning)
FORMAT = "avocado-vhost-fuzz/1"

#: what a file descriptor sent with a message is
FD_KINDS = ("eventfd", "memfd", "region", "pipe", "socket", "devnull")


@dataclass(frozen=True)
class FdSpec:
    """A file descriptor to make and send.

    ``region``: a copy of the fuzzer's shared guest-memory region number
    ``size`` (so the back-end maps memory the fuzzer can write into);
    ``memfd``: a fresh memfd of ``size`` bytes; ``eventfd`` kept by the
    fuzzer when sent as a kick fd (see :class:`Step` ``kick``); ``socket``:
    one end of a socketpair whose other end the fuzzer serves as the
    back-end channel; ``pipe``: a pipe's read end; ``devnull``: /dev/null.
    """

    kind: str
    size: int = 0

    def __str__(self) -> str:
        return f"{self.kind}:{self.size}" if self.kind in (
            "memfd", "region") else self.kind


@dataclass(frozen=True)
class Step:
    """One move.  ``kind`` is ``msg``, ``hangup``, ``kick``, ``poke`` or
    ``connect``.

    msg: ``request``, ``flags`` and ``payload`` go out as they are;
    hangup: the same (repeated, so that answers are still to be written:
    see :data:`.wire.HANGUP_REPEATS`), and the connection is closed at
    once, the answers unread (a front-end that dies mid-request), then a
    new one opened;
    ``size`` overrides the header's size field (a header that lies);
    ``fds`` ride along as SCM_RIGHTS.  kick: the eventfd last sent as
    ring ``ring``'s kick fd is signalled.  poke: ``data`` is written at
    ``offset`` of shared region ``region``.  connect: the connection is
    closed and a new one opened.  ``why`` is the generator's label.
    """

    kind: str = "msg"
    request: int = 0
    flags: int = VERSION
    payload: bytes = b""
    size: Optional[int] = None
    fds: Tuple[FdSpec, ...] = ()
    ring: int = 0
    region: int = 0
    offset: int = 0
    data: bytes = b""
    why: str = ""

    def wire(self) -> bytes:
        """The message's bytes (header and payload)."""
        size = len(self.payload) if self.size is None else self.size
        return HEADER.pack(self.request & 0xFFFFFFFF,
                           self.flags & 0xFFFFFFFF,
                           size & 0xFFFFFFFF) + self.payload

    def __str__(self) -> str:
        if self.kind == "kick":
            return f"kick ring {self.ring}"
        if self.kind == "poke":
            return (f"write {len(self.data)} bytes at region {self.region}"
                    f" +{self.offset:#x}")
        if self.kind == "connect":
            return "new connection"
        if self.kind == "hangup":
            return (f"{request_name(self.request)} flags={self.flags:#x}, "
                    "then hang up at once")
        fds = f" fds=[{', '.join(map(str, self.fds))}]" if self.fds else ""
        size = "" if self.size is None else f" size-field={self.size}"
        return (f"{request_name(self.request)} flags={self.flags:#x} "
                f"payload={len(self.payload)}B{size}{fds}"
                + (f"  ({self.why})" if self.why else ""))

    def to_json(self) -> Dict[str, Any]:
        out = {k: v for k, v in asdict(self).items()
               if v != getattr(_DEFAULT, k)}
        for key in ("payload", "data"):
            if key in out:
                out[key] = out[key].hex()
        if "fds" in out:
            out["fds"] = [str(f) for f in self.fds]
        return out

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "Step":
        values = dict(obj)
        for key in ("payload", "data"):
            if key in values:
                values[key] = bytes.fromhex(values[key])
        if "fds" in values:
            values["fds"] = tuple(_fd_from_text(t) for t in values["fds"])
        return cls(**values)


_DEFAULT = Step()


def _fd_from_text(text: str) -> FdSpec:
    kind, _, size = text.partition(":")
    if kind not in FD_KINDS:
        raise ValueError(f"unknown fd kind {kind!r} in a reproducer")
    return FdSpec(kind, int(size or 0))


def dump(path: str, steps: Sequence[Step], header: Dict[str, Any]) -> None:
    """Write a reproducer: a header (what was fuzzed, how it ended) and the
    steps, one JSON object per line so that a diff reads well."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"format": FORMAT, **header}) + "\n")
        for step in steps:
            f.write(json.dumps(step.to_json()) + "\n")


def load(path: str) -> Tuple[Dict[str, Any], List[Step]]:
    """Read a reproducer written by :func:`dump` (or by hand: a line's
    ``"repeat": N`` stands for N copies of its step -- a leak's
    reproducer is one message many times)."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty reproducer")
    header = json.loads(lines[0])
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a reproducer of format {FORMAT}")
    steps: List[Step] = []
    for line in lines[1:]:
        obj = json.loads(line)
        repeat = int(obj.pop("repeat", 1))
        steps += [Step.from_json(obj)] * repeat
    return header, steps


