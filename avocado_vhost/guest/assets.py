"""
The real guest's kernel and initramfs, made from pinned Debian packages.

Nothing is committed and nothing comes from anywhere but Debian's package
archive (through the machine's own apt): ``linux-image-*-amd64`` (the
kernel, and its virtio / virtio-net modules, never installed on the host)
and ``busybox-static``.  Each package is pinned by name, version and the
SHA-256 of its .deb (checked here as well as by apt).  The result goes to
``$AVOCADO_VHOST_CACHE/guest/<pins>/`` (one per target: x86_64 and
aarch64, downloaded through a private apt state for the target's Debian
architecture) outside the clone: ``vmlinuz``,
``initrd.img`` and ``manifest.json``; a second run finds it and does
nothing.  When it cannot be made, the reason is written to ``ERROR`` there
and the guest tests CANCEL with it.

    python -m avocado_vhost.guest.assets        # make (set-up runs this)
    python -m avocado_vhost.guest.assets --show # where, what, or why not
    python -m avocado_vhost.guest.assets --arch aarch64
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .initramfs import Initramfs

__all__ = ["Pin", "PINS", "ARCHES", "GuestArch", "GuestAssets",
           "AssetsMissing", "load", "make", "MODULES", "cache_dir"]


@dataclass(frozen=True)
class Pin:
    """One Debian package, exactly."""

    package: str
    version: str
    sha256: str


@dataclass(frozen=True)
class GuestArch:
    """One target's guest: its Debian architecture, packages and console."""

    arch: str
    debian: str
    console: str
    pins: Tuple[Pin, ...]


#: What the guest is made of, per target (Debian 12 "bookworm").  When the
#: archive drops a version (a kernel security update), set-up says so;
#: take the new one's name, version and SHA256 from ``apt-cache show``.
ARCHES = {
    "x86_64": GuestArch("x86_64", "amd64", "ttyS0", (
        Pin("linux-image-6.1.0-56-amd64", "6.1.192-2",
            "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1"),
        Pin("busybox-static", "1:1.35.0-4+deb12u1+b1",
            "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"),
    )),
    "aarch64": GuestArch("aarch64", "arm64", "ttyAMA0", (
        Pin("linux-image-6.1.0-56-arm64", "6.1.192-2",
            "6f4ed2d1cb9106bc977c2b1960008f175e2eed5740340634b7894e65ef5acc82"),
        Pin("busybox-static", "1:1.35.0-4+deb12u1+b1",
            "732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5"),
    )),
}
#: the x86_64 pins (what the README and the closing notes quote)
PINS = ARCHES["x86_64"].pins

#: The virtio-net driver and what it needs, in load order (Debian's 6.1
#: builds them as modules -- on arm64 virtio and virtio_ring are built in;
#: the package has no modules.dep).
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev",
           "virtio_pci_modern_dev", "virtio_pci", "failover",
           "net_failover", "virtio_net")

#: printed by /init once the driver is loaded and the shell starts
READY = "AVH-GUEST-READY"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko || echo "AVH-INSMOD-FAILED $m"
done
echo "{READY} $(uname -r)"
exec setsid cttyhack sh
"""


class AssetsMissing(Exception):
    """The guest's kernel and initramfs are not there (and why)."""


@dataclass(frozen=True)
class GuestAssets:
    """A made kernel + initramfs, and what they were made from."""

    kernel: str
    initrd: str
    manifest: Dict[str, object]
    target: GuestArch


