#!/usr/bin/env python3
"""
Request round trips per second through the back-end, next to a bare
UNIX-socket ping-pong measured in the same run.

Both sides are Python threads on a socketpair; the bare server only reads
12 bytes and writes 20 back, the back-end decodes, checks conformance,
traces and answers GET_FEATURES.  The ratio (bare rate / back-end rate) is
what the back-end's protocol handling costs per round trip.

    .venv/bin/python scripts/bench_roundtrip.py [--count N] [--runs K]
"""

import argparse
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
from avocado_vhost.vhost_user import VhostUserBackend  # noqa: E402
from avocado_vhost.vhost_user.frontend import FrontEnd  # noqa: E402
from avocado_vhost.vhost_user.message import (HEADER, Request,  # noqa: E402
                                              encode)


def _client_loop(sock: socket.socket, count: int) -> float:
    """The same minimal client for both servers: send a GET_FEATURES
    request, read the 20-byte reply."""
    request = encode(Request.GET_FEATURES)
    start = time.perf_counter()
    for _ in range(count):
        sock.sendall(request)
        got = 0
        while got < 20:
            got += len(sock.recv(20 - got))
    return count / (time.perf_counter() - start)


def bare(count: int) -> float:
    """Round trips per second against a minimal ping-pong server thread."""
    a, b = socket.socketpair()
    reply = HEADER.pack(1, 5, 8) + bytes(8)

    def serve() -> None:
        while True:
            data = b.recv(12)
            if not data:
                return
            b.sendall(reply)
    server = threading.Thread(target=serve)
    server.start()
    rate = _client_loop(a, count)
    a.close()
    server.join()
    b.close()
    return rate


def through_backend(count: int) -> float:
    """Round trips per second against the back-end thread."""
    backend = VhostUserBackend("bench").start()
    fe, conn = FrontEnd.pair()
    backend.adopt(conn)
    fe.call(Request.GET_FEATURES)
    rate = _client_loop(fe.sock, count)
    fe.close()
    backend.stop()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    samples = Samples()
    measure = {"bare": bare, "back-end": through_backend}
    for number, order in rounds(args.runs, list(measure)):
        for case in order:  # alternated: both see the same noise
            samples.add(case, measure[case](args.count))
    b, v = samples.median("bare"), samples.median("back-end")
    print(f"bare UNIX-socket ping-pong : {b:10.0f} round trips/s (median of "
          f"{args.runs} x {args.count})")
    print(f"through the back-end       : {v:10.0f} round trips/s")
    print(f"cost ratio (bare / back-end): "
          f"{samples.ratio('bare', 'back-end'):.2f}x  "
          f"(per round trip: {1e6 / b:.1f} us vs {1e6 / v:.1f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
