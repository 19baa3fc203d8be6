#!/usr/bin/env python3
"""
What a failing test costs, against the same test passing.

    .venv/bin/python scripts/bench_failure.py [--rounds N] [--qemu-bin PATH]

One scenario -- a back-end, QEMU, the test's driver to DRIVER_OK, eight
frames transmitted and checked at the back-end -- run four ways, each as
an Avocado job of its own (one task), the ways alternated within each
round:

- ``pass``: as written;
- ``assertion``: the check compares against a wrong count (FAIL);
- ``qemu-killed``: QEMU is SIGKILLed before the check (FAIL: the driver's
  next qtest command finds it gone -- QEMU, the thing under test, died);
- ``qemu-stopped``: QEMU is SIGSTOPped before the check, the hang a test
  can see (FAIL: the qtest answer never comes; the link asks between
  slices whether QEMU can still answer,
  :data:`avocado_vhost.peers.qemu.qtest.SLICE`).

Prints, per way, the median of the test's own time and of the job's wall
time, and the difference to ``pass`` measured in the same run.  The goal
(issue 24): a failure costs at most about a second more than a pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402

KINDS = ("pass", "assertion", "qemu-killed", "qemu-stopped")
EXPECTED = {"pass": "PASS", "assertion": "FAIL", "qemu-killed": "FAIL",
            "qemu-stopped": "FAIL"}

TEST = textwrap.dedent('''
    import os
    import signal

    from avocado_vhost.peers.qemu.driver import NET_HDR
    from avocado_vhost.test import VhostUserTest, main
    from avocado_vhost.vhost_user.net import NetDevice, Port

    FRAMES = [bytes([i]) * 60 for i in range(8)]


    class FailureCost(VhostUserTest):
        """:avocado: enable"""

        def scenario(self, sabotage=None, expect=len(FRAMES)):
            port = Port()
            backend = self.make_backend("backend", device=NetDevice(port))
            vm = self.make_vm("vm", backend.listener_path)
            self.start_vm(vm, backend)
            txq = vm.net_queues()[1]
            if sabotage:
                os.kill(vm.pid, sabotage)
            txq.post_out([NET_HDR + f for f in FRAMES])
            port.wait_sent(len(FRAMES), timeout=self.scaled(10))
            self.assertEqual(len(port.sent), expect)

        def test_pass(self):
            self.scenario()

        def test_assertion(self):
            self.scenario(expect=len(FRAMES) + 1)

        def test_qemu_killed(self):
            self.scenario(sabotage=signal.SIGKILL)

        def test_qemu_stopped(self):
            self.scenario(sabotage=signal.SIGSTOP)


    if __name__ == "__main__":
        main()
''')


def run_one(test_file: str, kind: str, qemu_bin: Optional[str]
            ) -> Tuple[float, float]:
    """One job running one way: (test seconds, job wall seconds)."""
    method = "test_" + kind.replace("-", "_")
    extra = ["-p", f"qemu_bin={qemu_bin}"] if qemu_bin else []
    with tempfile.TemporaryDirectory(prefix="avh-fail-") as results:
        start = time.monotonic()
        subprocess.run(
            [os.path.join(ROOT, ".venv/bin/avocado"), "run",
             "--job-results-dir", results, "--max-parallel-tasks", "1",
             *extra, f"{test_file}:FailureCost.{method}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
            check=False)
        wall = time.monotonic() - start
        with open(os.path.join(results, "latest", "results.json"),
                  encoding="utf-8") as src:
            (test,) = json.load(src)["tests"]
    if test["status"] != EXPECTED[kind]:
        sys.exit(f"{kind}: expected {EXPECTED[kind]}, got {test['status']}:"
                 f" {test.get('fail_reason')}")
    return float(test["time_elapsed"]), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--qemu-bin", default=None)
    args = parser.parse_args()
    samples = Samples()
    with tempfile.TemporaryDirectory(prefix="avh-failtest-") as tmp:
        test_file = os.path.join(tmp, "test_failure_cost.py")
        with open(test_file, "w", encoding="utf-8") as out:
            out.write(TEST)
        for number, order in rounds(args.rounds, KINDS):
            for kind in order:
                test, wall = run_one(test_file, kind, args.qemu_bin)
                samples.add(f"{kind} test", test)
                samples.add(f"{kind} job", wall)
            print(samples.progress(number, "{:.2f} s"), flush=True)
    print(f"failure cost, {args.rounds} round(s), medians "
          "(test's own time; the job's wall time):")
    for kind in KINDS:
        print(f"  {kind:13} {EXPECTED[kind]:5}  "
              f"test {samples.median(f'{kind} test'):6.2f} s "
              f"({samples.difference(f'{kind} test', 'pass test'):+5.2f})  "
              f"job {samples.median(f'{kind} job'):6.2f} s "
              f"({samples.difference(f'{kind} job', 'pass job'):+5.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
