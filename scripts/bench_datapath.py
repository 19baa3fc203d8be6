#!/usr/bin/env python3
"""
Frames per second through the back-end's ring processing, three ways:

* ``plain loop`` (baseline): a bare Python loop over a mapped split ring --
  read the head, the descriptor and the buffer, write the used entry;
* ``back-end``: the back-end thread itself (NetDevice on a real connection,
  kicked through a real eventfd), driver and back-end on shared memory, no
  QEMU;
* ``QEMU``: frames posted by the test-side driver over qtest, through QEMU's
  notify area and kick eventfd to the back-end (qtest's guest-memory writes
  dominate this one).

Medians of several runs, and the back-end's rate relative to the baseline.

    .venv/bin/python scripts/bench_datapath.py [--runs N]
"""

import argparse
import mmap
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
from avocado_vhost.vhost_user import VhostUserBackend  # noqa: E402
from avocado_vhost.vhost_user.frontend import FrontEnd  # noqa: E402
from avocado_vhost.vhost_user.message import (  # noqa: E402
    MemoryRegion, MemoryTable, ProtocolFeature, Request, U64, VirtioFeature,
    VringAddr, VringState)
from avocado_vhost.peers.qemu.driver import NET_HDR, DriverQueue  # noqa: E402
from avocado_vhost.peers.qemu.platform import BUFFER_WINDOW  # noqa: E402
from avocado_vhost.peers.qemu.virtio_pci import GuestAllocator  # noqa: E402
from avocado_vhost.tools.standalone import standalone_vm  # noqa: E402
from avocado_vhost.vhost_user.net import NetDevice, Port  # noqa: E402

NUM = 1024
MEM = 16 << 20
DESC, AVAIL, USED, BUFS = 0x10000, 0x20000, 0x30000, 0x100000
UVA = 0x7F0000000000
FRAME = 64


def layout(mem: mmap.mmap) -> None:
    """Descriptor i -> buffer i (a 12-byte header and a 64-byte frame);
    avail ring entry i -> descriptor i."""
    for i in range(NUM):
        struct.pack_into("<QIHH", mem, DESC + 16 * i, BUFS + 128 * i,
                         12 + FRAME, 0, 0)
        struct.pack_into("<H", mem, AVAIL + 4 + 2 * i, i)


def plain_loop(batches: int) -> float:
    """Descriptors per second of the minimal loop (the baseline)."""
    fd = os.memfd_create("plain")
    os.ftruncate(fd, MEM)
    mem = mmap.mmap(fd, MEM)
    layout(mem)
    desc, u16, elem = struct.Struct("<QIHH"), struct.Struct("<H"), \
        struct.Struct("<II")
    next_avail = used_idx = 0
    start = time.perf_counter()
    for _ in range(batches):
        avail_idx = (next_avail + NUM) & 0xFFFF
        u16.pack_into(mem, AVAIL + 2, avail_idx)
        frames = []
        while next_avail != u16.unpack_from(mem, AVAIL + 2)[0]:
            head = u16.unpack_from(mem, AVAIL + 4 + 2 * (next_avail % NUM))[0]
            addr, length, _, _ = desc.unpack_from(mem, DESC + 16 * head)
            frames.append(mem[addr + 12:addr + length])
            elem.pack_into(mem, USED + 4 + 8 * (used_idx % NUM), head, 0)
            used_idx = (used_idx + 1) & 0xFFFF
            u16.pack_into(mem, USED + 2, used_idx)
            next_avail = (next_avail + 1) & 0xFFFF
    rate = batches * NUM / (time.perf_counter() - start)
    mem.close()
    os.close(fd)
    return rate


def through_backend(batches: int) -> float:
    """Descriptors per second processed by the back-end thread."""
    port = Port()
    backend = VhostUserBackend("bench", device=NetDevice(port)).start()
    fe, conn = FrontEnd.pair()
    backend.adopt(conn)
    fd = os.memfd_create("guest")
    os.ftruncate(fd, MEM)
    mem = mmap.mmap(fd, MEM)
    layout(mem)
    fe.call(Request.GET_FEATURES)
    fe.send(Request.SET_PROTOCOL_FEATURES,
            U64(int(ProtocolFeature.REPLY_ACK)))
    fe.send(Request.SET_OWNER)
    fe.send(Request.SET_FEATURES, U64(int(VirtioFeature.VERSION_1
                                          | VirtioFeature.PROTOCOL_FEATURES)))
    fe.send(Request.SET_MEM_TABLE, MemoryTable(
        (MemoryRegion(0, MEM, UVA, 0),)), fds=[fd])
    fe.send(Request.SET_VRING_NUM, VringState(1, NUM))
    fe.send(Request.SET_VRING_BASE, VringState(1, 0))
    fe.send(Request.SET_VRING_ADDR, VringAddr(1, 0, UVA + DESC, UVA + USED,
                                              UVA + AVAIL, 0))
    fe.send(Request.SET_VRING_ENABLE, VringState(1, 1))
    kick = os.eventfd(0)
    fe.send(Request.SET_VRING_KICK, U64(1), fds=[kick])
    fe.call(Request.GET_FEATURES)  # everything above is handled now
    backend.wait_rings_started(1, timeout=5)
    next_avail = 0
    start = time.perf_counter()
    for batch in range(batches):
        next_avail = (next_avail + NUM) & 0xFFFF
        struct.pack_into("<H", mem, AVAIL + 2, next_avail)
        os.eventfd_write(kick, 1)
        port.wait_sent((batch + 1) * NUM, timeout=30)
    rate = batches * NUM / (time.perf_counter() - start)
    backend.check()
    fe.close()
    backend.stop()
    mem.close()
    os.close(fd)
    os.close(kick)
    return rate


def through_qemu(frames: int) -> float:
    """Frames per second from the test-side driver through QEMU."""
    port = Port()
    backend = VhostUserBackend("bench", device=NetDevice(port))
    with standalone_vm(backend) as vm:
        device = vm.drive_device(queues=2, queue_size=256)
        backend.wait_rings_started(2, timeout=10)
        assert vm.qtest is not None
        txq = DriverQueue(vm.qtest, device.queues[1],
                          GuestAllocator(
                              *vm.spec.platform.window(BUFFER_WINDOW)))
        payload = NET_HDR + bytes(FRAME)
        start = time.perf_counter()
        for done in range(0, frames, 128):
            txq.post_out([payload] * 128)
            port.wait_sent(done + 128, timeout=30)
            txq.reap()
        return frames / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--qemu-frames", type=int, default=1024)
    parser.add_argument("--no-qemu", action="store_true")
    args = parser.parse_args()
    samples = Samples()
    measure = {"plain": plain_loop, "back-end": through_backend}
    for number, order in rounds(args.runs, list(measure)):
        for case in order:
            samples.add(case, measure[case](args.batches))
    print(f"plain loop over a mapped split ring (baseline): "
          f"{samples.median('plain'):10.0f} descriptors/s (median of "
          f"{args.runs} x {args.batches * NUM})")
    print(f"back-end ring processing alone            : "
          f"{samples.median('back-end'):10.0f} descriptors/s "
          f"({samples.ratio('back-end', 'plain'):.2f}x the baseline)")
    if not args.no_qemu:
        for _ in range(max(1, args.runs // 2)):
            samples.add("qemu", through_qemu(args.qemu_frames))
        print(f"end to end through QEMU (driver over qtest)  : "
              f"{samples.median('qemu'):10.0f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
