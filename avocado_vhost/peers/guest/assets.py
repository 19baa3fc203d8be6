"""
The real guest's kernel and initramfs, made from Debian's current packages.

Nothing is committed and nothing comes from anywhere but Debian's package
archive (through the machine's own apt, with a private state): the kernel
package ``linux-image-<arch>`` depends on today (the kernel, and its virtio
/ virtio-net modules, never installed on the host) and ``busybox-static``.
Nothing is pinned, so nothing rots when the archive drops a kernel at its
next security update; apt's signed indexes vouch for the files, and their
SHA-256 is checked here too.  What was taken (name, version, SHA-256) goes
to ``manifest.json`` and into every guest test's log.  What the tests check
does not depend on the version: the module list and ``/init`` are the
suite's (a missing module is an error at set-up), and the tests judge the
device and the back-end, not the kernel.

The result goes to ``$AVOCADO_VHOST_CACHE/guest/<packages>+<recipe>/``
outside the clone (per target: x86_64 and aarch64), and
``guest/current-<arch>`` names it for the tests, which never ask apt.  A
second set-up asks apt (cheap: the state is kept) and does nothing unless
the archive moved on; without network it keeps what it made.  When nothing
can be made, the reason goes to ``current-<arch>.ERROR`` and the guest
tests CANCEL with it.

    python -m avocado_vhost.peers.guest.assets        # make (set-up runs this)
    python -m avocado_vhost.peers.guest.assets --show # where, what, or why not
    python -m avocado_vhost.peers.guest.assets --arch aarch64
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

from avocado_vhost.errors import NotAvailable
from avocado_vhost.peers.guest.initramfs import Initramfs
from avocado_vhost.peers.guest.vmlinux import pvh_elf

__all__ = ["Pin", "ARCHES", "resolve", "GuestArch", "GuestAssets",
           "AssetsMissing", "load", "make", "MODULES", "cache_dir"]


@dataclass(frozen=True)
class Pin:
    """One Debian package, exactly."""

    package: str
    version: str
    sha256: str


@dataclass(frozen=True)
class GuestArch:
    """One target's guest: its Debian architecture, what to take from
    Debian's archive (resolved to exact versions at set-up) and console."""

    arch: str
    debian: str
    console: str
    #: the kernel: the metapackage whose dependency names the current one
    kernel_meta: str
    packages: Tuple[str, ...] = ("busybox-static",)


#: What the guest is made of, per target (Debian 12 "bookworm").  Nothing
#: is pinned: a pinned kernel rots the day Debian's archive drops it (each
#: kernel security update).  Set-up takes what ``linux-image-<arch>``
#: depends on today and the current ``busybox-static``; apt's signed
#: indexes vouch for them, and what was taken (name, version, SHA256) is
#: written to the manifest and into every guest test's log.
ARCHES = {
    "x86_64": GuestArch("x86_64", "amd64", "ttyS0", "linux-image-amd64"),
    "aarch64": GuestArch("aarch64", "arm64", "ttyAMA0", "linux-image-arm64"),
}


#: The virtio-net and virtio-blk drivers and what they need, in load order
#: (Debian's 6.1 builds them as modules -- on arm64 virtio and virtio_ring
#: are built in; the package has no modules.dep).
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev",
           "virtio_pci_modern_dev", "virtio_pci", "failover",
           "net_failover", "virtio_net", "virtio_blk")

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


class AssetsMissing(NotAvailable):
    """The guest's kernel and initramfs are not there (and why)."""


@dataclass(frozen=True)
class GuestAssets:
    """A made kernel + initramfs, and what they were made from."""

    kernel: str
    initrd: str
    manifest: Dict[str, object]
    target: GuestArch


