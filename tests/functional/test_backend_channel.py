"""
The back-end channel (BACKEND_REQ): requests from the back-end to QEMU.

With BACKEND_REQ, QEMU gives the back-end one end of a socketpair
(SET_BACKEND_REQ_FD) on which the roles are swapped.  A configuration
change is the simplest request a device makes: "the back-end sends
VHOST_USER_BACKEND_CONFIG_CHANGE_MSG to notify the front-end that the
device configuration space has changed"; QEMU fetches the new space with
GET_CONFIG and tells the guest (the configuration-change interrupt).  Here
a vhost-user-blk back-end grows its disk, as a storage daemon does on a
resize, and the guest (the test, over qtest) must see the interrupt and
the new capacity.  A host notifier (VRING_HOST_NOTIFIER_MSG) hands QEMU a
page of the back-end's memory to map as a ring's doorbell: the guest's
kicks are then writes into the back-end's page (how a vDPA-like back-end
takes them without an eventfd); its removal is tested with hot-unplug too
(``test_hotplug.py``).
"""

import mmap
import os
import struct
import time

from avocado_vhost.vhost_user.device_offers import (BLK_CAPACITY,
                                                    BLK_F_BLK_SIZE, BLK_QUEUES,
                                                    device_config)
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature, Request
from avocado_vhost.peers.qemu.qtest import QtestError
from avocado_vhost.vhost_user.error import ConnectionClosed
from avocado_vhost.vhost_user.message import (FLAG_NEED_REPLY, HEADER,
                                              VERSION, BackendRequest, Empty)

#: ISR status bit of a configuration change (virtio 4.1.4.5)
ISR_CONFIG = 0x2

_ASK = VERSION | FLAG_NEED_REPLY


def _raw(request, flags, payload=b"", size=None):
    """One message as bytes, its header's size field as given."""
    return HEADER.pack(request, flags, len(payload) if size is None
                       else size) + payload


#: malformed back-end requests: name -> (bytes sent first, fds to attach,
#: bytes sent after the main-loop probe).  QEMU's part of the spec: "the
#: front-end must respond with zero when operation is successfully
#: completed, or non-zero otherwise" -- and nothing a back-end sends may
#: stop the VM.
MALFORMED = {
    "unknown request 99": (_raw(99, _ASK, bytes(8)), 0, b""),
    "size beyond any payload": (_raw(BackendRequest.CONFIG_CHANGE_MSG, _ASK,
                                     size=0x100000), 0, b""),
    "IOTLB miss of 8 bytes": (_raw(BackendRequest.IOTLB_MSG, _ASK,
                                   bytes(8)), 0, b""),
    "host notifier of ring 200, no fd": (_raw(
        BackendRequest.VRING_HOST_NOTIFIER_MSG, _ASK,
        struct.pack("<QQQ", 200 | 1 << 8, 0, 0)), 0, b""),
    "config change carrying 3 fds": (_raw(
        BackendRequest.CONFIG_CHANGE_MSG, _ASK), 3, b""),
}
#: a header announcing 32 bytes, 8 of them; the rest after the probe
HALF = (_raw(BackendRequest.IOTLB_MSG, _ASK, bytes(8), size=32), 0,
        bytes(24))


class BackendChannelTest(VhostUserTest):
    """What the classes below need: a back-end channel."""

    def setUp(self):
        super().setUp()
        self.require_protocol(ProtocolFeature.BACKEND_REQ,
                              "the test is about the back-end channel")


