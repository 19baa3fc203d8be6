#!/usr/bin/env python3
"""
The back-end's memory after many messages, with its bounds in force.

A back-end that keeps every message it traced and every problem it
recorded grows without bound within one life (a soak, a proxy in front of
a long-running back-end).  This sends N valid messages (SET_VRING_ENABLE,
no reply) and N malformed ones (SET_OWNER with a payload: one error each)
to a back-end thread on a socketpair, and prints the process's resident
memory before and after, next to what the trace and the records kept and
dropped.  The baseline is the same back-end after its first 10,000
messages of each kind, measured in the same run.

    .venv/bin/python scripts/bench_memory.py [--messages 1000000]
"""

import argparse
import gc
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from avocado_vhost.vhost_user import (BackendConfig, ProblemKind,  # noqa: E402
                                      VhostUserBackend)
from avocado_vhost.vhost_user.frontend import FrontEnd  # noqa: E402
from avocado_vhost.vhost_user.message import (  # noqa: E402
    Request, U64, VringState, encode)


def rss_mib() -> float:
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pump(fe: FrontEnd, data: bytes, count: int) -> None:
    """``count`` copies of one message, in large writes, then a round trip
    (everything before it is handled)."""
    batch = data * 1000
    for _ in range(count // 1000):
        fe.send_raw(batch)
    fe.send_raw(data * (count % 1000))
    fe.call(Request.GET_FEATURES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    backend = VhostUserBackend("bench", BackendConfig(max_rings=8)).start()
    fe, conn = FrontEnd.pair()
    backend.adopt(conn)
    fe.call(Request.GET_FEATURES)
    fe.send(Request.SET_OWNER)
    valid = encode(Request.SET_VRING_ENABLE, VringState(0, 1))
    bad = encode(Request.SET_OWNER, U64(1))
    try:
        pump(fe, valid, 10_000)
        pump(fe, bad, 10_000)
        base = rss_mib()
        print(f"baseline after 10,000 + 10,000 messages: {base:.1f} MiB")
        for name, data in (("valid", valid), ("malformed", bad)):
            start = time.monotonic()
            pump(fe, data, args.messages)
            took = time.monotonic() - start
            now = rss_mib()
            records = backend.records
            print(f"+{args.messages:,} {name:9} messages in {took:5.1f}s: "
                  f"{now:.1f} MiB ({now - base:+.1f} MiB against the "
                  f"baseline); trace keeps {len(backend.trace.entries):,} "
                  f"(dropped {backend.trace.dropped:,}); errors kept "
                  f"{len(records.errors):,} of "
                  f"{records.total(ProblemKind.ERROR):,}")
    finally:
        fe.close()
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