def _base() -> str:
    base = os.environ.get("AVOCADO_VHOST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "avocado-vhost")
    return os.path.join(base, "guest")


def cache_dir(arch: str, pins: Tuple[Pin, ...]) -> str:
    """Where the assets made of exactly ``pins`` live."""
    tag = "+".join(f"{p.package}_{p.version}".replace(":", "_")
                   for p in pins)
    return os.path.join(_base(), f"{tag}+{_recipe()}")


def _current(arch: str) -> str:
    """The file naming the assets set-up made last for ``arch`` (tests
    read it: they never ask apt)."""
    return os.path.join(_base(), f"current-{arch}")


def _recipe() -> str:
    """What else makes the assets (the init script, the module list): a
    change makes them again instead of using a stale cache."""
    text = INIT + " ".join(MODULES) + " boot: pvh when it can"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def load(arch: str = "x86_64") -> GuestAssets:
    """The assets set-up made last for target ``arch``.

    :raise AssetsMissing: not made (the reason set-up recorded, if any),
        or no guest for this target.
    """
    if arch not in ARCHES:
        raise AssetsMissing(f"no real guest for {arch} (targets: "
                            f"{', '.join(ARCHES)})")
    hint = ("(./setup.sh makes them: python -m avocado_vhost.peers.guest.assets "
            f"--arch {arch})")
    try:
        with open(_current(arch), encoding="utf-8") as f:
            where = os.path.join(_base(), f.read().strip())
    except FileNotFoundError:
        why = "not made"
        try:
            with open(_current(arch) + ".ERROR", encoding="utf-8") as f:
                why = f.read().strip()
        except FileNotFoundError:
            pass
        raise AssetsMissing(f"guest kernel and initramfs for {arch}: {why} "
                            f"{hint}") from None
    manifest = os.path.join(where, "manifest.json")
    if not os.path.exists(manifest):
        raise AssetsMissing(f"{manifest} is gone {hint}")
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    # "boot": the file -kernel takes (vmlinux: the ELF inside an x86
    # bzImage, booted through PVH; see vmlinux.py)
    return GuestAssets(os.path.join(where, str(data.get("boot", "vmlinuz"))),
                       os.path.join(where, "initrd.img"), data, ARCHES[arch])


def _field(record: str, name: str) -> str:
    for line in record.splitlines():
        if line.startswith(f"{name}: "):
            return line.split(": ", 1)[1].strip()
    raise AssetsMissing(f"no {name} in apt's record:\n{record[:400]}")


def _apt(options: List[str], *args: str) -> str:
    proc = subprocess.run(["apt-cache", *options, *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    if proc.returncode != 0:
        raise AssetsMissing(f"apt-cache {' '.join(args)} failed: "
                            f"{proc.stdout.strip()[-400:]}")
    return proc.stdout


def _pin(options: List[str], package: str) -> Pin:
    """``package`` at the version apt would take today, with the SHA256
    from apt's (signed) index."""
    record = _apt(options, "show", "--no-all-versions", package)
    return Pin(package, _field(record, "Version"), _field(record, "SHA256"))


def resolve(target: GuestArch, options: List[str]) -> Tuple[Pin, ...]:
    """What the guest is made of today: the kernel package that
    ``target.kernel_meta`` depends on, then ``target.packages``."""
    depends = _apt(options, "depends", "--important", target.kernel_meta)
    kernels = [line.split(":", 1)[1].strip() for line in depends.splitlines()
               if line.strip().startswith("Depends: linux-image-")]
    if not kernels:
        raise AssetsMissing(f"{target.kernel_meta} names no kernel "
                            f"package:\n{depends[:400]}")
    return tuple(_pin(options, name)
                 for name in (kernels[0], *target.packages))


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
            f"{proc.stdout.strip()[-400:]}")
    debs = glob.glob(os.path.join(into, f"{pin.package}_*.deb"))
    if len(debs) != 1:
        raise AssetsMissing(f"apt-get download {spec} left {debs}")
    got = _sha256(debs[0])
    if got != pin.sha256:
        raise AssetsMissing(f"{debs[0]} has SHA256 {got}, apt's index "
                            f"says {pin.sha256}")
    return debs[0]


def _extract(deb: str, into: str) -> None:
    subprocess.run(["dpkg-deb", "-x", deb, into], check=True)


def make(arch: str = "x86_64") -> GuestAssets:
    """Make the assets for target ``arch`` from what Debian's archive
    holds today, unless they are made already; point ``load`` at them.

    Where the archive cannot be asked (no network), assets made before
    are kept, and said so.
    """
    if arch not in ARCHES:
        raise AssetsMissing(f"no real guest for {arch}")
    target = ARCHES[arch]
    # apt's state is kept beside the assets: a second update is a check.
    try:
        options = _private_apt(os.path.join(_base(), f"apt-{target.debian}"),
                               target.debian)
        pins = resolve(target, options)
    except AssetsMissing as exc:
        try:
            made = load(arch)
        except AssetsMissing:
            raise exc from None
        print(f"guest assets ({arch}): keeping {describe(made)}: "
              f"{exc}", file=sys.stderr)
        return made
    where = cache_dir(arch, pins)
    if not os.path.exists(os.path.join(where, "manifest.json")):
        _build(target, pins, where, options)
    with open(_current(arch) + ".tmp", "w", encoding="utf-8") as f:
        f.write(os.path.basename(where) + "\n")
    os.replace(_current(arch) + ".tmp", _current(arch))
    return load(arch)


def _build(target: GuestArch, pins: Tuple[Pin, ...], where: str,
           options: List[str]) -> None:
    """Download ``pins``, check them, and write ``where``: the kernel, the
    initramfs and ``manifest.json`` (complete or absent, never half)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="guest-assets-") as tmp:
        root = os.path.join(tmp, "root")
        for pin in pins:
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
        with open(kernels[0], "rb") as f:
            elf = pvh_elf(f.read())
        boot = "vmlinuz"
        if elf is not None:  # x86: QEMU boots it without a decompressor
            boot = "vmlinux"
            with open(os.path.join(partial, boot), "wb") as f:
                f.write(elf)
        with open(os.path.join(partial, "initrd.img"), "wb") as f:
            f.write(image.build())
    manifest: Dict[str, object] = {
        "arch": target.arch,
        "packages": [{"package": p.package, "version": p.version,
                      "sha256": p.sha256} for p in pins],
        "built_in": sorted(m for m in MODULES if m in builtin),
        "kernel": os.path.basename(kernels[0]),
        "boot": boot,
        "modules": sizes,
        "sizes": {n: os.path.getsize(os.path.join(partial, n))
                  for n in (boot, "initrd.img")},
        "sha256": {n: _sha256(os.path.join(partial, n))
                   for n in (boot, "initrd.img")},
        "seconds_to_make": round(time.monotonic() - start, 1),
    }
    with open(os.path.join(partial, "manifest.json"), "w",
              encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    shutil.rmtree(where, ignore_errors=True)
    os.rename(partial, where)  # complete or absent, never half made


def describe(assets: GuestAssets) -> str:
    """What the guest is made of, one line (for test logs)."""
    packages = assets.manifest.get("packages", [])
    assert isinstance(packages, list)
    return ", ".join(f"{p['package']} {p['version']}" for p in packages)


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
        os.makedirs(_base(), exist_ok=True)
        with open(_current(arch) + ".ERROR", "w", encoding="utf-8") as f:
            f.write(str(exc))
        print(f"guest assets ({arch}): error: {exc}", file=sys.stderr)
        return 1
    try:
        os.remove(_current(arch) + ".ERROR")
    except FileNotFoundError:
        pass
    print(f"guest assets ({arch}): {describe(assets)}: {assets.kernel}, "
          f"{assets.initrd} ({assets.manifest['seconds_to_make']} s to make)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
