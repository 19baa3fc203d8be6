"""
Virtqueue layouts and flag bits (virtio 1.x, "Split Virtqueues" and
"Packed Virtqueues"), all little-endian.

Split ring::

    descriptor table  num x {u64 addr, u32 len, u16 flags, u16 next}
    available ring    u16 flags, u16 idx, u16 ring[num], u16 used_event
    used ring         u16 flags, u16 idx, {u32 id, u32 len}[num],
                      u16 avail_event

Packed ring: ``num x {u64 addr, u32 len, u16 id, u16 flags}`` and two
event suppression structures ``{u16 off_wrap, u16 flags}``.

Both the device side (:mod:`avocado_vhost.vhost_user.virtq`) and the
driver side (:mod:`avocado_vhost.peers.qemu.driver`) read these from here.
"""

from __future__ import annotations

import struct
from typing import Tuple

__all__ = ["DESC", "PACKED_DESC", "USED_ELEM", "DESC_F_NEXT",
           "DESC_F_WRITE", "DESC_F_INDIRECT", "AVAIL_F_NO_INTERRUPT",
           "USED_F_NO_NOTIFY", "PACKED_DESC_F_AVAIL", "PACKED_DESC_F_USED",
           "PACKED_EVENT_ENABLE", "PACKED_EVENT_DISABLE", "PACKED_EVENT_DESC",
           "RING_HEADER", "split_sizes", "avail_event_offset"]

#: A split descriptor: addr, len, flags, next.
DESC = struct.Struct("<QIHH")
#: A packed descriptor: addr, len, id, flags (same size, other order).
PACKED_DESC = struct.Struct("<QIHH")
#: A used-ring element: id, len.
USED_ELEM = struct.Struct("<II")
#: ``flags`` and ``idx`` ahead of the available and used rings' entries.
RING_HEADER = 4

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
#: Driver to device, available ring flags: "do not interrupt me".
AVAIL_F_NO_INTERRUPT = 1
#: Device to driver, used ring flags: "do not kick me".
USED_F_NO_NOTIFY = 1

PACKED_DESC_F_AVAIL = 1 << 7
PACKED_DESC_F_USED = 1 << 15
#: Event suppression ``flags`` values of a packed ring.
PACKED_EVENT_ENABLE = 0
PACKED_EVENT_DISABLE = 1
PACKED_EVENT_DESC = 2


def split_sizes(num: int) -> Tuple[int, int, int]:
    """Bytes of a split ring's descriptor table, available ring and used
    ring for ``num`` entries (with the event-index words)."""
    return (num * DESC.size, RING_HEADER + 2 * num + 2,
            avail_event_offset(num) + 2)


def avail_event_offset(num: int) -> int:
    """Where a split used ring of ``num`` entries keeps ``avail_event``
    (the device's "kick me at this index", with EVENT_IDX)."""
    return RING_HEADER + USED_ELEM.size * num
