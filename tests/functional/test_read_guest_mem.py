"""
read-guest-mem: the back-end maps exactly the guest memory QEMU has.

The seed test compared 256 words at guest address 0 of one region.  Here the
whole RAM is checked in both directions, on every memory backend, with a
seeded random pattern stamped per page (zeros would match an unmapped or
misplaced region too), and a negative control shows that the comparison
catches a single changed byte.
"""

from avocado_vhost.scenarios.memory import assert_guest_memory_agrees
from avocado_vhost.test import VhostUserTest, main


class ReadGuestMem(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,read-guest-mem
    """

    def _read_guest_mem(self, membackend=None):
        if membackend is None:
            membackend = self.param("membackend")
        backend = self.make_backend("backend")
        vm = self.make_vm("vm", backend.listener_path, mem_backend=membackend)
        self.start_vm(vm, backend, rings=2)
        assert_guest_memory_agrees(self, vm, backend)

    def test_read_guest_mem(self):
        """Memory backend from ``-p membackend=`` (memfd by default).

        :avocado: tags=quick
        """
        self._read_guest_mem()

    def test_memfile(self):
        """:avocado: tags=membackend:memfile"""
        self._read_guest_mem("memfile")

    def test_hugetlbfs(self):
        """Guest RAM in huge pages: a hugetlbfs mount (``-p
        hugetlbfs_path=``, else the first one mounted) with free huge pages
        for the guest; ``./setup.sh`` run as root provides both.

        :avocado: tags=membackend:hugetlbfs
        """
        self._read_guest_mem("hugetlbfs")

    def test_shm(self):
        """memory-backend-shm (QEMU 9.1+).

        :avocado: tags=membackend:shm
        """
        self._read_guest_mem("shm")


if __name__ == "__main__":
    main()
