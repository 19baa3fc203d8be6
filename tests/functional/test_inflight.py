"""
In-flight I/O across a back-end restart (vhost-user, "Inflight I/O
tracking", INFLIGHT_SHMFD) with vhost-user-blk.

The driver (this test, over qtest) writes eight sectors.  The back-end
completes the odd requests at once and holds the even ones -- taken off
the ring, not finished, out of order, as a back-end with slow I/O has
them -- and then dies.  QEMU keeps the in-flight area the back-end gave it
(GET_INFLIGHT_FD), resumes the ring at the used index and hands the area
to the back-end that replaces it (SET_INFLIGHT_FD).  The claim: every
request completes exactly once with status OK, each sector is written
exactly once with its own data, and reading the disk back through the
ring returns it.

The negative control is a successor that ignores the area: from the used
index alone it takes the odd requests again and never sees requests 0 and
2, and the same check fails, naming them.
"""

from collections import Counter

from avocado_vhost.vhost_user.device_offers import (BLK_CAPACITY, BLK_QUEUES,
                                                    device_config)
from avocado_vhost.peers.guest.boot import GuestOptions
from avocado_vhost.checks.known_defects import DEFECTS
from avocado_vhost.scenarios import migration
from avocado_vhost.peers.guest.start import start_guest
from avocado_vhost.scenarios.proxied import check_proxy, make_proxy
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import ProtocolFeature, Request, Side
from avocado_vhost.virtio import VirtioFeature
from avocado_vhost.vhost_user.blk import (HEADER, S_OK, SECTOR, T_IN, T_OUT,
                                          BlkDevice, Disk)

REQUESTS = 8
#: sectors apart: each request writes its own 4 KiB block
STRIDE = 8


def pattern(number):
    """The 512 bytes request ``number`` writes."""
    return bytes((number * 37 + i) & 0xFF for i in range(SECTOR))


def write_all(queue):
    """Post the eight writes; head descriptor -> (request, status buffer's
    descriptor)."""
    posted = {}
    for number in range(REQUESTS):
        header = HEADER.pack(T_OUT, 0, number * STRIDE)
        descs = queue.post_chain([header, pattern(number)], [1])
        posted[descs[0]] = (number, descs[-1])
    return posted


def held_when_even(request):
    """The back-end finishes odd requests at once and holds even ones."""
    return request.sector // STRIDE % 2 == 0


