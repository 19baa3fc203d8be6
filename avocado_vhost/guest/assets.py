"""
The real guest's kernel and initramfs, made from pinned Debian packages.

Nothing is committed and nothing comes from anywhere but Debian's package
archive (through the machine's own apt): ``linux-image-*-amd64`` (the
kernel, and its virtio / virtio-net modules, never installed on the host)
and ``busybox-static``.  Each package is pinned by name, version and the
SHA-256 of its .deb (checked here as well as by apt).  The result goes to
``$AVOCADO_VHOST_CACHE/guest/<pins>/`` outside the clone: ``vmlinuz``,
``initrd.img`` and ``manifest.json``; a second run finds it and does
nothing.  When it cannot be made, the reason is written to ``ERROR`` there
and the guest tests CANCEL with it.

    python -m avocado_vhost.guest.assets        # make (set-up runs this)
    python -m avocado_vhost.guest.assets --show # where, what, or why not
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
from typing import Dict, List, Optional

from .initramfs import Initramfs

__all__ = ["Pin", "PINS", "GuestAssets", "AssetsMissing", "load",
           "MODULES", "cache_dir"]


@dataclass(frozen=True)
class Pin:
    """One Debian package, exactly."""

    package: str
    version: str
    sha256: str


#: What the guest is made of (Debian 12 "bookworm", amd64).  When the
#: archive drops a version (a kernel security update), set-up says so;
#: take the new one's name, version and SHA256 from ``apt-cache show``.
PINS = (
    Pin("linux-image-6.1.0-56-amd64", "6.1.192-2",
        "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1"),
    Pin("busybox-static", "1:1.35.0-4+deb12u1+b1",
        "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"),
)

#: The virtio-net driver and what it needs, in load order (Debian's 6.1
#: builds them as modules; the package has no modules.dep).
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
for m in {' '.join(MODULES)}; do
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


def cache_dir() -> str:
    base = os.environ.get("AVOCADO_VHOST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "avocado-vhost")
    tag = "+".join(f"{p.package}_{p.version}".replace(":", "_")
                   for p in PINS)
    return os.path.join(base, "guest", tag)


def load() -> GuestAssets:
    """The made assets.

    :raise AssetsMissing: not made (the reason set-up recorded, if any).
    """
    where = cache_dir()
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
                            "avocado_vhost.guest.assets)")
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    return GuestAssets(os.path.join(where, "vmlinuz"),
                       os.path.join(where, "initrd.img"), data)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(pin: Pin, into: str) -> str:
    """``apt-get download`` of exactly ``pin``, checked; the .deb's path."""
    spec = f"{pin.package}={pin.version}"
    proc = subprocess.run(["apt-get", "download", "-q", spec], cwd=into,
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


def make() -> GuestAssets:
    """Make the assets unless they are there; returns them."""
    try:
        return load()
    except AssetsMissing:
        pass
    where = cache_dir()
    os.makedirs(where, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="avh-guest-") as tmp:
        root = os.path.join(tmp, "root")
        for pin in PINS:
            _extract(_download(pin, tmp), root)
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
        missing = [m for m in MODULES if m not in found]
        if missing:
            raise AssetsMissing(f"modules not in the kernel package: "
                                f"{missing}")
        sizes: Dict[str, int] = {}
        for name in MODULES:
            with open(found[name], "rb") as f:
                data = f.read()
            image.file(f"lib/modules/{name}.ko", data)
            sizes[name] = len(data)
        partial = where + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        shutil.copyfile(kernels[0], os.path.join(partial, "vmlinuz"))
        with open(os.path.join(partial, "initrd.img"), "wb") as f:
            f.write(image.build())
    manifest: Dict[str, object] = {
        "packages": [{"package": p.package, "version": p.version,
                      "sha256": p.sha256} for p in PINS],
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
    return load()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--show", action="store_true",
                        help="say where the assets are, or why not")
    args = parser.parse_args(argv)
    if args.show:
        try:
            assets = load()
        except AssetsMissing as exc:
            print(exc)
            return 1
        print(json.dumps(dict(assets.manifest, kernel_path=assets.kernel,
                              initrd_path=assets.initrd), indent=2))
        return 0
    try:
        assets = make()
    except (AssetsMissing, OSError, subprocess.CalledProcessError) as exc:
        os.makedirs(cache_dir(), exist_ok=True)
        with open(os.path.join(cache_dir(), "ERROR"), "w",
                  encoding="utf-8") as f:
            f.write(str(exc))
        print(f"guest assets: error: {exc}", file=sys.stderr)
        return 1
    print(f"guest assets: {assets.kernel}, {assets.initrd} "
          f"({assets.manifest['seconds_to_make']} s to make)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
