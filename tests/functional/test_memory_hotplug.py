"""
Guest memory hot-plug and unplug with memory slots (CONFIGURE_MEM_SLOTS).

With CONFIGURE_MEM_SLOTS QEMU does not resend the whole table when guest
memory changes: it sends ADD_MEM_REG for each region that appears and
REM_MEM_REG for each that goes ("the memory region to be removed is
identified by its guest address, user address and size"), and it keeps
within the slots the back-end reported (GET_MAX_MEM_SLOTS).  The test
plugs ``pc-dimm`` devices with a shared memfd backend while the device
runs, ejects one as the guest's ACPI code would, and after every step
compares the back-end's view of guest memory with QEMU's, byte for byte
both ways (:func:`assert_guest_memory_agrees`, which has its own negative
control).
"""

import random

from qemu.qmp import ExecuteError

from avocado_vhost.peers.qemu import hotplug
from avocado_vhost.peers.qemu.virtio_mem import VirtioMem
from avocado_vhost.checks.guestmem import first_difference
from avocado_vhost.scenarios.memory import (assert_guest_memory_agrees,
                                            dump_guest_memory)
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature, Request

#: DIMM slots of the machine, and the size of each DIMM plugged
SLOTS = 4
DIMM = 128 << 20
MEMFD = "memory-backend-memfd"


