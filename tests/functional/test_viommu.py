"""
A vhost-user device behind a vIOMMU (the spec's "IOMMU support").

With VIRTIO_F_IOMMU_PLATFORM negotiated and a vIOMMU in front of the
device, every address the driver gives -- ring areas, buffers -- is an I/O
virtual address.  Only QEMU's vIOMMU can translate it: the back-end asks
with a miss on the back-end channel (BACKEND_IOTLB_MSG), QEMU answers with
an IOTLB_MSG update on the main channel (the IOVA range, QEMU's own address
for it, the permissions), and invalidates what the guest unmaps.  QEMU
turns this on only for a back-end with BACKEND_REQ and REPLY_ACK.

* With the vIOMMU present but its translation off (what a guest sees until
  its kernel turns DMA remapping on), QEMU translates one page per miss,
  IOVA = guest address; frames must still cross both ways intact.
* With the test's own page tables in intel-iommu (x86_64), IOVAs are not
  guest addresses at all: frames cross only if the back-end translates
  through the IOTLB; and when the test moves a page and invalidates it,
  the back-end must drop its entry and read the new page (the negative
  control keeps the stale entry and reads the old one).
"""

import random

from avocado_vhost.peers.qemu.driver import NET_HDR
from avocado_vhost.peers.qemu.iommu import IntelIommu
from avocado_vhost.peers.qemu.platform import (BUFFER_WINDOW, IOMMU_WINDOW,
                                         RING_WINDOW)
from avocado_vhost.peers.qemu.virtio_pci import (VIRTIO_VENDOR, GuestAllocator,
                                           config_space, find_function,
                                           modern_device_id)
from avocado_vhost.scenarios import loopback
from avocado_vhost.scenarios.loopback import frames
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.virtio import VirtioFeature

QUEUE_SIZE = 64
#: where the test's page tables put guest memory for the device
DMA_OFFSET = 1 << 32


class ViommuTest(VhostUserTest):
    """What both classes below do: a net device behind the platform's
    vIOMMU, frames through it both ways."""

    def start(self, dma_offset=0, setup=None, config=None):
        self.require_protocol(
            ProtocolFeature.BACKEND_REQ | ProtocolFeature.REPLY_ACK,
            "QEMU hands a vIOMMU's translations only to a back-end with the "
            "back-end channel and REPLY_ACK")
        config = config or BackendConfig()
        config.features |= int(VirtioFeature.ACCESS_PLATFORM)
        port = Port()
        backend = self.make_backend("backend", config, device=NetDevice(port))
        vm = self.make_vm("vm", backend.listener_path, iommu=True,
                          device_opts=["iommu_platform=on"])
        vm.launch()
        if setup is not None:
            setup(vm)
        vm.drive_device(features=VirtioFeature.ACCESS_PLATFORM, queues=2,
                        queue_size=QUEUE_SIZE, dma_offset=dma_offset)
        backend.wait_rings_started(2, timeout=self.scaled(10))
        return vm, backend, port, vm.net_queues()

    def cross(self, backend, port, queues, seed, dma_offset=0):
        """40 frames each way; the back-end must have missed, and every
        entry QEMU handed over must translate IOVA ``g + dma_offset`` to
        guest address ``g`` (what the test's mapping says)."""
        rxq, txq = queues
        rng = random.Random(seed)
        loopback.transmit(self, port, txq, frames(rng, 40, b"tx"))
        loopback.receive(self, backend, port, rxq, frames(rng, 40, b"rx"))
        iotlb = backend.state.iotlb
        self.log.info("IOTLB: %d misses sent, %d updates, %d entries",
                      iotlb.misses, iotlb.updates, len(iotlb))
        self.assertGreater(iotlb.misses, 0, "the back-end never missed")
        for entry in iotlb.entries:
            self.assertEqual(
                backend.state.memory.uva_to_gpa(entry.user_addr),
                entry.iova - dma_offset, f"QEMU's IOTLB entry {entry} does "
                "not say what the mapping says")

