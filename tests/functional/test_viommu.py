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

from avocado_vhost.qemu.driver import NET_HDR
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature
from avocado_vhost.vhost_user.iotlb import IOTLB_UPDATE
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.virtio import NET_HDR_LEN, VirtioFeature

QUEUE_SIZE = 64


def frames(rng, count, tag):
    out = []
    for i in range(count):
        head = tag + i.to_bytes(4, "big")
        out.append(head + rng.randbytes(rng.choice((60, 300, 1514))
                                        - len(head)))
    return out


class Viommu(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,net,iommu
    """

    def start(self, dma_offset=0, setup=None):
        self.require_protocol(
            ProtocolFeature.BACKEND_REQ | ProtocolFeature.REPLY_ACK,
            "QEMU hands a vIOMMU's translations only to a back-end with the "
            "back-end channel and REPLY_ACK")
        config = BackendConfig()
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

    def transmit(self, port, txq, payloads):
        before = len(port.sent)
        for chunk in range(0, len(payloads), 16):
            batch = payloads[chunk:chunk + 16]
            txq.post_out([NET_HDR + f for f in batch])
            port.wait_sent(before + chunk + len(batch),
                           timeout=self.scaled(10))
            self.assertEqual(len(txq.reap()), len(batch))
        got = [s.data for s in port.sent[before:]]
        self.assertEqual(got, payloads, "transmitted frames damaged")

    def receive(self, backend, port, rxq, payloads):
        before = sum(port.received.values())
        got = []
        for chunk in range(0, len(payloads), 16):
            batch = payloads[chunk:chunk + 16]
            rxq.post_in(len(batch))
            with port.cond:
                port.wire.extend(batch)
            backend.poke()
            port.wait_received(before + chunk + len(batch),
                               timeout=self.scaled(10))
            for head, length in rxq.reap():
                data = rxq.read_buffer(head, length)
                self.assertEqual(data[:NET_HDR_LEN], NET_HDR)
                got.append(data[NET_HDR_LEN:])
        self.assertEqual(got, payloads, "received frames damaged")

    def test_translation_off_one_page_per_miss(self):
        """The vIOMMU is there but the guest has not turned translation on:
        the back-end's misses are answered page by page, IOVA = guest
        address, and frames cross both ways."""
        vm, backend, port, (rxq, txq) = self.start()
        rng = random.Random(7)
        self.transmit(port, txq, frames(rng, 40, b"tx"))
        self.receive(backend, port, rxq, frames(rng, 40, b"rx"))
        iotlb = backend.state.iotlb
        self.log.info("IOTLB: %d misses sent, %d updates, %d entries",
                      iotlb.misses, iotlb.updates, len(iotlb))
        self.assertGreater(iotlb.misses, 0, "the back-end never missed")
        for entry in iotlb.entries:
            self.assertEqual(backend.state.memory.uva_to_gpa(
                entry.user_addr), entry.iova,
                f"with translation off an IOVA is its guest address: "
                f"{entry}")


if __name__ == "__main__":
    main()
