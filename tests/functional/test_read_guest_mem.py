"""
read-guest-mem: the back-end maps exactly the guest memory QEMU has.

The seed test compared 256 words at guest address 0 of one region.  Here the
whole RAM is checked in both directions, on every memory backend, with a
seeded random pattern stamped per page (zeros would match an unmapped or
misplaced region too), and a negative control shows that the comparison
catches a single changed byte.
"""

import random

from avocado_vhost.guestmem import (PAGE, compare_dump, fill_pattern,
                                    first_difference, pattern)
from avocado_vhost.test import VhostUserTest


class ReadGuestMem(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,vhost-user,read-guest-mem
    """

    def _read_guest_mem(self, membackend=None):
        if membackend is None:
            membackend = self.params.get("membackend", default="memfd")
        backend = self.make_backend("backend")
        vm = self.make_vm("vm", backend.listener_path, mem_backend=membackend)
        self.start_vm(vm, backend, rings=2)
        memory = backend.state.memory
        ranges = list(memory.ram_ranges())
        self.log.info("memory table: %s",
                      ", ".join(f"0x{g:x}+0x{s:x}" for g, s in ranges))
        self.assertTrue(ranges, "no memory region received")
        total = sum(size for _, size in ranges)
        mem_bytes = vm.spec.mem_mb << 20
        # QEMU leaves holes for ROM (640 KiB..1 MiB); the rest is RAM.
        self.assertGreater(total, mem_bytes - (1 << 20))
        self.assertLessEqual(total, mem_bytes)
        seed = random.randrange(1 << 32)
        self.log.info("pattern seed %d", seed)

        # 1. Back-end -> QEMU: every byte of every region.
        fill_pattern(memory, seed)
        for gpa, size in ranges:
            dump = self.dump_guest_memory(vm, gpa, size)
            diff = compare_dump(dump, gpa, size, seed)
            self.assertIsNone(diff, f"region 0x{gpa:x}+0x{size:x}: {diff}")

        # 2. QEMU -> back-end: qtest writes at the edges of every region
        # and across a page boundary, read through the back-end's mapping.
        rng = random.Random(seed)
        spots = []
        for gpa, size in ranges:
            spots += [(gpa, 256), (gpa + size - 256, 256),
                      (gpa + (size // 2 // PAGE) * PAGE - 100, 200)]
        for gpa, length in spots:
            data = rng.randbytes(length)
            vm.qtest.memwrite(gpa, data)
            seen = memory.read(gpa, length)
            self.assertIsNone(first_difference(data, seen),
                              f"qtest wrote {data[:16].hex()} at 0x{gpa:x}, "
                              f"the back-end reads {seen[:16].hex()}")
            self.assertEqual(vm.qtest.memread(gpa, length), data)
            memory.write(gpa, pattern(seed, gpa, length))  # restore

        # 3. Negative control: one byte changed behind the pattern's back
        # must be found, at its address.
        gpa, size = ranges[-1]
        target = gpa + rng.randrange(size // 2, size - PAGE)
        expected = pattern(seed, target, 1)[0]
        vm.qtest.write(target, 1, expected ^ 0xFF)
        dump = self.dump_guest_memory(vm, gpa, size)
        diff = compare_dump(dump, gpa, size, seed)
        self.assertIsNotNone(diff, "the comparison missed a changed byte")
        self.assertIn(f"0x{target:x}", diff)
        self.log.info("negative control caught: %s", diff)
        self.check_backends(backend)

    def test_read_guest_mem(self):
        """Memory backend from ``-p membackend=`` (memfd by default)."""
        self._read_guest_mem()

    def test_memfile(self):
        """:avocado: tags=membackend:memfile"""
        self._read_guest_mem("memfile")

    def test_hugetlbfs(self):
        """Needs ``-p hugetlbfs_path=`` naming a hugetlbfs mount.

        :avocado: tags=membackend:hugetlbfs
        """
        self._read_guest_mem("hugetlbfs")

    def test_shm(self):
        """memory-backend-shm (QEMU 9.1+).

        :avocado: tags=membackend:shm
        """
        self._read_guest_mem("shm")