class Inflight(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,reconnect,inflight
    """

    def setUp(self):
        super().setUp()
        self.require_device("vhost-user-blk-pci")
        self.config = device_config("blk")
        self.config.protocol_features |= int(ProtocolFeature.INFLIGHT_SHMFD)
        self.disk = Disk(BLK_CAPACITY)

    def start(self, packed=False):
        """A blk device whose back-end holds the even requests; QEMU is
        the client and reconnects by itself.  ``packed``: packed rings,
        and the in-flight area in the packed layout."""
        if packed:
            self.config.features |= int(VirtioFeature.RING_PACKED)
        device = BlkDevice(self.disk, hold=held_when_even)
        backend = self.make_backend("backend", self.config, device=device)
        vm = self.make_vm("vm", backend.listener_path,
                          reconnect=50 if self.caps.reconnect_ms else 1,
                          device="vhost-user-blk-pci",
                          device_opts=[f"num-queues={BLK_QUEUES}"]
                          + (["packed=on"] if packed else []))
        self.start_vm(vm, backend, rings=BLK_QUEUES,
                      features=VirtioFeature.RING_PACKED if packed else 0)
        self.assertEqual(vm.device.packed, packed)
        self.assertIn(Request.GET_INFLIGHT_FD, backend.trace.received(),
                      "QEMU never asked for an in-flight area although "
                      "INFLIGHT_SHMFD was negotiated")
        return vm, backend, device

    def restart(self, backend, resubmit=True):
        """Stop ``backend`` (a crash: it finishes nothing) and serve the
        same disk from a new back-end on the same socket."""
        path = backend.listener_path
        backend.stop()
        device = BlkDevice(self.disk, resubmit=resubmit)
        successor = self.make_backend("successor", self.config, listen=False,
                                      device=device)
        successor.listen(path)
        successor.wait_rings_started(BLK_QUEUES, timeout=self.scaled(10))
        self.assertIn(Request.SET_INFLIGHT_FD, successor.trace.received(),
                      "QEMU did not hand the in-flight area to the new "
                      "back-end")
        return successor, device

    def cut_and_restart(self, resubmit, packed=False):
        """Run the scenario; problems found (empty: all as the spec says)
        and the successor's device."""
        vm, backend, device = self.start(packed)
        queue = vm.net_queues()[0]
        posted = write_all(queue)
        device.wait_fetched(REQUESTS, timeout=self.scaled(10))
        before = queue.reap()
        self.log.info("at the cut: %d requests taken, %d completed, %d held",
                      len(device.fetched), len(before),
                      sum(map(len, device.held.values())))
        self.assertEqual(len(before), REQUESTS // 2)
        successor, fresh = self.restart(backend, resubmit)
        if resubmit:
            fresh.wait_completed(REQUESTS // 2, timeout=self.scaled(10))
        else:
            # what a successor without the area does, it does as its ring
            # starts (under the back-end's lock); then nothing more comes
            successor.wait_for(lambda: 0 in fresh.rings,
                               "the successor's ring running",
                               timeout=self.scaled(10))
        after = queue.reap(strict=False)
        self.log.info("after the restart: %d resubmitted %s, %d completed "
                      "by the new back-end", len(fresh.resubmitted.get(0, [])),
                      fresh.resubmitted.get(0, []), len(after))
        done = Counter(posted[head][0] for head, _ in before + after
                       if head in posted)
        problems = []
        lost = [n for n in range(REQUESTS) if not done[n]]
        twice = [n for n in range(REQUESTS) if done[n] > 1]
        if lost:
            problems.append(f"requests {lost} never completed")
        if twice:
            problems.append(f"requests {twice} completed more than once")
        for head, (number, status_desc) in posted.items():
            status = queue.read_buffer(status_desc, 1)[0]
            if done[number] and status != S_OK:
                problems.append(f"request {number} ended with status "
                                f"{status}")
        for number in range(REQUESTS):
            writes = self.disk.writes.get(number * STRIDE, 0)
            if writes != 1:
                problems.append(f"sector of request {number} written "
                                f"{writes} times")
        return problems, queue, successor

    def read_back(self, queue, device):
        """Read every sector through the ring; the requests whose sector
        does not hold what they wrote."""
        heads = {}
        base = device.completed
        for number in range(REQUESTS):
            header = HEADER.pack(T_IN, 0, number * STRIDE)
            descs = queue.post_chain([header], [SECTOR, 1])
            heads[descs[0]] = (number, descs[1])
        device.wait_completed(base + REQUESTS,
                              timeout=self.scaled(10))
        self.assertEqual(sorted(h for h, _ in queue.reap()), sorted(heads))
        return [number for number, data in heads.values()
                if queue.read_buffer(data, SECTOR) != pattern(number)]

    def assert_resubmitted_once(self, packed):
        """The scenario ends as the spec says: no problem, the four held
        requests resubmitted in the order taken, every sector reads back."""
        problems, queue, successor = self.cut_and_restart(resubmit=True,
                                                          packed=packed)
        self.assertEqual(problems, [])
        device = successor.device
        resubmitted = [r.sector // STRIDE for r in device.fetched[
            :len(device.resubmitted[0])]]
        self.assertEqual(resubmitted, [0, 2, 4, 6])
        self.assertEqual(self.read_back(queue, device), [])
        self.check_backends(successor)

    def test_requests_in_flight_complete_exactly_once(self):
        """Requests in flight when the back-end died are resubmitted by its
        successor from the in-flight area, in the order they were taken:
        each completes once, its data written once, and reads back.

        :avocado: tags=quick
        """
        self.assert_resubmitted_once(packed=False)

    def test_packed_requests_in_flight_complete_exactly_once(self):
        """The same with packed rings: the area in the spec's packed
        layout keeps each fetched descriptor (the device's used elements
        overwrite the slots of requests still in flight), and the
        successor resumes at the area's used position and resubmits the
        four from the descriptors kept."""
        self.assert_resubmitted_once(packed=True)

    def test_negative_control_packed_without_resubmission(self):
        """Negative control, packed: a successor that ignores the area
        starts at the base QEMU gives, which names no request in flight:
        the check names what was lost."""
        problems, _, _ = self.cut_and_restart(resubmit=False, packed=True)
        self.log.info("problems found, as they must be: %s", problems)
        self.assertTrue(any("never completed" in p for p in problems),
                        problems)

    def test_negative_control_without_resubmission(self):
        """Negative control: a successor that ignores the in-flight area
        resumes at the used index, completes requests twice and loses
        others -- the check above must say so.

        :avocado: tags=quick
        """
        problems, _, _ = self.cut_and_restart(resubmit=False)
        self.log.info("problems found, as they must be: %s", problems)
        self.assertTrue(any("never completed" in p for p in problems),
                        problems)
        self.assertTrue(any("more than once" in p for p in problems),
                        problems)


    def stop_with_requests_held(self, finish_on_stop):
        """Through the conformance proxy: the back-end holds the even
        writes, then the VM stops (QEMU stops the ring with
        GET_VRING_BASE).  The driver's completions once it stopped."""
        device = BlkDevice(self.disk, hold=held_when_even,
                           finish_on_stop=finish_on_stop)
        backend = self.make_backend("backend", self.config, device=device)
        proxy = make_proxy(self, "proxy", backend.listener_path)
        vm = self.make_vm("vm", self.socket_path("proxy"),
                          device="vhost-user-blk-pci",
                          device_opts=[f"num-queues={BLK_QUEUES}"])
        self.start_vm(vm, backend, rings=BLK_QUEUES)
        queue = vm.net_queues()[0]
        write_all(queue)
        device.wait_fetched(REQUESTS, timeout=self.scaled(10))
        # "stop" returns once QEMU has the answer to GET_VRING_BASE, which
        # the proxy judged before passing it on
        vm.qmp("stop")
        self.assertIn(Request.GET_VRING_BASE, backend.trace.received())
        return proxy, queue.reap(strict=False)

    def test_stopping_a_ring_completes_what_it_took(self):
        """vhost-user: "By default, the back-end must complete all
        inflight I/O requests for the specified vring before stopping
        it": every write the back-end held is completed by the time its
        answer to GET_VRING_BASE reaches QEMU, and the proxy judges the
        stop clean."""
        proxy, done = self.stop_with_requests_held(finish_on_stop=True)
        self.assertEqual(len(done), REQUESTS)
        check_proxy(self, proxy)

    def test_negative_control_a_ring_stopped_with_requests_taken(self):
        """Negative control: a back-end that answers GET_VRING_BASE with
        requests taken and not completed is judged by the proxy."""
        proxy, done = self.stop_with_requests_held(finish_on_stop=False)
        self.assertEqual(len(done), REQUESTS // 2)
        broken = [(v.side, v.rule) for v in proxy.violations]
        self.assertIn((Side.BACK_END, "stop-completes-inflight"), broken,
                      [str(v) for v in proxy.violations])
        self.assertTrue(any("stopped with 4 request(s) taken" in v.text
                            for v in proxy.violations))


class InflightMigration(VhostUserTest):
    """
    In-flight requests that cross a live migration (QEMU master since
    3dfd711ea9, "vhost-user-blk: support inter-host inflight migration";
    e0822e6085 brought protocol feature 20, GET_VRING_BASE_INFLIGHT).  With
    ``inflight-migration=on`` and the feature negotiated, the source
    back-end may stop its ring without finishing what it holds ("the
    back-end may suspend in-flight I/O requests and record them ...
    instead of completing them"); QEMU carries the in-flight area in the
    migration stream and hands it to the destination's back-end
    (SET_INFLIGHT_FD), which resubmits.  Shared storage: both back-ends
    serve the same disk.

    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,inflight,migration
    """

    def setUp(self):
        super().setUp()
        self.require_device("vhost-user-blk-pci")
        self.require_qemu((10, 2, 50), "in-flight requests migrate since "
                          "3dfd711ea9 (QEMU 11.0's development, January "
                          "2026)")
        migration.need_log_fd(self)
        self.config = device_config("blk")
        # a device that migrates logs its writes (VHOST_F_LOG_ALL)
        self.config.features |= int(VirtioFeature.LOG_ALL)
        self.config.protocol_features |= int(
            ProtocolFeature.INFLIGHT_SHMFD
            | ProtocolFeature.GET_VRING_BASE_INFLIGHT)
        self.disk = Disk(BLK_CAPACITY)

    def migrate_in_flight(self, resubmit=True):
        """Eight writes, the even ones held by the source, then a
        migration; the problems found, as :meth:`cut_and_restart` says."""
        source = BlkDevice(self.disk, hold=held_when_even)
        target = BlkDevice(self.disk, resubmit=resubmit)
        src_be = self.make_backend("src", self.config, device=source)
        dst_be = self.make_backend("dst", self.config, device=target)
        opts = [f"num-queues={BLK_QUEUES}", "inflight-migration=on"]
        src = self.make_vm("src", src_be.listener_path,
                           device="vhost-user-blk-pci", device_opts=opts)
        uri = "unix:" + self.socket_path("migration")
        dst = self.make_vm("dst", dst_be.listener_path, incoming=uri,
                           device="vhost-user-blk-pci", device_opts=opts)
        self.start_vm(src, src_be, rings=BLK_QUEUES)
        dst.launch()
        self.assertTrue(src_be.state.protocol_negotiated(
            ProtocolFeature.GET_VRING_BASE_INFLIGHT),
            "QEMU did not negotiate GET_VRING_BASE_INFLIGHT")
        queue = src.net_queues()[0]
        posted = write_all(queue)
        source.wait_fetched(REQUESTS, timeout=self.scaled(10))
        before = queue.reap()
        self.assertEqual(len(before), REQUESTS // 2)
        migration.migrate(self, src, dst, uri)
        why = migration.wait_migration(self, src, dst)
        self.assertIsNone(why, f"the migration failed: {why}")
        self.log.info("source: %d taken, %d completed; its ring stopped "
                      "with %d held", len(source.fetched), source.completed,
                      REQUESTS - source.completed)
        self.assertEqual(source.completed, REQUESTS // 2, "the source "
                         "finished held requests although it may suspend "
                         "them")
        dst_be.wait_rings_started(BLK_QUEUES, timeout=self.scaled(10))
        self.assertIn(Request.SET_INFLIGHT_FD, dst_be.trace.received(),
                      "the destination's back-end got no in-flight area")
        queue.move_to(dst.qtest)
        if resubmit:
            target.wait_completed(REQUESTS // 2, timeout=self.scaled(10))
        after = queue.reap(strict=False)
        self.log.info("destination: resubmitted %s, %d completed",
                      target.resubmitted.get(0, []), len(after))
        done = Counter(posted[head][0] for head, _ in before + after
                       if head in posted)
        problems = [f"request {n} completed {done[n]} times"
                    for n in range(REQUESTS) if done[n] != 1]
        problems += [f"sector of request {n} written "
                     f"{self.disk.writes.get(n * STRIDE, 0)} times"
                     for n in range(REQUESTS)
                     if self.disk.writes.get(n * STRIDE, 0) != 1]
        return problems

    def test_requests_in_flight_cross_a_migration(self):
        """The source suspends the four requests it holds; the destination
        finds them in the migrated in-flight area and completes them: each
        of the eight exactly once, each sector written once."""
        self.assertEqual(self.migrate_in_flight(), [])

    def test_negative_control_a_destination_that_ignores_the_area(self):
        """A destination that does not resubmit: the held requests are
        lost, and the check above says which."""
        problems = self.migrate_in_flight(resubmit=False)
        self.log.info("problems found, as they must be: %s", problems)
        self.assertIn("request 0 completed 0 times", problems)


#: the guest's writes: block i (4 KiB) at 8 KiB * i, so that no two are
#: adjacent (the guest's I/O scheduler would merge them), filled with
#: letter i
GUEST_BLOCKS = "ABCDEFGH"


def held_guest_write(request):
    """The back-end holds the guest's writes to even blocks."""
    return request.type == T_OUT and request.sector // 16 % 2 == 0


class InflightGuest(VhostUserTest):
    """
    A real Linux guest writing to a vhost-user-blk disk while its back-end
    dies with requests in flight: eight writes in parallel (O_DIRECT, one
    request each), four of them held; a successor takes over the in-flight
    area and the guest's writes all finish, each block written once with
    its own data, and the guest saw no I/O error.

    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,inflight,guest
    """

    def test_a_guest_writes_across_a_back_end_restart(self):
        self.require_device("vhost-user-blk-pci")
        config = device_config("blk")
        config.protocol_features |= int(ProtocolFeature.INFLIGHT_SHMFD)
        disk = Disk(BLK_CAPACITY)
        device = BlkDevice(disk, hold=held_guest_write)
        blk = self.make_backend("blk", config, device=device)
        reconnect = ("reconnect-ms=50" if self.caps.reconnect_ms
                     else "reconnect=1")
        msix = not DEFECTS["msix-tcg-irqfd"].carried_by(
            self.caps.version_tuple)
        extra = ["-chardev", f"socket,id=vublk,path={blk.listener_path},"
                 f"{reconnect}",
                 "-device", f"vhost-user-blk-pci,chardev=vublk,"
                 f"num-queues={BLK_QUEUES}" + ("" if msix else ",vectors=0")]
        guest = start_guest(self, GuestOptions(msix=msix), extra=extra)
        guest.run("for c in " + " ".join(GUEST_BLOCKS) + "; do "
                  "yes $c | tr -d '\\n' | head -c 4096 > /tmp/$c; done")
        taken = len(device.fetched)
        guest.run("i=0; for c in " + " ".join(GUEST_BLOCKS) + "; do "
                  "dd if=/tmp/$c of=/dev/vda bs=4096 seek=$((2*i)) count=1 "
                  "oflag=direct 2>/tmp/dd-$c & i=$((i+1)); done; true")
        device.wait_fetched(taken + len(GUEST_BLOCKS),
                            timeout=self.scaled(30))
        held = sum(map(len, device.held.values()))
        self.log.info("at the cut: %d writes taken, %d held",
                      len(GUEST_BLOCKS), held)
        self.assertEqual(held, len(GUEST_BLOCKS) // 2)
        path = blk.listener_path
        blk.stop()
        fresh = BlkDevice(disk)
        successor = self.make_backend("successor", config, listen=False,
                                      device=fresh)
        successor.listen(path)
        fresh.wait_completed(held, timeout=self.scaled(30))
        self.log.info("the successor resubmitted %s",
                      fresh.resubmitted.get(0, []))
        out = guest.run("wait; cat /tmp/dd-*; dmesg | grep -c 'I/O error' "
                        "|| true", timeout=self.scaled(60))
        self.log.info("the guest's dd and dmesg say:\n%s", out)
        self.assertEqual(out.count("1+0 records out"), len(GUEST_BLOCKS),
                         f"not every write of the guest finished: {out}")
        self.assertEqual(out.strip().splitlines()[-1].strip(), "0",
                         "the guest saw I/O errors")
        for i, letter in enumerate(GUEST_BLOCKS):
            sector = 16 * i
            self.assertEqual(disk.read(sector, 8), letter.encode() * 4096,
                             f"block {i} does not hold its data")
            self.assertEqual([disk.writes.get(sector + k, 0)
                              for k in range(8)], [1] * 8,
                             f"block {i} was not written exactly once")


if __name__ == "__main__":
    main()