class BackendChannel(BackendChannelTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,backend-channel
    """

    def start_blk(self):
        self.require_device("vhost-user-blk-pci")
        backend = self.make_backend("backend", device_config("blk"))
        vm = self.make_vm("vm", backend.listener_path,
                          device="vhost-user-blk-pci",
                          device_opts=[f"num-queues={BLK_QUEUES}"])
        vm.launch()
        driver = vm.drive_device(features=BLK_F_BLK_SIZE, queues=BLK_QUEUES)
        backend.wait_rings_started(BLK_QUEUES, timeout=self.scaled(10))
        return backend, driver

    def capacity(self, driver):
        return driver.config_read(0, 4) | driver.config_read(4, 4) << 32

    def resize(self, backend, capacity):
        """The back-end's disk is now ``capacity`` sectors; it tells QEMU
        on the channel and returns QEMU's acknowledgement."""
        with backend.lock():
            backend.state.config[0:8] = struct.pack("<Q", capacity)
        return backend.backend_request(BackendRequest.CONFIG_CHANGE_MSG,
                                       Empty())

    def test_a_resize_reaches_the_guest(self):
        """CONFIG_CHANGE_MSG: QEMU acknowledges it, fetches the new
        configuration (GET_CONFIG) and raises the configuration interrupt;
        the guest reads the new capacity.

        :avocado: tags=quick
        """
        backend, driver = self.start_blk()
        self.assertEqual(self.capacity(driver), BLK_CAPACITY)
        self.assertFalse(driver.isr_status() & ISR_CONFIG,
                         "a configuration interrupt before any change (the "
                         "check below could not fail)")
        gets = len(backend.trace.select("rx", Request.GET_CONFIG))
        ack = self.resize(backend, 2 * BLK_CAPACITY)
        self.assertEqual(ack, 0, "QEMU refused the configuration change")
        self.assertGreater(len(backend.trace.select("rx",
                                                    Request.GET_CONFIG)),
                           gets, "QEMU never fetched the changed "
                           "configuration (no GET_CONFIG)")
        self.assertTrue(driver.isr_status() & ISR_CONFIG,
                        "the guest got no configuration-change interrupt")
        self.assertEqual(self.capacity(driver), 2 * BLK_CAPACITY,
                         "the guest still reads the old capacity")

    def test_every_field_of_a_change_reaches_the_guest(self):
        """A resize that also changes the disk's geometry: the guest reads
        the new geometry with the new capacity (the protocol puts no limit
        on what a change may change; QEMU took only the capacity until
        f67d296b6e, 9.0).

        :avocado: tags=quick
        """
        backend, driver = self.start_blk()
        geometry = struct.pack("<HBB", 1234, 16, 63)
        with backend.lock():
            backend.state.config[16:20] = geometry
        self.assertEqual(self.resize(backend, 3 * BLK_CAPACITY), 0)
        self.assertEqual(self.capacity(driver), 3 * BLK_CAPACITY)
        seen = driver.config_read(16, 4).to_bytes(4, "little")
        self.assertEqual(seen, geometry, "the configuration change reached "
                         "the guest without its geometry: only the "
                         "capacity was taken")

    def test_a_host_notifier_takes_the_guest_kicks(self):
        """VRING_HOST_NOTIFIER_MSG for ring 1 (``page-per-vq=on``): QEMU
        maps the back-end's page as the ring's doorbell, and the guest's
        kick -- the ring's index written to its notify address -- lands in
        that page; after the notifier is removed (no fd), the page sees
        kicks no more.

        :avocado: tags=quick
        """
        config = BackendConfig()
        config.protocol_features |= int(ProtocolFeature.HOST_NOTIFIER)
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path,
                          device_opts=["page-per-vq=on"])
        self.start_vm(vm, backend, rings=2)
        doorbell = os.memfd_create("doorbell")
        self.cleanup(os.close, doorbell)
        os.ftruncate(doorbell, mmap.PAGESIZE)
        page = mmap.mmap(doorbell, mmap.PAGESIZE)
        self.cleanup(page.close)
        kick = vm.device.queues[1].notify_addr

        vm.qtest.write(kick, 2, 1)
        self.assertEqual(page[0:2], b"\0\0", "a kick reached the page "
                         "before it was mapped (the check below could not "
                         "fail)")
        self.assertEqual(backend.host_notifier(1, doorbell), 0,
                         "QEMU refused to map the host notifier")
        vm.qtest.write(kick, 2, 1)
        self.assertEqual(page[0:2], b"\1\0", "the guest's kick of ring 1 "
                         "did not land in the back-end's doorbell page")
        self.assertEqual(backend.host_notifier(1, None), 0,
                         "QEMU refused to remove the host notifier")
        page[0:2] = b"\0\0"
        vm.qtest.write(kick, 2, 1)
        self.assertEqual(page[0:2], b"\0\0", "a kick landed in the page "
                         "after the notifier was removed")


