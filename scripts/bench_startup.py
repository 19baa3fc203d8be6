#!/usr/bin/env python3
"""
Time from QEMUMachine.launch() to all rings started, for one VM.

Two ways to bring the vhost-user device up, measured in the same run:

* ``driver``: a halting BIOS, the test drives virtio-pci over qtest (what the
  suite does);
* ``firmware`` (the baseline): SeaBIOS and iPXE boot and probe the NIC.

Prints the median of each and their ratio.

    .venv/bin/python scripts/bench_startup.py [--runs N] [--qemu-bin PATH]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
from avocado_vhost.peers.qemu.binary import find_binary  # noqa: E402
from avocado_vhost.tools.standalone import standalone_vm  # noqa: E402
from avocado_vhost.vhost_user import VhostUserBackend  # noqa: E402


def one_start(binary: str, firmware: bool) -> float:
    backend = VhostUserBackend("bench")
    with standalone_vm(backend, binary, accel="tcg", firmware=firmware,
                       qtest=not firmware, launch=False) as vm:
        start = time.monotonic()
        vm.launch()
        if not firmware:
            vm.drive_device(queues=2)
        backend.wait_rings_started(2, timeout=60)
        return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--firmware-runs", type=int, default=3)
    parser.add_argument("--qemu-bin", default=None)
    args = parser.parse_args()
    binary = find_binary(args.qemu_bin)
    samples = Samples()
    for number, order in rounds(args.runs, ["driver", "firmware"]):
        for case in order:
            if case == "driver" or samples.count(case) < args.firmware_runs:
                samples.add(case, one_start(binary, case == "firmware"))
        print(samples.progress(number, "{:.3f} s"), flush=True)
    driver = samples.values["driver"]
    print(f"launch -> 2 rings started, test drives the device: "
          f"median {samples.median('driver') * 1000:7.1f} ms of {args.runs} "
          f"(min {min(driver) * 1000:.1f}, max {max(driver) * 1000:.1f})")
    print(f"launch -> 2 rings started, SeaBIOS + iPXE (baseline): "
          f"median {samples.median('firmware') * 1000:7.1f} ms of "
          f"{samples.count('firmware')}")
    print(f"ratio (baseline / driver): "
          f"{samples.ratio('firmware', 'driver'):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
