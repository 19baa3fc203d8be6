"""The fuzzer's pieces that need no back-end: reproducer files, delta
debugging, seeded moves; the kit's registry and placeholders."""

import os
import struct
import tempfile
import unittest

from avocado_vhost.fuzz.campaign import FINDINGS
from avocado_vhost.fuzz.generate import Generator
from avocado_vhost.fuzz.minimise import ddmin
from avocado_vhost.fuzz.step import FdSpec, Step, dump, load
from avocado_vhost.fuzz import findings
from avocado_vhost.peers.external.backends import BACKENDS, DISK_SIZE, fill
from avocado_vhost.vhost_user.message import Request

RING_REQUESTS = {Request.SET_VRING_NUM, Request.SET_VRING_BASE,
                 Request.SET_VRING_ADDR, Request.GET_VRING_BASE,
                 Request.SET_VRING_ENABLE}


class Reproducers(unittest.TestCase):

    def test_a_reproducer_file_plays_back_the_same_steps(self):
        steps = [Step(request=5, payload=b"\x01\x02", size=9999,
                      fds=(FdSpec("region", 2), FdSpec("memfd", 4096),
                           FdSpec("socket")), why="odd"),
                 Step(kind="kick", ring=3),
                 Step(kind="poke", region=1, offset=64, data=b"\xff" * 3),
                 Step(kind="connect")]
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "r.jsonl")
            dump(path, steps, {"outcome": "crash"})
            header, again = load(path)
        self.assertEqual(again, steps)
        self.assertEqual(header["outcome"], "crash")

    def test_the_header_that_lies_about_the_size_is_on_the_wire(self):
        wire = Step(request=10, payload=b"abcd", size=4097).wire()
        self.assertEqual(struct.unpack("=III", wire[:12]), (10, 1, 4097))
        self.assertEqual(wire[12:], b"abcd")

    def test_every_kept_reproducer_loads_and_is_in_the_registry(self):
        named = {r for d in findings.FINDINGS for r in d.reproducers}
        folder = os.path.dirname(findings.reproducer_path("x"))
        self.assertEqual(named, set(os.listdir(folder)))
        for name in named:
            header, steps = load(findings.reproducer_path(name))
            self.assertIn(header["outcome"], FINDINGS)
            self.assertTrue(steps)


class DeltaDebugging(unittest.TestCase):

    def test_the_two_steps_that_matter_are_what_is_left(self):
        tries = []

        def fails(candidate):
            tries.append(candidate)
            return 13 in candidate and 71 in candidate
        self.assertEqual(ddmin(list(range(100)), fails), [13, 71])
        self.assertLess(len(tries), 100)

    def test_the_budget_stops_it_with_the_best_so_far(self):
        best = ddmin(list(range(100)), lambda c: 50 in c, max_tries=3)
        self.assertIn(50, best)
        self.assertLess(len(best), 100)


class Moves(unittest.TestCase):

    def moves(self, seed, rings=None, count=500):
        generator = Generator(seed, 0x140000000, 0x8FFF, rings)
        return generator.opening() + [generator.next()
                                      for _ in range(count)]

    def test_the_same_seed_gives_the_same_moves(self):
        self.assertEqual(self.moves(7), self.moves(7))
        self.assertNotEqual(self.moves(7), self.moves(8))

    def test_moves_go_past_the_ring_count_unless_told_not_to(self):
        def indexes(steps):
            """Ring indexes of the ring requests (not the random bytes)."""
            return {struct.unpack_from("=I", s.payload)[0] for s in steps
                    if s.kind == "msg" and s.request in RING_REQUESTS
                    and len(s.payload) in (8, 40)
                    and "random bytes" not in s.why}
        self.assertTrue(any(i >= 8 for i in indexes(self.moves(1))))
        self.assertEqual({i for i in indexes(self.moves(1, rings=2))
                          if i >= 2}, set())

    def test_the_opening_is_what_qemu_says_first(self):
        opening = Generator(1, 1 << 30, 0x3).opening()
        self.assertEqual([s.request for s in opening],
                         [Request.SET_OWNER, Request.GET_FEATURES,
                          Request.GET_PROTOCOL_FEATURES,
                          Request.SET_PROTOCOL_FEATURES,
                          Request.SET_FEATURES])


class Kit(unittest.TestCase):

    def test_placeholders_are_filled_and_the_disk_and_share_made(self):
        with tempfile.TemporaryDirectory() as folder:
            command = fill("x -s {socket} -b {disk} -d {share} -p {port} "
                           "-q {queues} -n {name}", "/s.sock", "n1", folder,
                           queues=2)
            disk = os.path.join(folder, "n1.img")
            self.assertEqual(os.path.getsize(disk), DISK_SIZE)
            self.assertTrue(os.path.isdir(os.path.join(folder, "share")))
        self.assertIn(f"-b {disk}", command)
        self.assertIn("-q 2 -n n1", command)
        self.assertNotIn("{", command)

    def test_a_finding_matches_by_request_or_by_signal(self):
        match = findings.match
        self.assertEqual(match("qsd", "crash", "SET_VRING_BASE").id,
                         "libvhost-user-vring-index-unchecked")
        self.assertIsNone(match("dpdk", "crash", "SET_VRING_BASE"))
        self.assertEqual(match("vhost-user-blk", "crash", "GET_FEATURES",
                               "killed by SIGPIPE").id,
                         "libvhost-user-sigpipe")
        self.assertIsNone(match("qsd", "crash", "GET_FEATURES",
                                "killed by SIGPIPE"))
        self.assertIsNone(match("qsd", "hang", "SET_VRING_BASE"))

    def test_every_defect_names_back_ends_the_kit_knows(self):
        for defect in findings.FINDINGS:
            self.assertTrue(set(defect.backends) <= set(BACKENDS), defect.id)


if __name__ == "__main__":
    unittest.main()
