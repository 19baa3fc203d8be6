"""
Finding the QEMU under test and probing what it can do.

The binary comes from, in order: the test parameter ``qemu_bin``, the
environment variable ``QEMU_TEST_QEMU_BINARY`` (QEMU's own CI convention),
then ``qemu-system-x86_64`` on PATH (Debian's, installed by ``setup.sh``).

Capabilities are probed by asking the binary (``-device help``,
``-object help``, ``-chardev socket,help``), never guessed from its version
number: distributions configure features in and out.  Accelerators are
probed by *starting* the binary with each one: ``-accel help`` is not the
truth, because QEMU's ``vl.c`` leaves the qtest accelerator out of that list
on purpose, and lists ``kvm`` where ``/dev/kvm`` cannot be used.

Probing costs a few QEMU runs (about 0.3 s); every test process would pay
it again, so the result is cached on disk, keyed by the binary's path,
inode, size and modification time (a rebuilt QEMU is probed afresh).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional, Tuple

from avocado_vhost.errors import SetupError

__all__ = ["QemuBinaryError", "Capabilities", "find_binary", "probe",
           "ENV_BINARY", "DEFAULT_NAME"]

ENV_BINARY = "QEMU_TEST_QEMU_BINARY"
DEFAULT_NAME = "qemu-system-x86_64"
_PROBE_VERSION = 1  # bump when Capabilities changes shape
_ACCELS_TRIED = ("qtest", "tcg", "kvm")


class QemuBinaryError(SetupError):
    """The QEMU binary is missing or is not a system emulator of a target
    the suite knows (x86_64, aarch64)."""


@dataclass(frozen=True)
class Capabilities:
    """What one QEMU binary offers, as it reports it.

    :param accels: accelerators the binary *started* with here (qtest
        included where built in; kvm only where /dev/kvm works).
    :param accel_errors: for each accelerator tried that did not start,
        QEMU's own words.
    """

    path: str
    version: str
    arch: str
    devices: FrozenSet[str]
    objects: FrozenSet[str]
    accels: FrozenSet[str]
    accel_errors: Tuple[Tuple[str, str], ...]
    chardev_options: str

    def has_device(self, name: str) -> bool:
        return name in self.devices

    def has_object(self, name: str) -> bool:
        return name in self.objects

    def has_accel(self, name: str) -> bool:
        return name in self.accels

    def accel_error(self, name: str) -> str:
        """Why accelerator ``name`` did not start (QEMU's message)."""
        return dict(self.accel_errors).get(
            name, f"'{name}' is not an accelerator this suite probes")

    @property
    def version_tuple(self) -> Tuple[int, int, int]:
        """``(major, minor, micro)`` from the version string (for the few
        checks where QEMU legitimately changed behaviour between releases;
        features are probed, never inferred from this)."""
        match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", self.version)
        if not match:
            return (0, 0, 0)
        return (int(match.group(1)), int(match.group(2)),
                int(match.group(3) or 0))

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


def _run(path: str, *args: str, stdin: bytes = b"") -> Tuple[int, str]:
    try:
        proc = subprocess.run([path, *args], input=stdin,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30,
                              check=False)
    except OSError as exc:
        raise QemuBinaryError(f"cannot run {path}: {exc}") from None
    except subprocess.TimeoutExpired:
        raise QemuBinaryError(f"{path} {' '.join(args)} did not answer "
                              "within 30s") from None
    return proc.returncode, proc.stdout.decode(errors="replace")


def _names(text: str, pattern: str) -> FrozenSet[str]:
    return frozenset(re.findall(pattern, text, re.MULTILINE))


def _try_accel(path: str, accel: str) -> Optional[str]:
    """Start ``path`` with ``-accel accel`` and quit over QMP.

    :return: None when it started, else QEMU's message (or exit status).
    """
    qmp = b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
    code, out = _run(path, "-machine", "none", "-accel", accel, "-nodefaults",
                     "-display", "none", "-S", "-qmp", "stdio", stdin=qmp)
    if code == 0 and '"return"' in out:
        return None
    said = [line for line in out.splitlines() if not line.startswith("{")]
    return (" ".join(said).strip() or f"exit status {code}")[:300]


def _cache_file(path: str) -> str:
    st = os.stat(path)
    key = f"{_PROBE_VERSION}:{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME",
                          os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(base, "avocado-vhost", "probe", f"{digest}.json")


def _load(cache: str) -> Optional[Capabilities]:
    try:
        with open(cache, encoding="utf-8") as src:
            raw: Dict[str, Any] = json.load(src)
        return Capabilities(
            path=str(raw["path"]), version=str(raw["version"]),
            arch=str(raw["arch"]), devices=frozenset(raw["devices"]),
            objects=frozenset(raw["objects"]),
            accels=frozenset(raw["accels"]),
            accel_errors=tuple((str(a), str(b))
                               for a, b in raw["accel_errors"]),
            chardev_options=str(raw["chardev_options"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(cache: str, caps: Capabilities) -> None:
    raw = dataclasses.asdict(caps)
    for key in ("devices", "objects", "accels"):
        raw[key] = sorted(raw[key])
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(raw, out)
        os.replace(tmp, cache)  # atomic: parallel tests never see half
    except OSError:
        pass  # a read-only home only costs the probe again


def _probe_binary(path: str) -> Capabilities:
    _, version = _run(path, "--version")
    if "QEMU emulator version" not in version:
        raise QemuBinaryError(
            f"{path} does not look like QEMU: '--version' said "
            f"{version.strip()[:200]!r}")
    _, machines = _run(path, "-machine", "help")
    names = _names(machines, r"^(\S+)\s")
    if "pc" in names or "q35" in names:
        arch = "x86_64"
    elif "virt" in names and "cortex-a57" in _run(path, "-cpu", "help")[1]:
        arch = "aarch64"  # qemu-system-arm has virt too, but no 64-bit CPU
    else:
        raise QemuBinaryError(
            f"{path} is neither an x86_64 nor an aarch64 system emulator "
            "(its machines include neither pc nor virt with a 64-bit CPU)")
    devices = _names(_run(path, "-device", "help")[1], r'^name "([^"]+)"')
    objects = _names(_run(path, "-object", "help")[1], r"^\s+([a-z0-9-]+)\s*$")
    chardev = _run(path, "-chardev", "socket,help")[1]
    errors = {a: _try_accel(path, a) for a in _ACCELS_TRIED}
    first = version.splitlines()[0]
    return Capabilities(
        path, first.replace("QEMU emulator version", "").strip(), arch,
        devices, objects, frozenset(a for a, e in errors.items() if e is None),
        tuple((a, e) for a, e in errors.items() if e is not None), chardev)


@functools.lru_cache(maxsize=None)
def probe(path: str) -> Capabilities:
    """Ask the binary what it supports (cached per process and on disk).

    :raise QemuBinaryError: the binary does not run, or is not a system
        emulator of a known target.
    """
    cache = _cache_file(path)
    caps = _load(cache)
    if caps is None or caps.path != path:
        caps = _probe_binary(path)
        _store(cache, caps)
    return caps


def main() -> int:
    """``python -m avocado_vhost.peers.qemu.binary --check``: used by setup.sh."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[1])
    parser.add_argument("--check", action="store_true",
                        help="fail with a clear message if unusable")
    parser.add_argument("--qemu-bin", default=None)
    args = parser.parse_args()
    try:
        caps = probe(find_binary(args.qemu_bin))
    except QemuBinaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"QEMU {caps.version} ({caps.arch}) at {caps.path}; accelerators "
          f"that start here: {', '.join(sorted(caps.accels))}")
    for accel, why in caps.accel_errors:
        print(f"  {accel}: not usable: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
