"""
Guest memory as the back-end maps it: the memory table and its slots, the
dirty log, the IOTLB (vIOMMU), and postcopy's registration of the regions
with a userfaultfd.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import List, Optional

from ...virtio.features import VirtioFeature
from ..connection import close_fds
from ..error import MalformedMessage, ProtocolError
from ..iotlb import IOTLB_INVALIDATE, IOTLB_UPDATE, IotlbEntry
from ..memory import AddressError, DirtyLog, MappedRegion
from ..message import (Empty, IotlbMsg, LogDescription, MemoryTable,
                       Request, SingleRegion, U64)
from ..postcopy import Userfault
from ..trace import Event
from .base import Fds, Group, WithFds, handles, replace_fd, require_kind

__all__ = ["MappingRequests"]


class MappingRequests(Group):
    """The memory table, the dirty log, the IOTLB and postcopy."""

    @handles(Request.SET_MEM_TABLE)
    def set_mem_table(self, payload: MemoryTable,
                      fds: Fds) -> Optional[MemoryTable]:
        mem = self.state.memory
        mem.clear()
        try:
            require_kind(fds, "file", "memory region")
            try:
                self._within_mapping_limit(
                    sum(r.size for r in payload.regions), "the memory table")
            except ProtocolError:
                close_fds(fds)
                raise
            for i, (region, fd) in enumerate(zip(payload.regions, fds)):
                try:
                    mem.add(region, fd)
                except MalformedMessage:
                    close_fds(fds[i + 1:])
                    mem.clear()
                    raise
        finally:
            # Also when the table was refused: started rings must not keep
            # pointing into the mappings just closed.
            self._memory_changed()
        if self._postcopy_listening():
            mapped = mem.mapped()
            local = {r.desc: r.local_address for r in mapped}
            self._register_for_postcopy(Request.SET_MEM_TABLE, mapped)
            return MemoryTable(tuple(
                replace(r, user_addr=local[r]) for r in payload.regions))
        return None

    @handles(Request.ADD_MEM_REG)
    def add_mem_reg(self, payload: SingleRegion,
                    fds: Fds) -> Optional[SingleRegion]:
        slots = self.host.config.max_mem_slots
        require_kind(fds, "file", "memory region")
        try:
            if len(self.state.memory) >= slots:
                raise MalformedMessage(
                    f"ADD_MEM_REG beyond the {slots} slots offered")
            self._within_mapping_limit(
                self.state.memory.mapped_bytes + payload.region.size,
                "the memory table with this region")
        except ProtocolError:
            close_fds(fds)
            raise
        self.state.memory.add(payload.region, fds[0])
        self._memory_changed()
        if self._postcopy_listening():
            added = self.state.memory.mapped()[-1]
            self._register_for_postcopy(Request.ADD_MEM_REG, [added])
            return SingleRegion(replace(payload.region,
                                        user_addr=added.local_address))
        return None

    @handles(Request.REM_MEM_REG)
    def rem_mem_reg(self, payload: SingleRegion, fds: Fds) -> None:
        close_fds(fds)
        if not self.state.memory.remove(payload.region):
            raise MalformedMessage(
                f"REM_MEM_REG of a region not mapped: {payload.region}")
        self._memory_changed()

    @handles(Request.GET_MAX_MEM_SLOTS)
    def get_max_mem_slots(self, payload: Empty, fds: Fds) -> U64:
        return U64(self.host.config.max_mem_slots)

    @handles(Request.SET_LOG_BASE)
    def set_log_base(self, payload: LogDescription, fds: Fds) -> U64:
        if not fds:
            raise MalformedMessage("SET_LOG_BASE without a log fd "
                                   "(LOG_SHMFD needs one)")
        require_kind(fds, "file", "dirty log")
        try:
            if payload.size > self.host.config.max_mapped:
                raise MalformedMessage(
                    f"a dirty log of {payload.size:#x} bytes is more than "
                    "this back-end maps at most (max_mapped = "
                    f"{self.host.config.max_mapped:#x})")
        except ProtocolError:
            close_fds(fds)
            raise
        if self.state.log is not None:
            if (self.host.config.unmap_replaced_log
                    and self.state.feature_acked(VirtioFeature.LOG_ALL)
                    and self.state.started_rings()):
                self.host.record_error(
                    f"SET_LOG_BASE replaced the dirty log in use (logging "
                    f"on, rings {self.state.started_rings()} running): a "
                    "back-end that unmaps the old log, as DPDK's does, may "
                    "crash writing it from its data path (QEMU sends "
                    "SET_LOG_BASE once per device since c98ac64cfb, 8.0, "
                    "and 7c211eb078, 9.1)")
            self.state.log.close()
            self.state.log = None
        self.state.log = DirtyLog(fds[0], payload.size, payload.offset)
        self.host.trace_event(Event.LOG_BASE, f"{payload.size} bytes at "
                              f"offset {payload.offset}")
        # QEMU blocks until this reply when LOG_SHMFD is negotiated.
        return U64(0)

    @handles(Request.SET_LOG_FD)
    def set_log_fd(self, payload: Empty, fds: Fds) -> None:
        require_kind(fds, "eventfd", "log fd")
        os.set_blocking(fds[0], False)
        self.state.log_fd = replace_fd(self.state.log_fd, fds[0])

    @handles(Request.IOTLB_MSG)
    def iotlb_msg(self, payload: IotlbMsg, fds: Fds) -> U64:
        """An IOTLB update or invalidation (IOMMU support): the rings are
        located again through the new table, and those that waited for a
        miss move."""
        close_fds(fds)
        if payload.type == IOTLB_UPDATE:
            try:
                self.state.iotlb.update(IotlbEntry(
                    payload.iova, payload.size, payload.user_addr,
                    payload.perm))
            except AddressError as exc:
                raise MalformedMessage(str(exc)) from None
            what = (f"update iova 0x{payload.iova:x}+0x{payload.size:x} -> "
                    f"0x{payload.user_addr:x} perm {payload.perm}")
        elif payload.type == IOTLB_INVALIDATE:
            dropped = self.state.iotlb.invalidate(
                payload.iova, payload.size, self.host.config.iotlb_invalidate)
            what = (f"invalidate iova 0x{payload.iova:x}+0x{payload.size:x}"
                    f" ({dropped} entries dropped)")
        else:
            raise MalformedMessage(f"IOTLB_MSG of type {payload.type} "
                                   "(the front-end sends updates and "
                                   "invalidations)")
        self.host.trace_event(Event.IOTLB, what)
        self._memory_changed()
        return U64(0)

    @handles(Request.POSTCOPY_ADVISE)
    def postcopy_advise(self, payload: Empty, fds: Fds) -> WithFds:
        """A userfaultfd for the migration to come, sent with the answer;
        without one (the kernel refused) the answer carries no fd, which
        QEMU reports as the migration's failure."""
        close_fds(fds)
        if self.state.userfault is not None:
            self.state.userfault.close()
        try:
            self.state.userfault = Userfault()
        except OSError as exc:
            self.state.userfault = None
            self.host.record_error(f"POSTCOPY_ADVISE: no userfaultfd: {exc}")
            return WithFds(Empty(), [])
        return WithFds(Empty(), [self.state.userfault.fd])

    @handles(Request.POSTCOPY_LISTEN)
    def postcopy_listen(self, payload: Empty, fds: Fds) -> None:
        """The memory table that follows is registered for faults."""
        if self.state.userfault is None:
            raise MalformedMessage("POSTCOPY_LISTEN without a userfaultfd "
                                   "(no POSTCOPY_ADVISE answered)")

    @handles(Request.POSTCOPY_END)
    def postcopy_end(self, payload: Empty, fds: Fds) -> U64:
        """Every page arrived: no more faults; the userfaultfd goes."""
        self.state.memory.fault_in = None
        if self.state.userfault is not None:
            self.state.userfault.close()
            self.state.userfault = None
        return U64(0)

    def _postcopy_listening(self) -> bool:
        return (self.state.postcopy == "listening"
                and self.state.userfault is not None)

    def _register_for_postcopy(self, request: Request,
                               regions: List[MappedRegion]) -> None:
        """Register the regions just mapped with the userfaultfd and wait
        for the front-end's acknowledgement before touching memory (spec:
        "only upon reception of this message may the guest start
        accessing the memory and generating faults")."""
        assert self.state.userfault is not None
        self.state.memory.fault_in = None
        if not self.host.config.postcopy_register:
            regions = []  # the negative control: blind to missing pages
        for region in regions:
            try:
                self.state.userfault.register(region.map)
            except OSError as exc:
                raise MalformedMessage(f"postcopy: region {region.desc} "
                                       f"cannot be registered: {exc}"
                                       ) from None
        self.state.postcopy_ack_due = request
        self.host.trace_event(Event.POSTCOPY, f"{request.name}: "
                              f"{len(self.state.memory)} region(s) "
                              "registered, acknowledgement due")
