"""Fuzzing the back-end with 10,000 random and mutated messages.

Two kinds of input, interleaved:

* *malformed by construction* (bad version bits, REPLY set, a size wrong for
  the request, an unknown request, a wrong fd count, an oversized payload):
  each one must be reported as an error;
* *well-framed random* messages (any request, a size it accepts, random
  bytes, the fds it expects): anything may happen to them -- an answer, a
  violation, a refusal, an error -- except a crash or a hang.

After every message a GET_FEATURES round trip proves the back-end still
answers (or the connection was closed by the back-end, and a new one is
made).  At the end the back-end is stopped and no fd may be left open.
"""

import os
import random
import time
import unittest

from avocado_vhost.vhost_user import (BackendConfig, ProblemKind,
                                      VhostUserBackend)
from avocado_vhost.vhost_user.error import ConnectionClosed
from avocado_vhost.vhost_user.frontend import FrontEnd
from avocado_vhost.vhost_user.message import (HEADER, MAX_PAYLOAD,
                                              PAYLOAD_TYPES, Request, U64,
                                              MemoryTable, decode_payload,
                                              fd_rule)

from helpers import ALL_PROTOCOL, open_fds

MESSAGES = 10_000
BOUND_SECONDS = 120


def _fds_for(rng, count):
    fds = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            fds.append(os.eventfd(0))
        elif kind == 1:
            fd = os.memfd_create("fuzz")
            os.ftruncate(fd, rng.choice((0, 4096, 1 << 16)))
            fds.append(fd)
        else:
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
    return fds


class Fuzz(unittest.TestCase):

    def setUp(self):
        self.fds_before = open_fds()
        self.rng = random.Random(int(os.environ.get("FUZZ_SEED", "1")))
        self.backend = VhostUserBackend("fuzz", BackendConfig(
            protocol_features=int(ALL_PROTOCOL), max_rings=8,
            config=bytes(64), message_timeout=0.5))
        self.backend.start()
        self.fe = None
        self.reconnect()

    def reconnect(self):
        if self.fe is not None:
            self.fe.close()
        self.fe, conn = FrontEnd.pair(timeout=5)
        self.backend.adopt(conn)
        self.fe.call(Request.GET_FEATURES)
        self.fe.call(Request.GET_PROTOCOL_FEATURES)
        self.fe.send(Request.SET_PROTOCOL_FEATURES, U64(int(ALL_PROTOCOL)))

    def tearDown(self):
        self.fe.close()
        self.backend.stop()
        self.assertEqual(open_fds() - self.fds_before, set(),
                         "fds left open after the fuzz run")

    # --- generators ---------------------------------------------------------
    def malformed(self):
        rng = self.rng
        request = rng.choice([r for r in Request if r is not Request.NONE])
        sizes = PAYLOAD_TYPES[request].sizes()
        size = rng.choice(sizes)
        flags, nfds = 1, 0
        kind = rng.choice(("version", "reply", "size", "unknown", "fds",
                           "oversize"))
        if kind == "version":
            flags = rng.choice((0, 2, 3))
        elif kind == "reply":
            flags = 1 | 4
        elif kind == "size":
            bad = [s for s in range(0, 300) if s not in sizes]
            if not bad:
                kind, request = "unknown", 200
            else:
                size = rng.choice(bad)
        elif kind == "unknown":
            request = rng.choice((0, 44, 77, 1 << 16, 0xFFFFFFFF))
        elif kind == "fds":
            # A count that no rule allows for this request.
            payload = bytes(size)
            try:
                _, decoded = decode_payload(request, payload)
                allowed = fd_rule(request, decoded).allowed
            except Exception:  # an undecodable payload is malformed anyway
                allowed = ()
            nfds = next(n for n in range(1, 12) if n not in allowed)
        payload = bytes(rng.getrandbits(8) for _ in range(size))
        if request == Request.SET_MEM_TABLE and kind in ("version", "reply",
                                                          "fds"):
            payload = MemoryTable.HEAD.pack(0, 0) + payload[8:]
        if kind == "oversize":
            return HEADER.pack(int(request), 1, MAX_PAYLOAD + 1), [], kind
        return HEADER.pack(int(request), flags, size) + payload, \
            _fds_for(rng, nfds), kind

    def well_framed(self):
        rng = self.rng
        # GET_FEATURES is the barrier: its replies must be the barrier's.
        request = rng.choice([r for r in Request if r not in (
            Request.NONE, Request.GET_FEATURES)])
        ptype = PAYLOAD_TYPES[request]
        size = rng.choice(ptype.sizes()[:64])
        payload = bytearray(rng.getrandbits(8) for _ in range(size))
        if request == Request.SET_MEM_TABLE:
            payload[0:4] = rng.randrange(0, 3).to_bytes(4, "little")
        nfds = 0
        try:
            _, decoded = decode_payload(request, bytes(payload))
            nfds = rng.choice(fd_rule(request, decoded).allowed)
        except Exception:
            pass
        flags = rng.choice((1, 1, 9))
        return HEADER.pack(int(request), flags, size) + bytes(payload), \
            _fds_for(rng, nfds), "random"

    # --- the run ------------------------------------------------------------
    def barrier(self):
        """True if the back-end still answers on this connection."""
        try:
            self.fe.send(Request.GET_FEATURES)
            while True:
                request, _, _ = self.fe.recv()
                if request == Request.GET_FEATURES:
                    return True
        except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
            return False

    def test_fuzz(self):
        start = time.monotonic()
        counts = {}
        for i in range(MESSAGES):
            self.assertLess(time.monotonic() - start, BOUND_SECONDS,
                            f"fuzz run too slow at message {i}")
            make = self.malformed if i % 2 else self.well_framed
            data, fds, kind = make()
            errors_before = self.backend.records.errors_total
            try:
                self.fe.send_raw(data, fds)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                for fd in fds:
                    os.close(fd)
            alive = self.barrier()
            counts[kind] = counts.get(kind, 0) + 1
            if kind != "random":
                self.backend.wait_for(
                    lambda: self.backend.records.errors_total > errors_before,
                    f"an error for malformed message {i} ({kind}: "
                    f"{data[:24].hex()})", timeout=5)
            if not alive:
                self.backend.wait_disconnected(timeout=5)
                self.reconnect()
        elapsed = time.monotonic() - start
        # The thread survived everything and still answers.
        self.assertTrue(self.barrier())
        self.assertTrue(self.backend.thread_alive)
        self.assertFalse(any("crashed" in e.text for e in self.backend.errors),
                         [e for e in self.backend.errors if "crashed" in e.text])
        print(f"fuzz: {MESSAGES} messages in {elapsed:.1f}s, "
              f"{self.backend.connections} connections, "
              f"{self.backend.records.errors_total} errors, "
              f"{self.backend.records.total(ProblemKind.VIOLATION)} "
              f"violations, {self.backend.records.total(ProblemKind.REFUSAL)}"
              f" refusals; kinds {counts}")


if __name__ == "__main__":
    unittest.main()
