"""
Finding the QEMU under test and probing what it can do.

The binary comes from, in order: the test parameter ``qemu_bin``, the
environment variable ``QEMU_TEST_QEMU_BINARY`` (QEMU's own CI convention),
then ``qemu-system-x86_64`` on PATH (Debian's, installed by ``setup.sh``).

Capabilities are probed by asking the binary (``-device help``,
``-object help``, ``-accel help``, ``-chardev help``), never guessed from
its version number: distributions configure features in and out.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import FrozenSet, Optional

__all__ = ["QemuBinaryError", "Capabilities", "find_binary", "probe",
           "ENV_BINARY", "DEFAULT_NAME"]

ENV_BINARY = "QEMU_TEST_QEMU_BINARY"
DEFAULT_NAME = "qemu-system-x86_64"


class QemuBinaryError(Exception):
    """The QEMU binary is missing or is not an x86_64 system emulator."""


@dataclass(frozen=True)
class Capabilities:
    """What one QEMU binary offers, as it reports it."""

    path: str
    version: str
    devices: FrozenSet[str]
    objects: FrozenSet[str]
    accels: FrozenSet[str]
    chardev_options: str

    def has_device(self, name: str) -> bool:
        return name in self.devices

    def has_object(self, name: str) -> bool:
        return name in self.objects

    def has_accel(self, name: str) -> bool:
        return name in self.accels

    @property
    def reconnect_ms(self) -> bool:
        """Whether socket chardevs take ``reconnect-ms`` (QEMU 9.2+)."""
        return "reconnect-ms" in self.chardev_options


def find_binary(param: Optional[str] = None) -> str:
    """Resolve the QEMU binary to test.

    :param param: the ``qemu_bin`` test parameter, if given.
    :raise QemuBinaryError: nothing usable is found, with how to fix it.
    """
    chosen = param or os.environ.get(ENV_BINARY)
    if chosen:
        path = chosen if os.sep in chosen else shutil.which(chosen)
        if not path or not os.path.isfile(path):
            origin = "qemu_bin" if param else ENV_BINARY
            raise QemuBinaryError(f"{origin}={chosen}: no such file")
        if not os.access(path, os.X_OK):
            raise QemuBinaryError(f"{path} is not executable")
        return os.path.abspath(path)
    path = shutil.which(DEFAULT_NAME)
    if path is None:
        raise QemuBinaryError(
            f"no {DEFAULT_NAME} on PATH: run ./setup.sh (installs Debian's "
            f"qemu-system-x86), or pass -p qemu_bin=PATH or set {ENV_BINARY}")
    return path


def _run(path: str, *args: str) -> str:
    try:
        proc = subprocess.run([path, *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30,
                              check=False)
    except OSError as exc:
        raise QemuBinaryError(f"cannot run {path}: {exc}") from None
    except subprocess.TimeoutExpired:
        raise QemuBinaryError(f"{path} {' '.join(args)} did not answer "
                              "within 30s") from None
    return proc.stdout.decode(errors="replace")


def _names(text: str, pattern: str) -> FrozenSet[str]:
    return frozenset(re.findall(pattern, text, re.MULTILINE))


@functools.lru_cache(maxsize=None)
def probe(path: str) -> Capabilities:
    """Ask the binary what it supports (cached per process).

    :raise QemuBinaryError: the binary does not run, or is not an x86_64
        system emulator.
    """
    version = _run(path, "--version")
    if "QEMU emulator version" not in version:
        raise QemuBinaryError(
            f"{path} does not look like QEMU: '--version' said "
            f"{version.strip()[:200]!r}")
    machines = _run(path, "-machine", "help")
    if not re.search(r"^(pc|q35)\b", machines, re.MULTILINE):
        raise QemuBinaryError(
            f"{path} is not an x86_64 system emulator (its machines do not "
            "include pc or q35)")
    devices = _names(_run(path, "-device", "help"), r'^name "([^"]+)"')
    objects = _names(_run(path, "-object", "help"), r"^\s+([a-z0-9-]+)\s*$")
    accels = _names(_run(path, "-accel", "help"), r"^([a-z0-9-]+)\s*$")
    chardev = _run(path, "-chardev", "socket,help")
    first = version.splitlines()[0]
    return Capabilities(path, first.replace("QEMU emulator version", "")
                        .strip(), devices, objects,
                        accels - {"accelerators"}, chardev)


def main() -> int:
    """``python -m avocado_vhost.qemu.binary --check``: used by setup.sh."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--check", action="store_true",
                        help="fail with a clear message if unusable")
    parser.add_argument("--qemu-bin", default=None)
    args = parser.parse_args()
    try:
        caps = probe(find_binary(args.qemu_bin))
    except QemuBinaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"QEMU {caps.version} at {caps.path}; accelerators: "
          f"{', '.join(sorted(caps.accels))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
