#!/usr/bin/env python3
"""
Upstream's own vhost-user tests against this suite's equivalents, on the
same QEMU binary, alternately.

Upstream: ``tests/qtest/qos-test`` of the QEMU build (``scripts/build-qemu``
builds it), one process per vhost-user path, as QEMU's ``meson test`` runs
them.  The suite: the equivalent test of each path, as one Avocado job
(``avocado run``), and the same tests' own durations inside that job
(Avocado's per-test overhead excluded).  Each round runs both, in turn;
prints the median of each and the ratios suite / upstream.

    .venv/bin/python scripts/bench_upstream.py [--rounds 5] [--build DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402

_NET = ("/x86_64/pc/i440FX-pcihost/pci-bus-pc/pci-bus/virtio-net-pci/"
        "virtio-net/virtio-net-tests/vhost-user/")
_GPIO = ("/x86_64/pc/i440FX-pcihost/pci-bus-pc/pci-bus/vhost-user-gpio-pci/"
         "vhost-user-gpio/vhost-user-gpio-tests/")
#: upstream qos-test path -> the suite's test that checks the same thing
PAIRS: List[Tuple[str, str]] = [
    (_NET + "migrate",
     "test_migrate.py:Migrate.test_a_logged_page_reaches_the_destination"),
    (_NET + "reconnect", "test_reconnect.py:Reconnect.test_reconnect"),
    (_NET + "connect-fail", "test_reconnect.py:Reconnect.test_connect_fail"),
    (_NET + "flags-mismatch",
     "test_reconnect.py:Reconnect.test_flags_mismatch"),
    (_NET + "multiqueue", "test_multiqueue.py:Multiqueue.test_two_pairs"),
    (_NET + "read-guest-mem/memfile",
     "test_read_guest_mem.py:ReadGuestMem.test_memfile"),
    (_NET + "read-guest-mem/shm", "test_read_guest_mem.py:ReadGuestMem.test_shm"),
    (_NET + "read-guest-mem/memfd",
     "test_read_guest_mem.py:ReadGuestMem.test_read_guest_mem"),
    (_GPIO + "read-guest-mem/memfile", "test_devices.py:Devices.test_gpio"),
]


def upstream(build: str) -> float:
    """All upstream paths, one qos-test process each; wall seconds."""
    env = dict(os.environ, QTEST_QEMU_BINARY=f"{build}/qemu-system-x86_64")
    start = time.monotonic()
    for path, _ in PAIRS:
        proc = subprocess.run([f"{build}/tests/qtest/qos-test", "-p", path],
                              env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd=build,
                              timeout=300, check=False)
        if proc.returncode != 0:
            sys.exit(f"upstream {path} failed:\n{proc.stdout.decode()[-2000:]}")
    return time.monotonic() - start


def suite(build: str) -> Tuple[float, float]:
    """The suite's equivalents as one Avocado job: (wall seconds, sum of
    the tests' own times)."""
    env = dict(os.environ,
               QEMU_TEST_QEMU_BINARY=f"{build}/qemu-system-x86_64")
    # "$": Avocado matches a method name as a pattern, and test_reconnect
    # alone would also run test_reconnect_qemu_client and two more
    refs = [os.path.join(ROOT, "tests/functional", t) + "$" for _, t in PAIRS]
    with tempfile.TemporaryDirectory(prefix="avh-bench-") as results:
        start = time.monotonic()
        proc = subprocess.run(
            [os.path.join(ROOT, ".venv/bin/avocado"), "run",
             "--job-results-dir", results, *refs],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=600, check=False)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit(f"suite failed:\n{proc.stdout.decode()[-3000:]}")
        with open(os.path.join(results, "latest", "results.json"),
                  encoding="utf-8") as src:
            tests = json.load(src)["tests"]
    if len(tests) != len(PAIRS):
        sys.exit(f"the suite ran {len(tests)} tests for {len(PAIRS)} paths")
    return wall, sum(t["time_elapsed"] for t in tests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--build", default=None,
                        help="QEMU build directory (default: scripts/build-qemu)")
    args = parser.parse_args()
    build = args.build or subprocess.run(
        [os.path.join(HERE, "build-qemu")], stdout=subprocess.PIPE,
        check=True).stdout.decode().strip().splitlines()[-1]
    samples = Samples()
    for number, order in rounds(args.rounds, ["upstream", "suite"]):
        for case in order:
            if case == "upstream":
                samples.add("upstream", upstream(build))
            else:
                wall, own = suite(build)
                samples.add("suite", wall)
                samples.add("tests", own)
        print(samples.progress(number, "{:.2f} s"), flush=True)
    print(f"\n{len(PAIRS)} vhost-user paths, QEMU build {build}, median of "
          f"{args.rounds}:")
    print(f"  upstream qos-test, one process each: "
          f"{samples.median('upstream'):7.2f} s")
    print(f"  suite, one Avocado job:              "
          f"{samples.median('suite'):7.2f} s  "
          f"({samples.ratio('suite', 'upstream'):.2f}x)")
    print(f"  suite, the tests alone:              "
          f"{samples.median('tests'):7.2f} s  "
          f"({samples.ratio('tests', 'upstream'):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
