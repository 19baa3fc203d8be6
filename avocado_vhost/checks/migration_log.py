"""
What a front-end must tell its back-end while it migrates, judged message by
message, each finding quoting the spec sentence it breaks.

The dirty-log check of ``test_migrate`` proves that a logged page arrives;
these checks look at the messages that make logging possible at all:

* ``SET_FEATURES`` carries ``VHOST_F_LOG_ALL`` while logging is on;
* every ring's ``SET_VRING_ADDR`` carries ``VHOST_VRING_F_LOG`` and a
  ``log_guest_addr`` equal to the guest-physical address of that ring's used
  ring (the address the guest driver wrote into the device);
* the log of ``SET_LOG_BASE`` covers every guest region, and the last byte
  of each logged used ring.

The input is a list of ``(request name, payload)`` pairs, so a test can
feed a deliberately broken copy of what QEMU really sent (the negative
control: the checks must find it).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Sequence, Tuple

from avocado_vhost.vhost_user.message import (VHOST_LOG_PAGE, VRING_F_LOG,
                                              LogDescription, U64,
                                              VirtioFeature, VringAddr)
from avocado_vhost.vhost_user.trace import TraceEntry

__all__ = ["Messages", "check_logging", "SPEC_LOG_ALL", "SPEC_LOG_ADDR",
           "SPEC_LOG_SIZE", "connection_messages", "break_log_all", "break_ring_log_flag",
           "break_ring_log_addr", "break_log_size"]

Messages = List[Tuple[str, object]]

SPEC_LOG_ALL = (
    '"To start/stop logging of data/used ring writes, the front-end may send '
    'messages VHOST_USER_SET_FEATURES with VHOST_F_LOG_ALL and '
    "VHOST_USER_SET_VRING_ADDR with VHOST_VRING_F_LOG in ring's flags set "
    'to 1/0, respectively." (vhost-user, Migration)')
SPEC_LOG_ADDR = (
    '"when logging modifications to the used ring (when VHOST_VRING_F_LOG is '
    "set for this ring), log_guest_addr should be used to calculate the log "
    "offset: the write to first byte of the used ring is logged at this "
    'offset from log start." (vhost-user, Migration)')
SPEC_LOG_SIZE = (
    '"The size of the log is supplied as part of VhostUserMsg which should '
    "be large enough to cover all known guest addresses. [...] The log "
    'covers from address 0 to the maximum of guest regions." and "the bit '
    "offset of the last byte of the ring must fall within the size supplied "
    'by VhostUserLog." (vhost-user, Migration)')

_LOG_ALL = int(VirtioFeature.LOG_ALL)


def _logging_window(messages: Messages) -> Messages:
    """The messages from the first SET_LOG_BASE up to the first
    GET_VRING_BASE (the source stopping its rings for the hand-over)."""
    names = [name for name, _ in messages]
    if "SET_LOG_BASE" not in names:
        return []
    start = names.index("SET_LOG_BASE")
    end = names.index("GET_VRING_BASE", start) \
        if "GET_VRING_BASE" in names[start:] else len(names)
    return messages[start:end]


def check_logging(messages: Messages, used_gpa: Dict[int, int],
                  used_len: Dict[int, int], ram_top: int) -> List[str]:
    """Findings (empty when the front-end did everything right).

    :param messages: one connection's requests, in order.
    :param used_gpa: ring index -> guest-physical address of its used ring,
        as the guest driver set it.
    :param used_len: ring index -> size of that used ring in bytes.
    :param ram_top: the end of the highest guest region.
    """
    window = _logging_window(messages)
    if not window:
        return ["no SET_LOG_BASE: the front-end never handed over a dirty "
                "log although it migrated with a back-end that offers "
                "LOG_SHMFD and LOG_ALL"]
    findings: List[str] = []
    log = window[0][1]
    if not isinstance(log, LogDescription):
        return [f"SET_LOG_BASE without a log description: {log!r}"]
    covered = log.size * 8 * VHOST_LOG_PAGE
    if covered < ram_top:
        findings.append(
            f"SET_LOG_BASE: a log of {log.size} bytes covers guest addresses "
            f"up to 0x{covered:x}, but guest RAM reaches 0x{ram_top:x}. "
            + SPEC_LOG_SIZE)

    features = [p.value for n, p in window
                if n == "SET_FEATURES" and isinstance(p, U64)]
    if not any(f & _LOG_ALL for f in features):
        findings.append("logging was started (SET_LOG_BASE) but no "
                        "SET_FEATURES carried VHOST_F_LOG_ALL. " + SPEC_LOG_ALL)
    on = False
    for value in features:
        if value & _LOG_ALL:
            on = True
        elif on:
            findings.append(f"SET_FEATURES 0x{value:x} dropped VHOST_F_LOG_ALL "
                            "while the migration was still logging. "
                            + SPEC_LOG_ALL)

    addrs: Dict[int, List[VringAddr]] = {}
    for name, payload in window:
        if name == "SET_VRING_ADDR" and isinstance(payload, VringAddr):
            addrs.setdefault(payload.index, []).append(payload)
    for ring, gpa in sorted(used_gpa.items()):
        if ring not in addrs:
            findings.append(f"ring {ring}: no SET_VRING_ADDR after "
                            "SET_LOG_BASE, so used-ring writes are never "
                            "logged. " + SPEC_LOG_ALL)
            continue
        for addr in addrs[ring]:
            if not addr.flags & VRING_F_LOG:
                findings.append(f"ring {ring}: SET_VRING_ADDR flags "
                                f"0x{addr.flags:x} lack VHOST_VRING_F_LOG "
                                "while logging. " + SPEC_LOG_ALL)
            if addr.log != gpa:
                findings.append(
                    f"ring {ring}: SET_VRING_ADDR log_guest_addr "
                    f"0x{addr.log:x}, but the guest put the used ring at "
                    f"0x{gpa:x}. " + SPEC_LOG_ADDR)
            last = addr.log + used_len.get(ring, 1) - 1
            if last >= covered:
                findings.append(
                    f"ring {ring}: the used ring's last byte 0x{last:x} lies "
                    f"beyond the log (0x{covered:x}). " + SPEC_LOG_SIZE)
    return findings


# --- negative controls: QEMU's real messages, broken one way each ----------

def _replace(messages: Messages, name: str,
             change: Callable[[object], object]) -> Messages:
    window = _logging_window(messages)
    first = messages.index(window[0]) if window else len(messages)
    end = first + len(window)
    return [(n, change(p) if n == name and first <= i < end else p)
            for i, (n, p) in enumerate(messages)]


def _with(cls: type, **change: Callable[[object], int]
          ) -> Callable[[object], object]:
    """A payload changer: ``field=f(old payload)`` for payloads of ``cls``."""
    def apply(payload: object) -> object:
        if not isinstance(payload, cls):
            return payload
        return dataclasses.replace(payload, **{  # type: ignore[type-var]
            k: f(payload) for k, f in change.items()})
    return apply


def break_log_all(messages: Messages) -> Messages:
    """Every SET_FEATURES in the logging window without LOG_ALL."""
    return _replace(messages, "SET_FEATURES", _with(
        U64, value=lambda p: p.value & ~_LOG_ALL))  # type: ignore


def break_ring_log_flag(messages: Messages) -> Messages:
    """Every SET_VRING_ADDR in the logging window without F_LOG."""
    return _replace(messages, "SET_VRING_ADDR", _with(
        VringAddr, flags=lambda p: p.flags & ~VRING_F_LOG))  # type: ignore


def break_ring_log_addr(messages: Messages) -> Messages:
    """log_guest_addr one page off the used ring."""
    return _replace(messages, "SET_VRING_ADDR", _with(
        VringAddr, log=lambda p: p.log + VHOST_LOG_PAGE))  # type: ignore


def break_log_size(messages: Messages) -> Messages:
    """A log one 64-page word short of the guest's RAM."""
    return _replace(messages, "SET_LOG_BASE", _with(
        LogDescription, size=lambda p: p.size - 8))  # type: ignore


def connection_messages(entries: Sequence[TraceEntry], conn: int
                        ) -> Messages:
    """``(request, payload)`` of every request received on ``conn``."""
    return [(e.request, e.payload) for e in entries
            if e.kind == "rx" and e.conn == conn]
