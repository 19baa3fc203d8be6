"""
read-guest-mem: the back-end maps exactly the guest RAM QEMU has.

The seed test's first claim, checked both ways and with a negative
control (:func:`assert_guest_memory_agrees`):

1. a seeded random pattern, stamped per page, written over every region
   through the back-end's mapping is what QEMU's ``pmemsave`` sees, byte
   for byte;
2. data written through qtest at the edges of every region and across a
   page boundary is what the back-end reads;
3. one byte changed behind the pattern's back is found, at its address
   (the comparison can fail).
"""

from __future__ import annotations

import os
import random
import shutil
from typing import TYPE_CHECKING, List, Sequence, Tuple

from avocado_vhost.checks.guestmem import (PAGE, compare_dump, fill_pattern,
                                           first_difference, pattern)
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.plumbing.tmpdirs import (DUMP_PREFIX, dump_base,
                                            make_private_tmpdir)
from avocado_vhost.vhost_user import VhostUserBackend

if TYPE_CHECKING:
    from avocado_vhost.harness import Harness

__all__ = ["assert_guest_memory_agrees", "dump_guest_memory"]


def assert_guest_memory_agrees(test: "Harness", vm: VhostVM,
                               backend: VhostUserBackend,
                               memdevs: Sequence[str] = ("mem0",)) -> None:
    """Fail ``test`` unless ``backend`` and ``vm`` agree on every byte of
    guest RAM -- the RAM of the memory backends ``memdevs``, hot-plugged
    DIMMs included (the three checks above)."""
    assert vm.qtest is not None, "read-guest-mem needs qtest"
    memory = backend.state.memory
    regions = list(memory.ram_ranges())
    test.log.info("back-end memory table: %s", _ranges(regions))
    ranges = [r for memdev in memdevs for r in vm.ram_ranges(memdev)]
    test.log.info("RAM in QEMU's address space: %s", _ranges(ranges))
    test.assertTrue(ranges, "QEMU shows no RAM of the memory backend")
    for gpa, size in ranges:
        test.assertTrue(any(g <= gpa and gpa + size <= g + s
                            for g, s in regions),
                        f"guest RAM 0x{gpa:x}+0x{size:x} is not in the "
                        "back-end's memory table")
    seed = random.randrange(1 << 32)
    test.log.info("pattern seed %d", seed)
    # Dumps go to a private directory on /dev/shm (tmpfs) when there is one.
    dumps = make_private_tmpdir(dump_base(), DUMP_PREFIX)
    test.cleanup(shutil.rmtree, dumps, True)

    # 1. Back-end -> QEMU: every byte of RAM, as QEMU shows it.
    fill_pattern(memory, seed)
    for gpa, size in ranges:
        dump = dump_guest_memory(vm, gpa, size, dumps)
        diff = compare_dump(dump, gpa, size, seed)
        test.assertIsNone(diff, f"RAM 0x{gpa:x}+0x{size:x}: {diff}")

    # 2. QEMU -> back-end: qtest writes at the edges of every region and
    # across a page boundary, read through the back-end's mapping.
    rng = random.Random(seed)
    spots = []
    for gpa, size in ranges:
        spots += [(gpa, 256), (gpa + size - 256, 256),
                  (gpa + (size // 2 // PAGE) * PAGE - 100, 200)]
    for gpa, length in spots:
        data = rng.randbytes(length)
        vm.qtest.memwrite(gpa, data)
        seen = memory.read(gpa, length)
        test.assertIsNone(first_difference(data, seen),
                          f"qtest wrote {data[:16].hex()} at 0x{gpa:x}, "
                          f"the back-end reads {seen[:16].hex()}")
        test.assertEqual(vm.qtest.memread(gpa, length), data)
        memory.write(gpa, pattern(seed, gpa, length))  # restore

    # 3. Negative control: one byte changed behind the pattern's back must
    # be found, at its address.  The same comparison over a 2 MiB window
    # around the byte (a second dump of the whole RAM would double the
    # test's time), not aligned to pages or chunks, so that it crosses both.
    gpa, size = ranges[-1]
    target = gpa + rng.randrange(size // 2, size - PAGE)
    expected = pattern(seed, target, 1)[0]
    vm.qtest.write(target, 1, expected ^ 0xFF)
    low = max(gpa, target - (1 << 20) - 777)
    high = min(gpa + size, target + (1 << 20))
    dump = dump_guest_memory(vm, low, high - low, dumps)
    diff = compare_dump(dump, low, high - low, seed)
    test.assertIsNotNone(diff, "the comparison missed a changed byte")
    test.assertIn(f"0x{target:x}", str(diff))
    test.log.info("negative control caught: %s", diff)


def dump_guest_memory(vm: VhostVM, gpa: int, size: int,
                      directory: str) -> str:
    """QEMU's view of ``[gpa, gpa+size)`` in a file in ``directory`` (QMP
    ``pmemsave``); the file's path."""
    path = os.path.join(directory, f"{vm.name}-{gpa:x}.bin")
    vm.qmp("pmemsave", val=gpa, size=size, filename=path)
    return path


def _ranges(ranges: List[Tuple[int, int]]) -> str:
    return ", ".join(f"0x{g:x}+0x{s:x}" for g, s in ranges)