class Viommu(ViommuTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,net,iommu
    """

    def test_translation_off_one_page_per_miss(self):
        """The vIOMMU is there but the guest has not turned translation on:
        the back-end's misses are answered page by page, IOVA = guest
        address, and frames cross both ways."""
        vm, backend, port, queues = self.start()
        # translation off: an IOVA is its guest address
        self.cross(backend, port, queues, seed=7)


class ViommuTranslation(ViommuTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,vhost-user,net,iommu
    """

    def start_translated(self, config=None):
        """intel-iommu programmed by the test: the device's addresses are
        guest addresses plus DMA_OFFSET, in the test's page tables."""
        self.require_arch("x86_64")
        self.iommu = None

        def program(vm):
            platform = vm.spec.platform
            func = find_function(config_space(vm.qtest, platform),
                                 VIRTIO_VENDOR, modern_device_id(1))
            self.iommu = IntelIommu(vm.qtest, GuestAllocator(
                *platform.window(IOMMU_WINDOW)))
            for window in (RING_WINDOW, BUFFER_WINDOW):
                lo, hi = platform.window(window)
                self.iommu.map(lo + DMA_OFFSET, lo, hi - lo)
            self.iommu.attach(func.devfn)
            self.iommu.enable()
        return self.start(DMA_OFFSET, program, config)

    def test_frames_cross_through_the_guest_page_tables(self):
        """Every IOVA is 4 GiB above its guest address: frames cross both
        ways only through the IOTLB, and every entry QEMU handed over
        translates as the test's page tables say.

        :avocado: tags=quick
        """
        vm, backend, port, queues = self.start_translated()
        self.cross(backend, port, queues, seed=8, dma_offset=DMA_OFFSET)

    def moved_page(self, config=None):
        """Transmit through one buffer, move its page elsewhere in the
        page table and invalidate that page, then transmit through the
        same IOVA again: what comes out of the port, and the frame that
        the new page holds."""
        vm, backend, port, (rxq, txq) = self.start_translated(config)
        rng = random.Random(9)
        # a ring's worth: every buffer's page is in the back-end's IOTLB
        loopback.transmit(self, port, txq, frames(rng, QUEUE_SIZE, b"warm"))
        before = len(port.sent)
        old = frames(rng, 1, b"old")[0]
        (head,) = txq.post_out([NET_HDR + old], kick=False)
        gpa = txq.buffer_addr(head)
        iova = gpa + DMA_OFFSET
        with backend.lock():
            cached = backend.state.iotlb.find(iova, 1, False)
        self.log.info("the back-end translates iova 0x%x by %s", iova, cached)
        # the page's new home (test-owned RAM), holding the frame the
        # device must read from now on
        page = gpa & ~0xFFF
        new_page = self.iommu.alloc.alloc(0x1000)
        # as long as the frame posted: the device reads that many bytes
        fresh = b"new" + rng.randbytes(len(old) - 3)
        vm.qtest.memwrite(new_page, vm.qtest.memread(page, 0x1000))
        vm.qtest.memwrite(new_page + (gpa - page), NET_HDR + fresh)
        self.iommu.remap(page + DMA_OFFSET, new_page)
        invalidations = backend.state.iotlb.invalidations
        self.iommu.invalidate(page + DMA_OFFSET)
        self.assertGreater(backend.state.iotlb.invalidations, invalidations,
                           "QEMU sent no IOTLB invalidation for the page "
                           "the guest took away")
        # (the back-end may take the buffer at the invalidation already)
        txq.kick()
        port.wait_sent(before + 1, timeout=self.scaled(10))
        txq.reap()
        return port.sent[-1].data, fresh

    def test_an_invalidated_page_is_translated_again(self):
        """The guest moves a buffer's page and invalidates it: QEMU tells
        the back-end, which must drop its entry, miss again and read the
        page where it is now."""
        got, fresh = self.moved_page()
        self.assertTrue(got == fresh, "the back-end read the page the "
                        f"guest took away: {got[:8]!r}.., the page "
                        f"mapped now holds {fresh[:8]!r}..")

    def test_negative_control_a_stale_entry_reads_the_old_page(self):
        """A back-end that keeps the entry the invalidation named reads the
        page the guest took away -- the check above can fail.

        :avocado: tags=quick
        """
        config = BackendConfig(iotlb_invalidate=False)
        got, fresh = self.moved_page(config)
        self.assertTrue(got != fresh and got.startswith(b"old"),
                        f"a stale entry should read the old frame, got "
                        f"{got[:8]!r}..")


if __name__ == "__main__":
    main()
