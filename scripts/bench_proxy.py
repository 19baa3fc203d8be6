#!/usr/bin/env python3
"""
What the conformance proxy costs, measured against the same back-end
reached directly, in the same run.

* Round trips: a scripted front-end sends GET_FEATURES and waits for the
  reply, N times, to the in-process back-end directly and through the
  proxy (which decodes, judges and relays both ways).
* Frames: DPDK testpmd's virtio-user transmits (txonly) to the in-process
  back-end directly and through the proxy.  The proxy carries only the
  protocol -- the rings are in shared memory -- so the rates should match.

Medians of ``--rounds`` alternating measurements; the ratio proxied/direct.

    .venv/bin/python scripts/bench_proxy.py [--rounds 5]
"""

import argparse
import contextlib
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from typing import Iterator, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
from avocado_vhost.peers.dpdk import Testpmd, find_testpmd  # noqa: E402
from avocado_vhost.vhost_user import (  # noqa: E402
    BackendConfig, Request, VhostUserBackend)
from avocado_vhost.vhost_user.frontend import FrontEnd  # noqa: E402
from avocado_vhost.vhost_user.net import NetDevice, Port  # noqa: E402
from avocado_vhost.vhost_user.proxy import Proxy  # noqa: E402


@contextlib.contextmanager
def endpoint(tmp: str, through_proxy: bool,
             port: Optional[Port] = None) -> Iterator[Tuple[
                 VhostUserBackend, str]]:
    """The in-process back-end (with a data path on ``port``), and the
    socket a front-end connects to: the back-end's, or a proxy's in front
    of it.  Everything is stopped and the sockets removed afterwards."""
    backend = VhostUserBackend("b", BackendConfig(),
                               NetDevice(port) if port else None)
    backend.listen(os.path.join(tmp, "b.sock"))
    backend.start()
    proxy = None
    path = os.path.join(tmp, "b.sock")
    if through_proxy:
        proxy = Proxy(os.path.join(tmp, "p.sock"), path).start()
        path = os.path.join(tmp, "p.sock")
    try:
        yield backend, path
    finally:
        if proxy is not None:
            proxy.stop()
        backend.stop()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))


def round_trips(tmp: str, through_proxy: bool, count: int) -> float:
    with endpoint(tmp, through_proxy) as (_, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        front = FrontEnd(sock)
        try:
            front.call(Request.GET_FEATURES)  # connected on both legs
            start = time.perf_counter()
            for _ in range(count):
                front.call(Request.GET_FEATURES)
            return count / (time.perf_counter() - start)
        finally:
            front.close()


def frames(tmp: str, through_proxy: bool, seconds: float) -> float:
    binary = find_testpmd()
    assert binary is not None
    with endpoint(tmp, through_proxy, Port()) as (backend, path):
        pmd = Testpmd(binary, f"{os.path.basename(tmp)}-pmd",
                      f"net_virtio_user0,path={path}",
                      os.path.join(tmp, "pmd.log"),
                      ["--forward-mode=txonly"])
        pmd.args.insert(pmd.args.index("--no-pci"), "--main-lcore=0")
        try:
            pmd.start()
            backend.wait_rings_started(2, timeout=20)
            pmd.command("start")
            first = _tx(pmd)
            t0 = time.monotonic()
            time.sleep(seconds)  # a measuring window, not a wait
            return (_tx(pmd) - first) / (time.monotonic() - t0)
        finally:
            pmd.close()


def _tx(pmd: Testpmd) -> int:
    match = re.search(r"TX-packets:\s*(\d+)", pmd.command("show port stats 0"))
    assert match is not None
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000,
                        help="round trips per measurement")
    parser.add_argument("--window", type=float, default=2.0,
                        help="seconds of traffic per frame measurement")
    args = parser.parse_args()
    samples = Samples()
    tmp = tempfile.mkdtemp(prefix="avh-bench-")
    try:
        for number, order in rounds(args.rounds, ["direct", "proxy"]):
            for key in order:
                via = key == "proxy"
                samples.add(f"rt {key}", round_trips(tmp, via, args.count))
                if find_testpmd() is not None:
                    samples.add(f"fr {key}", frames(tmp, via, args.window))
            print(samples.progress(number, "{:,.0f}/s"), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmedian of {args.rounds}:")
    print(f"round trips (GET_FEATURES): direct "
          f"{samples.median('rt direct'):,.0f}/s, through the proxy "
          f"{samples.median('rt proxy'):,.0f}/s, ratio "
          f"{samples.ratio('rt proxy', 'rt direct'):.2f}x")
    if "fr direct" in samples:
        print(f"frames (testpmd txonly, 64 B): direct "
              f"{samples.median('fr direct'):,.0f}/s, through the proxy "
              f"{samples.median('fr proxy'):,.0f}/s, ratio "
              f"{samples.ratio('fr proxy', 'fr direct'):.2f}x (the data "
              "path does not pass through the proxy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