class MalformedBackendRequests(BackendChannelTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,backend-channel
    """

    def send_malformed(self, name, case):
        """One VM; send ``case``; what QEMU did: its answer, whether its
        main loop kept answering (qtest), whether it still runs."""
        first, nfds, rest = case
        backend = self.make_backend(f"backend{len(self.vms)}")
        vm = self.make_vm(f"vm{len(self.vms)}", backend.listener_path)
        self.start_vm(vm, backend)
        channel = backend.state.backend_channel
        self.assertIsNotNone(channel, "QEMU gave no back-end channel")
        log_before = len(vm.log_text())
        fds = [os.eventfd(0) for _ in range(nfds)]
        try:
            channel.conn.send(first, fds)
        finally:
            for fd in fds:
                os.close(fd)
        # QEMU's main loop serves qtest too: does it still answer?  The
        # request is in QEMU's socket before the first question, so QEMU
        # has dispatched it by the time it answers that one (in the same
        # poll round at the latest): the second question finds a loop that
        # the request stopped, whichever QEMU dispatched first.
        vm.qtest.timeout = self.scaled(2)
        loop = "kept answering"
        for _ in range(2):
            started = time.monotonic()
            try:
                vm.qtest.read(vm.spec.platform.ram(0), 4)
            except QtestError:
                loop = (f"blocked: no qtest answer within "
                        f"{time.monotonic() - started:.1f} s")
                break
        if rest:
            channel.conn.send(rest)
        if channel.conn.wait_readable(self.scaled(1)):
            try:
                header, raw, _ = channel.conn.recv()
                answer = (f"answered {int.from_bytes(raw[:8], 'little')} "
                          f"(flags 0x{header.flags:x})")
            except ConnectionClosed:
                answer = "closed the channel"
        else:
            answer = "no answer"
        alive = vm.is_running()
        said = vm.log_text()[log_before:].strip().replace("\n", " | ")
        return {"case": name, "answer": answer, "main loop": loop,
                "qemu": "runs" if alive else f"died ({vm.exitcode()})",
                "log": said[:200]}

    def test_qemu_survives_malformed_back_end_requests(self):
        """Each malformed request on the back-end channel, in a VM of its
        own: what QEMU answers and logs is recorded in a table (it differs
        between versions); QEMU must keep running."""
        rows = [self.send_malformed(name, case)
                for name, case in MALFORMED.items()]
        for row in rows:
            self.log.info("%-34s | %-28s | %-40s | %s | %s", row["case"],
                          row["answer"], row["main loop"], row["qemu"],
                          row["log"])
        self.whiteboard = "\n".join(" | ".join(r.values()) for r in rows)
        dead = [r["case"] for r in rows if r["qemu"] != "runs"]
        self.assertEqual(dead, [], "QEMU died of a back-end request")
        self.assertEqual([r["case"] for r in rows
                          if r["main loop"] != "kept answering"], [],
                         "QEMU stopped answering")

    def test_half_a_request_does_not_stop_qemu(self):
        """A back-end sends a header and only part of the payload it
        announces, the rest 2 s later: QEMU's main loop must not wait for
        it (nothing a back-end sends may stop the VM)."""
        row = self.send_malformed("half a message, the rest late", HALF)
        self.log.info("%s", row)
        self.assertEqual(row["qemu"], "runs", "QEMU died")
        self.assertEqual(row["main loop"], "kept answering",
                         "QEMU's main loop stopped answering while a "
                         f"back-end request was half sent: {row['main loop']}"
                         f" (QEMU then {row['answer']})")


if __name__ == "__main__":
    main()
