"""
The guest side of split virtqueues, played by the test over qtest.

:class:`DriverQueue` owns one queue that :class:`.VirtioPciDevice` laid out:
it posts buffers (single, chained, or through an indirect table), makes
them available, notifies the device through the virtio-pci notify area
(which QEMU turns into the vhost-user kick eventfd), and reaps the used
ring.  Its bookkeeping (next available index, last used index seen, which
descriptors are in flight) is the driver's state: it stays with the test
when the VM migrates, and the queue continues on the destination through
:meth:`DriverQueue.move_to`, exactly as a guest driver would.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from avocado_vhost.virtio.net import net_header
from avocado_vhost.virtio.ring import (DESC, DESC_F_INDIRECT, DESC_F_NEXT,
                                       DESC_F_WRITE, PACKED_DESC,
                                       PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED,
                                       USED_ELEM)
from avocado_vhost.peers.qemu.qtest import QtestLink
from avocado_vhost.peers.qemu.virtio_pci import GuestAllocator, VirtQueue

__all__ = ["DriverQueue", "PackedDriverQueue", "NET_HDR"]

#: The header the driver puts ahead of every frame it sends.
NET_HDR = net_header()
BUF = 2048


class DriverQueue:
    """One split virtqueue, driven from the test.

    :param qtest: the VM's qtest link.
    :param queue: the layout from :meth:`VirtioPciDevice.setup`.
    :param alloc: guest RAM for buffers and indirect tables.
    """

    def __init__(self, qtest: QtestLink, queue: VirtQueue,
                 alloc: GuestAllocator):
        self.qtest = qtest
        self.q = queue
        self.size = queue.size
        self.buffers = alloc.alloc(self.size * BUF)
        self.indirect = alloc.alloc(self.size * 16 * 4)
        self.free: List[int] = list(range(self.size))
        self.next_avail = 0
        self.last_used = 0
        #: head descriptor -> descriptors it uses, for freeing on reap
        self.inflight: Dict[int, List[int]] = {}

    def move_to(self, qtest: QtestLink) -> None:
        """Continue on another VM (after migration): same guest memory."""
        self.qtest = qtest

    def restart(self) -> None:
        """The queue was reset (VIRTIO_F_RING_RESET): every buffer is the
        driver's again and the rings start over from index 0."""
        self.free = list(range(self.size))
        self.inflight.clear()
        self.next_avail = self.last_used = 0

    def _alloc(self, count: int) -> List[int]:
        if len(self.free) < count:
            raise RuntimeError(f"queue {self.q.index}: {count} descriptors "
                               f"wanted, {len(self.free)} free")
        return [self.free.pop(0) for _ in range(count)]

    def _write_descs(self, descs: List[Tuple[int, int, int, int, int]]
                     ) -> None:
        """Descriptors ``(index, guest address, length, flags, next)``;
        the device is given each address as it names it (behind a vIOMMU
        the test set up: plus the queue's ``dma_offset``)."""
        dma = self.q.dma_offset
        for index, addr, length, flags, nxt in descs:
            self.qtest.memwrite(self.q.desc + DESC.size * index,
                                DESC.pack(addr + dma, length, flags, nxt))

    def _make_available(self, heads: List[int], kick: bool) -> None:
        for head in heads:
            slot = self.q.avail + 4 + 2 * (self.next_avail % self.size)
            self.qtest.write(slot, 2, head)
            self.next_avail = (self.next_avail + 1) & 0xFFFF
        # The index is published after the entries, as the spec requires.
        self.qtest.write(self.q.avail + 2, 2, self.next_avail)
        if kick:
            self.kick()

    def kick(self) -> None:
        self.qtest.write(self.q.notify_addr, 2, self.q.index)

    def post_out(self, payloads: List[bytes], layout: str = "single",
                 kick: bool = True) -> List[int]:
        """Make device-readable buffers available (transmit).

        :param layout: ``single`` (one descriptor), ``chain`` (header and
            data in two chained descriptors) or ``indirect``.
        :return: the head descriptors.
        """
        heads = []
        for payload in payloads:
            if len(payload) > BUF:
                raise ValueError(f"{len(payload)}-byte buffer > {BUF}")
            if layout == "single":
                (d,) = self._alloc(1)
                addr = self.buffers + d * BUF
                self.qtest.memwrite(addr, payload)
                self._write_descs([(d, addr, len(payload), 0, 0)])
                self.inflight[d] = [d]
            elif layout == "chain":
                d0, d1 = self._alloc(2)
                a0, a1 = self.buffers + d0 * BUF, self.buffers + d1 * BUF
                cut = min(len(NET_HDR), len(payload))
                self.qtest.memwrite(a0, payload[:cut])
                self.qtest.memwrite(a1, payload[cut:] or b"\0")
                self._write_descs([(d0, a0, cut, DESC_F_NEXT, d1),
                                   (d1, a1, len(payload) - cut, 0, 0)])
                self.inflight[d0] = [d0, d1]
                d = d0
            elif layout == "indirect":
                (d,) = self._alloc(1)
                table = self.indirect + d * 64
                addr = self.buffers + d * BUF
                cut = min(len(NET_HDR), len(payload))
                self.qtest.memwrite(addr, payload)
                dma = addr + self.q.dma_offset
                self.qtest.memwrite(table, DESC.pack(
                    dma, cut, DESC_F_NEXT, 1) + DESC.pack(
                    dma + cut, len(payload) - cut, 0, 0))
                self._write_descs([(d, table, 32, DESC_F_INDIRECT, 0)])
                self.inflight[d] = [d]
            else:
                raise ValueError(f"unknown layout {layout}")
            heads.append(d)
        self._make_available(heads, kick)
        return heads

    def post_chain(self, readable: List[bytes], writable: List[int],
                   kick: bool = True) -> List[int]:
        """One chain of device-readable parts then device-writable buffers
        of the given lengths (control commands: header, data, ack).

        :return: its descriptors, head first (buffer ``d`` is at
            :meth:`buffer_addr`).
        """
        descs = self._alloc(len(readable) + len(writable))
        entries = []
        for i, d in enumerate(descs):
            last = i == len(descs) - 1
            nxt = 0 if last else descs[i + 1]
            flags = 0 if last else DESC_F_NEXT
            addr = self.buffers + d * BUF
            if i < len(readable):
                self.qtest.memwrite(addr, readable[i])
                length = len(readable[i])
            else:
                length = writable[i - len(readable)]
                flags |= DESC_F_WRITE
            entries.append((d, addr, length, flags, nxt))
        self._write_descs(entries)
        self.inflight[descs[0]] = descs
        self._make_available([descs[0]], kick)
        return descs

    def post_in(self, count: int, length: int = BUF,
                kick: bool = True) -> List[int]:
        """Make ``count`` device-writable buffers available (receive)."""
        heads = self._alloc(count)
        self._write_descs([(d, self.buffers + d * BUF, length,
                            DESC_F_WRITE, 0) for d in heads])
        for d in heads:
            self.inflight[d] = [d]
        self._make_available(heads, kick)
        return heads

    def used_idx(self) -> int:
        return self.qtest.read(self.q.used + 2, 2)

    def reap(self, strict: bool = True) -> List[Tuple[int, int]]:
        """New used entries ``(head, length)``; their descriptors are free
        again.

        :param strict: an entry naming a buffer not in flight is an
            AssertionError; False returns it anyway (a test that counts
            completions to judge them).
        """
        idx = self.used_idx()
        out = []
        while self.last_used != idx:
            slot = self.q.used + 4 + 8 * (self.last_used % self.size)
            head, length = USED_ELEM.unpack(self.qtest.memread(slot, USED_ELEM.size))
            self._complete(head, f"used entry {self.last_used}", strict)
            out.append((head, length))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def _complete(self, head: int, where: str, strict: bool = True) -> None:
        """Free what the device returned; it must have been in flight."""
        if head not in self.inflight:
            if not strict:
                return
            raise AssertionError(
                f"queue {self.q.index}: {where} names buffer {head}, which "
                "is not in flight (completed twice, or never posted)")
        self.free.extend(self.inflight.pop(head))

    def buffer_addr(self, descriptor: int) -> int:
        return self.buffers + descriptor * BUF

    def read_buffer(self, head: int, length: int) -> bytes:
        return self.qtest.memread(self.buffer_addr(head), length)






