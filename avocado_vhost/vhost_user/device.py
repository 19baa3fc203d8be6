"""
The narrow interfaces between a back-end and the device it hosts.

Like libvhost-user's ``VuDevIface``: the device is a plug-in.

* :class:`Device` -- what the back-end calls, always with its lock held:
  rings started and stopped, the memory table changed, a kick arrived,
  the connection reset, and twice a second a look for stalled rings.  The
  virtio-net data path (:class:`.net.NetDevice`) implements it; a device
  without a data path (gpio, blk and scmi in :mod:`avocado_vhost.vhost_user.device_offers`)
  simply has none, and its rings are configured but never processed;
  :class:`.blk.BlkDevice` serves virtio-blk with in-flight tracking.
* :class:`DeviceHost` -- all a device may use of its back-end: its name
  (for records), the device state negotiated so far (memory table, dirty
  log, rings, features), a way to report an error, and the one syscall a
  device makes on a front-end's fd -- signalling a ring's call eventfd,
  which the back-end does without ever waiting -- and, behind a vIOMMU,
  asking for a translation it lacks (an IOTLB miss).  It does not see
  connections, the trace, faults or the lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

from ..virtio.features import VirtioFeature
from .iotlb import TranslatedMemory
from .message import VRING_F_LOG

if TYPE_CHECKING:
    from typing import Protocol

    from .state import DeviceState, Vring
    from .virtq import PackedRing, SplitRing

    class DeviceHost(Protocol):
        """What a hosted device may use of its back-end."""

        @property
        def name(self) -> str: ...

        @property
        def state(self) -> "DeviceState": ...

        def record_error(self, text: str) -> None: ...

        def signal(self, ring: "Vring") -> None: ...

        def iotlb_miss(self, iova: int, write: bool) -> None:
            """Ask the front-end for a translation (IOMMU support); the
            device retries when :meth:`Device.memory_changed` comes."""

    class Device(Protocol):
        """What a back-end asks of the device it hosts."""

        @property
        def stalls(self) -> Sequence[object]:
            """Rings found stalled so far (failures; see
            :meth:`check_stalls`)."""

        def attach(self, host: DeviceHost) -> None: ...

        def ring_started(self, ring: "Vring") -> None: ...

        def quiesce(self, ring: "Vring") -> None:
            """GET_VRING_BASE is about to stop ``ring``: finish the
            requests in flight (or, with GET_VRING_BASE_INFLIGHT, leave
            them recorded).  Not called when the connection is lost."""

        def ring_stopped(self, ring: "Vring") -> None: ...

        def memory_changed(self) -> None: ...

        def process(self, ring: "Vring") -> None: ...

        def process_all(self) -> None: ...

        def check_stalls(self, now: float) -> None: ...

        def reset(self) -> None: ...
else:
    DeviceHost = Device = object

__all__ = ["Device", "DeviceHost", "HostedDevice"]


class HostedDevice:
    """What every device does with its host: remember it when attached,
    and reach the state the front-end negotiated through it."""

    host: Optional["DeviceHost"] = None

    def attach(self, host: "DeviceHost") -> None:
        self.host = host

    def _host(self) -> "DeviceHost":
        assert self.host is not None, "the device is not attached"
        return self.host

    def _state(self) -> "DeviceState":
        return self._host().state

    def _areas(self, ring: "Vring") -> "tuple[int, int, int]":
        """The addresses of ``ring``'s descriptor, driver and device areas
        as the ring reaches them: guest addresses (QEMU names them by its
        own addresses), or IOVAs as they came, behind a vIOMMU."""
        state = self._state()
        memory = state.memory
        assert ring.addr is not None
        if state.behind_iommu:
            return ring.addr.desc, ring.addr.avail, ring.addr.used
        return (memory.uva_to_gpa(ring.addr.desc),
                memory.uva_to_gpa(ring.addr.avail),
                memory.uva_to_gpa(ring.addr.used))

    def _split_ring(self, ring: "Vring", next_avail: int,
                    used_idx: Optional[int] = None) -> "SplitRing":
        """``ring`` as a started split ring at ``next_avail`` (and, when
        it is relocated, the used index it had).

        :raise LookupError: an area is not inside one mapped region.
        """
        from .virtq import SplitRing
        state = self._state()
        desc, avail, used = self._areas(ring)
        return SplitRing(
            state.dma(), ring.num, desc, avail, used, next_avail, None,
            indirect=state.feature_acked(VirtioFeature.RING_INDIRECT_DESC),
            event_idx=state.feature_acked(VirtioFeature.RING_EVENT_IDX),
            used_idx=used_idx)

    def _packed_ring(self, ring: "Vring", base: int) -> "PackedRing":
        """``ring`` as a started packed ring at ``base`` (vhost-user's
        "avail" and "used" are its driver and device event areas).

        :raise LookupError: an area is not inside one mapped region.
        """
        from .virtq import PackedRing
        state = self._state()
        if base >> 16 == 0 and base & 0xFFFF:
            # A base without its used half (DPDK's virtio-user sends
            # 0x8000 at start; the conformance rules record it): taken to
            # mean "used where available", what it means at start, rather
            # than used wrap 0, which would stall the ring.
            base |= (base & 0xFFFF) << 16
        desc, avail, _ = self._areas(ring)
        return PackedRing(
            state.dma(), ring.num, desc, avail, base, None,
            indirect=state.feature_acked(VirtioFeature.RING_INDIRECT_DESC))

    def _arm_logging(self, ring: "Vring",
                     split: "Union[SplitRing, PackedRing]") -> None:
        """Make ``split`` mark the dirty log for what the device writes
        while logging is on (VHOST_F_LOG_ALL with a log), and write
        unlogged otherwise: a device that offers LOG_ALL must log."""
        state = self._state()
        if state.log is None or not state.feature_acked(
                VirtioFeature.LOG_ALL):
            split.on_write = None
            return

        def mark(gpa: int, length: int, is_used: bool) -> None:
            self._mark_written(ring, split, gpa, length, is_used)
        split.on_write = mark

    def _mark_written(self, ring: "Vring",
                      split: "Optional[Union[SplitRing, PackedRing]]",
                      gpa: int, length: int, is_used: bool) -> None:
        """Mark in the dirty log what the device just wrote at ``gpa``:
        a buffer (and a packed ring's used descriptors, which live in the
        descriptor ring) at its guest address -- behind a vIOMMU, the
        IOVA's -- and the used ring at its log address (VRING_F_LOG)."""
        from .virtq import PackedRing
        log = self._state().log
        if log is None:
            return
        if not is_used or isinstance(split, PackedRing):
            memory = split.memory if split is not None else None
            if isinstance(memory, TranslatedMemory):
                translated = memory.to_gpa(gpa)
                if translated is None:
                    return
                gpa = translated
            log.mark(gpa, length)
        elif ring.addr is not None and ring.addr.flags & VRING_F_LOG:
            base = split.used if split is not None else gpa
            log.mark(ring.addr.log + (gpa - base), length)
