#!/usr/bin/env python3
"""
Frames per second through this project's back-end, next to DPDK's own
vhost-user back-end, with the same driver: DPDK testpmd's virtio-user.

Each round measures both back-ends in turn, in both directions:

* transmit: the driver in ``txonly`` mode; the back-end takes frames (ours
  keeps them in its port; DPDK's vhost PMD forwards in ``rxonly`` mode);
* receive: the driver in ``rxonly`` mode; the back-end sends (ours from a
  port kept full by a feeder thread; DPDK's vhost PMD in ``txonly``).

The count is the driver's own (its port's TX-packets or RX-packets over a
timed window), so both back-ends are measured by the same instrument.  On
two CPUs each testpmd's forwarding thread gets a core of its own
(``--main-lcore``): the driver forwards on CPU 1, DPDK's vhost PMD on CPU 0,
and this process's back-end thread runs where the scheduler puts it (CPU 0
in practice, beside testpmd's idle main thread).  Prints the median of
``--rounds`` windows per configuration and the ratio ours / DPDK's.

    .venv/bin/python scripts/bench_dpdk.py [--rounds 5] [--window 2]
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, Dict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
from avocado_vhost.peers.dpdk import Testpmd, find_testpmd  # noqa: E402
from avocado_vhost.vhost_user import (  # noqa: E402
    BackendConfig, VhostUserBackend)
from avocado_vhost.vhost_user.net import NetDevice, Port  # noqa: E402

FRAME = bytes(range(64))


def testpmd(binary: str, tmp: str, name: str, vdev: str, mode: str,
            main_lcore: int) -> Testpmd:
    pmd = Testpmd(binary, f"{os.path.basename(tmp)}-{name}", vdev,
                  os.path.join(tmp, f"{name}.log"),
                  [f"--forward-mode={mode}"])
    pmd.args.insert(pmd.args.index("--no-pci"), f"--main-lcore={main_lcore}")
    return pmd


def counter(driver: Testpmd, direction: str) -> int:
    text = driver.command("show port stats 0")
    match = re.search(rf"{direction}-packets:\s*(\d+)", text)
    if match is None:
        sys.exit(f"no {direction}-packets in testpmd's output:\n{text}")
    return int(match.group(1))


def window(driver: Testpmd, direction: str, seconds: float) -> float:
    """Frames per second the driver counted over ``seconds``."""
    start_count, start = counter(driver, direction), time.monotonic()
    time.sleep(seconds)
    end_count, end = counter(driver, direction), time.monotonic()
    return (end_count - start_count) / (end - start)


def ours(binary: str, tmp: str, direction: str, seconds: float) -> float:
    port = Port()
    backend = VhostUserBackend("bench", BackendConfig(), NetDevice(port))
    sock = os.path.join(tmp, "ours.sock")
    backend.listen(sock)
    backend.start()
    driver = testpmd(binary, tmp, "driver",
                     f"net_virtio_user0,path={sock}",
                     "txonly" if direction == "TX" else "rxonly", 0)
    stop = threading.Event()

    def feed() -> None:  # keeps frames waiting for the guest's buffers
        batch = [FRAME] * 4096
        while not stop.is_set():
            port.offer(batch)
            backend.poke()
            with port.cond:
                port.cond.wait_for(
                    lambda: len(port.wire) < 8192 or stop.is_set(), 1.0)
    feeder = threading.Thread(target=feed, daemon=True)
    try:
        driver.start()
        backend.wait_rings_started(2, timeout=20)
        driver.command("start")
        if direction == "RX":
            feeder.start()
        return window(driver, direction, seconds)
    finally:
        stop.set()
        with port.cond:
            port.cond.notify_all()
        driver.close()
        backend.stop()
        if feeder.is_alive():
            feeder.join(5)
        os.unlink(sock) if os.path.exists(sock) else None


def dpdks(binary: str, tmp: str, direction: str, seconds: float) -> float:
    sock = os.path.join(tmp, "dpdk.sock")
    device = testpmd(binary, tmp, "vhost", f"net_vhost0,iface={sock}",
                     "rxonly" if direction == "TX" else "txonly", 1)
    driver = testpmd(binary, tmp, "driver", f"net_virtio_user0,path={sock}",
                     "txonly" if direction == "TX" else "rxonly", 0)
    try:
        device.start()
        driver.start()
        device.command("start")
        driver.command("start")
        return window(driver, direction, seconds)
    finally:
        driver.close()
        device.close()
        if os.path.exists(sock):
            os.unlink(sock)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=2.0,
                        help="seconds counted per measurement")
    args = parser.parse_args()
    binary = find_testpmd()
    if binary is None:
        sys.exit("no dpdk-testpmd (Debian package dpdk-dev)")
    runs: Dict[str, Callable[[str, str, str, float], float]] = {
        "this back-end": ours, "DPDK vhost PMD": dpdks}
    samples = Samples()
    cases = [(direction, name) for direction in ("TX", "RX")
             for name in runs]
    tmp = tempfile.mkdtemp(prefix="avh-bench-", dir="/tmp")
    try:
        for number, order in rounds(args.rounds, cases):
            for direction, name in order:
                samples.add(f"{direction} {name}",
                            runs[name](binary, tmp, direction, args.window))
            print(samples.progress(number, "{:,.0f} frames/s"), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmedian of {args.rounds} windows of {args.window}s, 64-byte "
          "frames, driver: testpmd virtio-user")
    for direction, what in (("TX", "driver transmits"),
                            ("RX", "driver receives")):
        mine = f"{direction} this back-end"
        theirs = f"{direction} DPDK vhost PMD"
        print(f"{what:17s} this back-end {samples.median(mine):>12,.0f}/s   "
              f"DPDK vhost PMD {samples.median(theirs):>14,.0f}/s   "
              f"ratio {samples.ratio(mine, theirs):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