class PackedDriverQueue(DriverQueue):
    """The same driver for a packed virtqueue.

    The driver owns a position in the one descriptor ring and a wrap
    counter; a buffer takes as many consecutive slots as it has
    descriptors, and its id (here: the slot index of its buffer memory)
    comes back in the used descriptor.  The head descriptor's flags are
    written last, so the device never sees half a chain.
    """

    def __init__(self, qtest: QtestLink, queue: VirtQueue,
                 alloc: GuestAllocator):
        super().__init__(qtest, queue, alloc)
        self.pos = 0
        self.wrap = True
        self.used_pos = 0
        self.used_wrap = True
        self.slots: Dict[int, int] = {}  # buffer id -> descriptors used

    def _flags(self, wrap: bool) -> int:
        return PACKED_DESC_F_AVAIL if wrap else PACKED_DESC_F_USED

    def _post(self, parts: List[Tuple[int, int, int]], buf_id: int) -> None:
        """Write one buffer's descriptors ``(addr, len, flags)`` at the
        current position; publish the head last."""
        entries = []
        for addr, length, flags in parts:
            entries.append((self.pos, addr, length,
                            flags | self._flags(self.wrap)))
            self.pos += 1
            if self.pos == self.size:
                self.pos, self.wrap = 0, not self.wrap
        for slot, addr, length, flags in reversed(entries):
            self.qtest.memwrite(self.q.desc + DESC.size * slot,
                                PACKED_DESC.pack(addr + self.q.dma_offset,
                                                 length, buf_id, flags))
        self.slots[buf_id] = len(parts)

    def post_out(self, payloads: List[bytes], layout: str = "single",
                 kick: bool = True) -> List[int]:
        ids = []
        for payload in payloads:
            (d,) = self._alloc(1)
            addr = self.buffers + d * BUF
            self.qtest.memwrite(addr, payload)
            cut = min(len(NET_HDR), len(payload))
            if layout == "single":
                self._post([(addr, len(payload), 0)], d)
            elif layout == "chain":
                self._post([(addr, cut, DESC_F_NEXT),
                            (addr + cut, len(payload) - cut, 0)], d)
            elif layout == "indirect":
                table = self.indirect + d * 64
                dma = addr + self.q.dma_offset
                self.qtest.memwrite(table, PACKED_DESC.pack(
                    dma, cut, 0, 0) + PACKED_DESC.pack(
                    dma + cut, len(payload) - cut, 0, 0))
                self._post([(table, 32, DESC_F_INDIRECT)], d)
            else:
                raise ValueError(f"unknown layout {layout}")
            self.inflight[d] = [d]
            ids.append(d)
        if kick:
            self.kick()
        return ids

    def post_in(self, count: int, length: int = BUF,
                kick: bool = True) -> List[int]:
        ids = self._alloc(count)
        for d in ids:
            self._post([(self.buffers + d * BUF, length,
                         DESC_F_WRITE)], d)
            self.inflight[d] = [d]
        if kick:
            self.kick()
        return ids

    def post_chain(self, readable: List[bytes], writable: List[int],
                   kick: bool = True) -> List[int]:
        descs = self._alloc(len(readable) + len(writable))
        parts = []
        for i, d in enumerate(descs):
            addr = self.buffers + d * BUF
            last = i == len(descs) - 1
            flags = 0 if last else DESC_F_NEXT
            if i < len(readable):
                self.qtest.memwrite(addr, readable[i])
                parts.append((addr, len(readable[i]), flags))
            else:
                parts.append((addr, writable[i - len(readable)],
                              flags | DESC_F_WRITE))
        self._post(parts, descs[0])
        self.inflight[descs[0]] = descs
        if kick:
            self.kick()
        return descs

    def used_idx(self) -> int:
        raise NotImplementedError("packed rings have no used index")

    def reap(self, strict: bool = True) -> List[Tuple[int, int]]:
        out: List[Tuple[int, int]] = []
        while True:
            _, length, buf_id, flags = PACKED_DESC.unpack(
                self.qtest.memread(self.q.desc + DESC.size * self.used_pos, 16))
            avail = bool(flags & PACKED_DESC_F_AVAIL)
            used = bool(flags & PACKED_DESC_F_USED)
            if not (avail == used == self.used_wrap):
                return out
            self._complete(buf_id, f"used descriptor at slot {self.used_pos}",
                           strict)
            out.append((buf_id, length))
            self.used_pos += self.slots.pop(buf_id)
            if self.used_pos >= self.size:
                self.used_pos -= self.size
                self.used_wrap = not self.used_wrap
