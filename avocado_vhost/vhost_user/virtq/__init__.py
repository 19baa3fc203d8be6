"""
The device side of split and packed virtqueues, in guest memory mapped by
the back-end (layouts and flags: :mod:`avocado_vhost.virtio.ring`).

Layout (virtio 1.x, "Split Virtqueues"), all little-endian:

* descriptor table: ``num`` x ``{u64 addr, u32 len, u16 flags, u16 next}``
* available ring: ``u16 flags, u16 idx, u16 ring[num], u16 used_event``
* used ring: ``u16 flags, u16 idx, {u32 id, u32 len}[num], u16 avail_event``

The back-end keeps its own position in the available ring (the *base*:
what GET_VRING_BASE reports and SET_VRING_BASE restores) and reads the used
index from guest memory when the ring starts, as the vhost-user spec says.
Every write is reported to ``on_write``, where the back-end marks the dirty
log while logging is on -- buffers always, the used ring at its log address
only when the ring asked for it (VHOST_VRING_F_LOG).
"""

from .access import Chain, RingError, load_packed_desc, store16
from .packed import PackedRing, packed_base
from .split import SplitRing

__all__ = ["Chain", "SplitRing", "PackedRing", "RingError", "packed_base",
           "store16", "load_packed_desc"]
