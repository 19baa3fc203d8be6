#!/usr/bin/env python3
"""
Guest boot to the ready marker, TCG: the kernel the suite boots against the
kernel as Debian ships it.

    .venv/bin/python scripts/bench_boot.py [--runs N] [--arch x86_64|aarch64]
        [--qemu-bin PATH]

From QEMU's start to the line ``/init`` prints once the virtio-net driver
is loaded (``AVH-GUEST-READY``), with the suite's assets, one vCPU, 256
MiB, a virtio-net device (no back-end: the driver probes it all the same).
On x86_64 the baseline is Debian's bzImage through SeaBIOS; the suite
boots the ELF inside it through PVH (``avocado_vhost/peers/guest/vmlinux.py``).
Both with and without ``cryptomgr.notests`` (the kernel's crypto
self-tests, which the suite skips: ``avocado_vhost/peers/guest/boot.py``).
They alternate, run by run; medians and their ratio.  aarch64 has no
bzImage (its Image is decompressed by QEMU on the host).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from avocado_vhost.tools.bench import Samples, rounds  # noqa: E402
from avocado_vhost.peers.guest import assets as guest_assets  # noqa: E402
from avocado_vhost.peers.guest.assets import READY  # noqa: E402
from avocado_vhost.peers.guest.boot import KERNEL_ARGS  # noqa: E402

#: the command line before the crypto self-tests were skipped
WITH_SELF_TESTS = KERNEL_ARGS.replace(" cryptomgr.notests", "")
MACHINE = {"x86_64": ["-M", "pc"],
           "aarch64": ["-M", "virt", "-cpu", "cortex-a57"]}


def boot(qemu: str, arch: str, kernel: str, initrd: str, console: str,
         args: str = KERNEL_ARGS, timeout: float = 120.0) -> float:
    """Seconds from QEMU's start to the ready marker."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [qemu, *MACHINE[arch], "-accel", "tcg", "-m", "256", "-smp", "1",
         "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
         "-kernel", kernel, "-initrd", initrd,
         "-append", f"console={console} {args}",
         "-device", "virtio-net-pci,romfile="],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen = b""
    try:
        while time.monotonic() - start < timeout:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            seen = (seen + chunk)[-8192:]
            if READY.encode() in seen:
                return time.monotonic() - start
        raise SystemExit(f"no {READY} from {kernel} within {timeout} s; "
                         f"console tail: {seen[-600:]!r}")
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arch", choices=sorted(MACHINE), default="x86_64")
    parser.add_argument("--qemu-bin", default=None)
    args = parser.parse_args()
    qemu = args.qemu_bin or shutil.which(f"qemu-system-{args.arch}")
    if not qemu:
        raise SystemExit(f"no qemu-system-{args.arch}")
    made = guest_assets.load(args.arch)
    # name -> (kernel, command line)
    kernels = {"suite": (made.kernel, KERNEL_ARGS),
               "with self-tests": (made.kernel, WITH_SELF_TESTS)}
    debian = os.path.join(os.path.dirname(made.kernel), "vmlinuz")
    if debian != made.kernel:
        kernels["debian bzImage"] = (debian, WITH_SELF_TESTS)
    samples = Samples()
    for number, order in rounds(args.runs, list(kernels)):
        for name in order:
            kernel, append = kernels[name]
            samples.add(name, boot(qemu, args.arch, kernel, made.initrd,
                                   made.target.console, append))
        print(samples.progress(number, "{:.2f} s"), flush=True)
    print(f"\n{args.arch}, {guest_assets.describe(made)}, {qemu}, "
          f"median of {args.runs}:")
    for name in kernels:
        print(f"  {name:15} {samples.median(name):5.2f} s to {READY} "
              f"({samples.ratio(name, 'suite'):.2f}x of the suite's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