def cache_dir(arch: str = "x86_64") -> str:
    base = os.environ.get("AVOCADO_VHOST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "avocado-vhost")
    tag = "+".join(f"{p.package}_{p.version}".replace(":", "_")
                   for p in ARCHES[arch].pins)
    return os.path.join(base, "guest", f"{tag}+{_recipe()}")


def _recipe() -> str:
    """What else makes the assets (the init script, the module list): a
    change makes them again instead of using a stale cache."""
    text = INIT + " ".join(MODULES)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def load(arch: str = "x86_64") -> GuestAssets:
    """The made assets for target ``arch``.

    :raise AssetsMissing: not made (the reason set-up recorded, if any),
        or no guest for this target.
    """
    if arch not in ARCHES:
        raise AssetsMissing(f"no real guest for {arch} (targets: "
                            f"{', '.join(ARCHES)})")
    where = cache_dir(arch)
    manifest = os.path.join(where, "manifest.json")
    if not os.path.exists(manifest):
        why = "not made"
        try:
            with open(os.path.join(where, "ERROR"), encoding="utf-8") as f:
                why = f.read().strip()
        except FileNotFoundError:
            pass
        raise AssetsMissing(f"guest kernel and initramfs in {where}: {why} "
                            "(./setup.sh makes them: python -m "
                            f"avocado_vhost.guest.assets --arch {arch})")
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    return GuestAssets(os.path.join(where, "vmlinuz"),
                       os.path.join(where, "initrd.img"), data, ARCHES[arch])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _apt_options(state: str, debian_arch: str) -> List[str]:
    """apt options for a private state (its own lists and cache, the
    machine's sources) that sees packages of ``debian_arch``: the system's
    apt configuration and dpkg's architectures are left untouched."""
    return ["-o", f"Dir::State::Lists={state}/lists",
            "-o", f"Dir::Cache={state}/cache",
            "-o", "Dir::State::status=/dev/null",
            "-o", f"APT::Architecture={debian_arch}",
            "-o", f"APT::Architectures::={debian_arch}", "-q"]


def _private_apt(state: str, debian_arch: str) -> List[str]:
    for sub in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(state, sub), exist_ok=True)
    options = _apt_options(state, debian_arch)
    proc = subprocess.run(["apt-get", *options, "update"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    if proc.returncode != 0:
        raise AssetsMissing(f"apt-get update ({debian_arch}) failed: "
                            f"{proc.stdout.strip()[-400:]}")
    return options


def _download(pin: Pin, into: str, options: List[str]) -> str:
    """``apt-get download`` of exactly ``pin``, checked; the .deb's path."""
    spec = f"{pin.package}={pin.version}"
    proc = subprocess.run(["apt-get", *options, "download", spec], cwd=into,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    if proc.returncode != 0:
        raise AssetsMissing(
            f"cannot download {spec} from Debian's archive: "
            f"{proc.stdout.strip()[-400:]} -- if the archive dropped this "
            "version, pin the current one in avocado_vhost/guest/assets.py")
    debs = glob.glob(os.path.join(into, f"{pin.package}_*.deb"))
    if len(debs) != 1:
        raise AssetsMissing(f"apt-get download {spec} left {debs}")
    got = _sha256(debs[0])
    if got != pin.sha256:
        raise AssetsMissing(f"{debs[0]} has SHA256 {got}, pinned "
                            f"{pin.sha256}")
    return debs[0]


def _extract(deb: str, into: str) -> None:
    subprocess.run(["dpkg-deb", "-x", deb, into], check=True)


def make(arch: str = "x86_64") -> GuestAssets:
    """Make the assets for target ``arch`` unless they are there."""
    try:
        return load(arch)
    except AssetsMissing:
        if arch not in ARCHES:
            raise
    target = ARCHES[arch]
    where = cache_dir(arch)
    os.makedirs(where, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="guest-assets-") as tmp:
        root = os.path.join(tmp, "root")
        options = _private_apt(os.path.join(tmp, "apt"), target.debian)
        for pin in target.pins:
            _extract(_download(pin, tmp, options), root)
        kernels = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))
        if len(kernels) != 1:
            raise AssetsMissing(f"no single kernel image in the package: "
                                f"{kernels}")
        image = Initramfs()
        for d in ("bin", "dev", "proc", "sys", "tmp", "lib",
                  "lib/modules"):
            image.directory(d)
        with open(os.path.join(root, "bin", "busybox"), "rb") as f:
            image.file("bin/busybox", f.read(), 0o755)
        image.file("init", INIT.encode(), 0o755)
        found: Dict[str, str] = {}
        for path in glob.glob(os.path.join(root, "lib", "modules", "*",
                                           "kernel", "**", "*.ko"),
                              recursive=True):
            name = os.path.basename(path)[:-3]
            if name in MODULES:
                found[name] = path
        builtin = _builtin_modules(root)
        missing = [m for m in MODULES if m not in found and m not in builtin]
        if missing:
            raise AssetsMissing(f"modules neither in the kernel package nor "
                                f"built in: {missing}")
        sizes: Dict[str, int] = {}
        order = [m for m in MODULES if m in found]
        for name in order:
            with open(found[name], "rb") as f:
                data = f.read()
            image.file(f"lib/modules/{name}.ko", data)
            sizes[name] = len(data)
        image.file("lib/modules/order", "\n".join(order).encode() + b"\n")
        partial = where + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        shutil.copyfile(kernels[0], os.path.join(partial, "vmlinuz"))
        with open(os.path.join(partial, "initrd.img"), "wb") as f:
            f.write(image.build())
    manifest: Dict[str, object] = {
        "arch": arch,
        "packages": [{"package": p.package, "version": p.version,
                      "sha256": p.sha256} for p in target.pins],
        "built_in": sorted(m for m in MODULES if m in builtin),
        "kernel": os.path.basename(kernels[0]),
        "modules": sizes,
        "sizes": {n: os.path.getsize(os.path.join(partial, n))
                  for n in ("vmlinuz", "initrd.img")},
        "sha256": {n: _sha256(os.path.join(partial, n))
                   for n in ("vmlinuz", "initrd.img")},
        "seconds_to_make": round(time.monotonic() - start, 1),
    }
    with open(os.path.join(partial, "manifest.json"), "w",
              encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    shutil.rmtree(where)
    os.rename(partial, where)  # complete or absent, never half made
    return load(arch)


def _builtin_modules(root: str) -> List[str]:
    """Module names the kernel has built in (``modules.builtin``)."""
    names: List[str] = []
    for path in glob.glob(os.path.join(root, "lib", "modules", "*",
                                       "modules.builtin")):
        with open(path, encoding="utf-8") as f:
            names += [os.path.basename(line.strip())[:-3] for line in f
                      if line.strip().endswith(".ko")]
    return names


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--show", action="store_true",
                        help="say where the assets are, or why not")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHES),
                        help="target(s) (default: all)")
    args = parser.parse_args(argv)
    status = 0
    for arch in args.arch or sorted(ARCHES):
        status |= _show(arch) if args.show else _make(arch)
    return status


def _show(arch: str) -> int:
    try:
        assets = load(arch)
    except AssetsMissing as exc:
        print(exc)
        return 1
    print(json.dumps(dict(assets.manifest, kernel_path=assets.kernel,
                          initrd_path=assets.initrd), indent=2))
    return 0


def _make(arch: str) -> int:
    try:
        assets = make(arch)
    except (AssetsMissing, OSError, subprocess.CalledProcessError) as exc:
        os.makedirs(cache_dir(arch), exist_ok=True)
        with open(os.path.join(cache_dir(arch), "ERROR"), "w",
                  encoding="utf-8") as f:
            f.write(str(exc))
        print(f"guest assets ({arch}): error: {exc}", file=sys.stderr)
        return 1
    print(f"guest assets ({arch}): {assets.kernel}, {assets.initrd} "
          f"({assets.manifest['seconds_to_make']} s to make)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