class MemoryHotplug(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,vhost-user,memory-hotplug
    """

    def setUp(self):
        super().setUp()
        self.require_protocol(ProtocolFeature.CONFIGURE_MEM_SLOTS,
                              "hot-plugged memory travels in ADD_MEM_REG")
        why = hotplug.can_unplug(self.platform)
        if why:
            self.cancel(why)
        self.require_device("pc-dimm")
        if not self.caps.has_object(MEMFD):
            self.cancel(f"{self.qemu_bin} has no {MEMFD} for the DIMMs")

    def start(self, max_mem_slots=32, name="vm"):
        backend = self.make_backend(
            f"{name}-backend", BackendConfig(max_mem_slots=max_mem_slots))
        mem_mb = self.mem_mb()
        vm = self.make_vm(name, backend.listener_path, mem_slots=SLOTS,
                          maxmem_mb=mem_mb + SLOTS * (DIMM >> 20))
        self.start_vm(vm, backend, rings=2)
        return vm, backend

    def plug(self, vm, backend, dimm):
        """Plug ``dimm``; wait for the one ADD_MEM_REG it must cause."""
        adds = len(backend.trace.select("rx", Request.ADD_MEM_REG))
        hotplug.plug_dimm(vm, dimm, DIMM, MEMFD)
        backend.wait_request(Request.ADD_MEM_REG, adds + 1,
                             timeout=self.scaled(10))
        region = backend.trace.payloads(Request.ADD_MEM_REG)[-1].region
        (gpa, size), = vm.ram_ranges(f"{dimm}-mem")
        self.assertEqual((region.guest_addr, region.size), (gpa, size),
                         f"the ADD_MEM_REG after plugging {dimm} is not "
                         f"its RAM (QEMU shows 0x{gpa:x}+0x{size:x})")
        return gpa, size

    def test_plugged_dimms_reach_the_backend(self):
        """Each DIMM plugged while the device runs reaches the back-end as
        one ADD_MEM_REG of its RAM, the table is never resent, and the
        back-end's view equals QEMU's, DIMMs included."""
        vm, backend = self.start()
        for dimm in ("dimm1", "dimm2"):
            self.plug(vm, backend, dimm)
        self.assertNotIn(Request.SET_MEM_TABLE, backend.trace.received(),
                         "QEMU resent the whole table despite memory slots")
        assert_guest_memory_agrees(self, vm, backend,
                                   ("mem0", "dimm1-mem", "dimm2-mem"))

    def test_unplugged_dimm_leaves_the_backend(self):
        """An ejected DIMM leaves as one REM_MEM_REG of its region: the
        back-end maps it no more and still agrees with QEMU on the rest;
        a DIMM plugged after it arrives again."""
        vm, backend = self.start()
        gpa, size = self.plug(vm, backend, "dimm1")
        hotplug.unplug_dimm(vm, "dimm1", self.scaled(10))
        backend.wait_request(Request.REM_MEM_REG, timeout=self.scaled(10))
        removed = backend.trace.payloads(Request.REM_MEM_REG)
        self.assertEqual([(r.region.guest_addr, r.region.size)
                          for r in removed], [(gpa, size)],
                         "REM_MEM_REG is not the ejected DIMM's region")
        still = [(g, s) for g, s in backend.state.memory.ram_ranges()
                 if g < gpa + size and gpa < g + s]
        self.assertEqual(still, [], "the back-end still maps the ejected "
                         "DIMM's guest addresses")
        assert_guest_memory_agrees(self, vm, backend)
        self.plug(vm, backend, "dimm2")
        assert_guest_memory_agrees(self, vm, backend, ("mem0", "dimm2-mem"))

    def test_qemu_keeps_within_the_slots_offered(self):
        """A back-end that reports one slot more than the start-up table
        needs: the first DIMM fills it, the second is refused by QEMU
        (device_add fails, the VM runs on) and never reaches the back-end,
        which records an error if QEMU goes beyond its slots.

        :avocado: tags=quick
        """
        probe, probed = self.start(name="probe")
        regions = len(probed.state.memory)
        probe.shutdown()
        vm, backend = self.start(max_mem_slots=regions + 1)
        self.plug(vm, backend, "dimm1")
        with self.assertRaises(ExecuteError, msg="QEMU plugged a DIMM "
                               "beyond the back-end's memory slots") as ctx:
            hotplug.plug_dimm(vm, "dimm2", DIMM, MEMFD)
        self.log.info("QEMU refused the DIMM beyond the slots: %s",
                      ctx.exception)
        # 7.2: "no free memory slots left"; 8.2+: "not enough free memory
        # slots left": the reason must be the back-end's slots
        self.assertRegex(str(ctx.exception), r"vhost backend has .*memory "
                         r"slots left")
        self.assertEqual(len(backend.state.memory), regions + 1)
        self.assertTrue(vm.is_running(), "QEMU ended on the refused DIMM")
        assert_guest_memory_agrees(self, vm, backend, ("mem0", "dimm1-mem"))


#: virtio-mem's region -- two memslots: QEMU makes none smaller than
#: 1 GiB -- and what the host asks the guest to plug of it (all: blocks
#: beyond the requested size are not usable)
VMEM_MB = REQUESTED_MB = 2048
#: QEMU splits a virtio-mem region into memslots only when every vhost
#: back-end offers at least this many (MEMORY_DEVICES_SAFE_MAX_MEMSLOTS);
#: libvhost-user offers 509
MANY_SLOTS = 509


class VirtioMemHotplug(VhostUserTest):
    """
    virtio-mem with ``dynamic-memslots=on``: its region is mapped in
    memslots, each only while it holds plugged blocks.  Plugging blocks
    (the guest's request, which QEMU serves itself) maps their memslot,
    and the back-end must get it as ADD_MEM_REG; unplugging every block
    takes the memslots away again as REM_MEM_REG.

    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,memory-hotplug
    """

    def setUp(self):
        super().setUp()
        self.require_protocol(ProtocolFeature.CONFIGURE_MEM_SLOTS,
                              "hot-plugged memory travels in ADD_MEM_REG")
        self.require_device("virtio-mem-pci")
        self.require_qemu((8, 2, 0), "virtio-mem maps its region in "
                          "memslots as blocks are plugged since 177f9b1ee4 "
                          "(dynamic-memslots)")

    def start(self):
        backend = self.make_backend("backend",
                                    BackendConfig(max_mem_slots=MANY_SLOTS))
        mem_mb = self.mem_mb()
        vm = self.make_vm(
            "vm", backend.listener_path, mem_slots=1,
            maxmem_mb=mem_mb + VMEM_MB,
            extra=["-object", f"{MEMFD},id=vmem0,size={VMEM_MB}M,share=on",
                   "-device", f"virtio-mem-pci,id=vmem,memdev=vmem0,"
                   f"requested-size={REQUESTED_MB}M,dynamic-memslots=on"])
        self.start_vm(vm, backend, rings=2)
        platform = vm.spec.platform
        mem = VirtioMem(vm.qtest, platform, platform.bar_base + 0x400000,
                        platform.window((0x600000, 0x800000)),
                        platform.window((0x3800000, 0x4000000)))
        config = mem.config()
        self.log.info("virtio-mem: %s", config)
        return vm, backend, mem, config

    def plug(self, backend, mem, addr, blocks):
        """Plug ``blocks`` at ``addr``; the ADD_MEM_REG that maps them."""
        adds = len(backend.trace.payloads(Request.ADD_MEM_REG))
        self.assertEqual(mem.plug(addr, blocks), "ACK")
        backend.wait_request(Request.ADD_MEM_REG, adds + 1,
                             timeout=self.scaled(10))
        region = backend.trace.payloads(Request.ADD_MEM_REG)[-1].region
        self.assertTrue(region.guest_addr <= addr < region.guest_addr
                        + region.size, f"blocks plugged at 0x{addr:x}, "
                        f"QEMU added {region}")
        return region

    def assert_block_agrees(self, vm, backend, addr, size):
        """The back-end and QEMU agree on a plugged block: what the
        back-end writes through its mapping QEMU reads (all of it), and
        what qtest writes (at both ends and across a page boundary in the
        middle) the back-end reads."""
        rng = random.Random(addr)
        data = rng.randbytes(size)
        backend.state.memory.write(addr, data)
        dumps = self.workdir_short
        seen = open(dump_guest_memory(vm, addr, size, dumps), "rb").read()
        self.assertTrue(seen == data, f"QEMU reads the block at 0x{addr:x} "
                        "otherwise than the back-end wrote it (first "
                        f"difference at +{first_difference(data, seen)})")
        for spot in (addr, addr + size // 2 - 100, addr + size - 4096):
            part = rng.randbytes(4096 if spot != addr + size // 2 - 100
                                 else 200)
            vm.qtest.memwrite(spot, part)
            self.assertEqual(backend.state.memory.read(spot, len(part)),
                             part, f"qtest wrote at 0x{spot:x}, the "
                             "back-end reads something else")

    def test_plugged_blocks_reach_the_back_end_and_leave_it(self):
        """Blocks plugged at both ends of the region map two memslots: two
        ADD_MEM_REG, and the back-end agrees with QEMU on every byte;
        unplugging everything sends a REM_MEM_REG for each, and the
        back-end maps none of the region any more."""
        vm, backend, mem, config = self.start()
        first = self.plug(backend, mem, config.addr, 2)
        last = self.plug(backend, mem, config.addr + config.region_size
                         - config.block_size, 1)
        self.assertNotEqual(first.guest_addr, last.guest_addr,
                            "both ends of the region in one memslot")
        self.assertEqual(mem.config().plugged_size, 3 * config.block_size)
        self.assertNotIn(Request.SET_MEM_TABLE, backend.trace.received())
        for addr in (config.addr, config.addr + config.block_size,
                     config.addr + config.region_size - config.block_size):
            self.assert_block_agrees(vm, backend, addr, config.block_size)
        self.assertEqual(mem.unplug_all(), "ACK")
        backend.wait_request(Request.REM_MEM_REG, 2, timeout=self.scaled(10))
        removed = {(r.region.guest_addr, r.region.size)
                   for r in backend.trace.payloads(Request.REM_MEM_REG)}
        self.assertEqual(removed, {(first.guest_addr, first.size),
                                   (last.guest_addr, last.size)})
        end = config.addr + config.region_size
        still = [(g, s) for g, s in backend.state.memory.ram_ranges()
                 if g < end and config.addr < g + s]
        self.assertEqual(still, [], "the back-end still maps virtio-mem "
                         "memory after everything was unplugged")
        assert_guest_memory_agrees(self, vm, backend)


if __name__ == "__main__":
    main()
