"""
Real vhost-user back-ends nobody here wrote, by name.

Each entry says what device it serves and how it is started; the external
scenarios (``-p backend=NAME``) and the fuzzer (``fuzz --backend NAME``)
start it from here, so each command line is written once::

    name               device  what
    dpdk               net     DPDK's vhost PMD in testpmd (Debian's dpdk)
    qsd                blk     qemu-storage-daemon's vhost-user-blk export
                               (util/vhost-user-server.c on libvhost-user)
    vhost-user-blk     blk     QEMU's contrib/vhost-user-blk (libvhost-user)
    vhost-user-bridge  net     QEMU's tests/vhost-user-bridge (libvhost-user),
                               its UDP side looped onto itself
    virtiofsd          fs      virtiofsd 1.13.2 (Rust, rust-vmm's
                               vhost-user-backend), built offline from
                               Debian 13's crates by scripts/build-virtiofsd

The three from QEMU's tree are built by ``QEMU_BACKENDS=1
scripts/build-qemu`` into ``<cache>/qemu-<version>/build-backends`` (or
give ``AVOCADO_VHOST_BACKENDS=<build dir>``).  A back-end of your own is a
command template instead (``-p backend_cmd=`` / ``fuzz --cmd``).

Placeholders in a template: ``{socket}`` where to listen, ``{queues}`` queue
pairs, ``{name}`` a name unique to the instance, ``{dir}`` a folder for
its files, ``{disk}`` a 64 MiB disk image in it (made on first use),
``{share}`` a folder to share (made on first use; one for all the
back-ends of a test, as a migration needs), ``{port}`` a free UDP port.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from typing import Dict, Optional

from avocado_vhost.plumbing.tmpdirs import dpdk_runtime_base

__all__ = ["KnownBackend", "BACKENDS", "backends_build", "fill", "cleanup",
           "listening", "ended", "DISK_SIZE"]

#: the disk image a blk back-end serves ({disk})
DISK_SIZE = 64 << 20


@dataclass(frozen=True)
class KnownBackend:
    """A back-end the kit knows how to start."""

    name: str
    device: str
    #: a program on PATH, ``build:PATH`` inside the build of QEMU's
    #: back-ends, or ``cache:PATH`` inside the suite's cache
    program: str
    arguments: str
    about: str

    def find(self) -> Optional[str]:
        """The executable, or None (not installed or not built)."""
        where, _, rest = self.program.partition(":")
        if where == "build":
            build = backends_build()
            path = os.path.join(build, rest) if build else ""
        elif where == "cache":
            path = os.path.join(cache_root(), rest)
        else:
            return shutil.which(self.program)
        return path if path and os.access(path, os.X_OK) else None

    def template(self) -> Optional[str]:
        """The command template, or None when the program is missing."""
        binary = self.find()
        return None if binary is None else f"{binary} {self.arguments}"

    def missing(self) -> str:
        """Why :meth:`find` came back empty, and what to do."""
        where, _, rest = self.program.partition(":")
        if where == "build":
            return (f"{rest} is not built: run QEMU_BACKENDS=1 "
                    "scripts/build-qemu (or set AVOCADO_VHOST_BACKENDS)")
        if where == "cache":
            return f"{rest} is not built: run scripts/build-{self.name}"
        return (f"{self.program} is not on PATH (Debian 12: apt-get "
                "install dpdk)")


BACKENDS: Dict[str, KnownBackend] = {b.name: b for b in (
    KnownBackend(
        "dpdk", "net", "dpdk-testpmd",
        "-l 0-1 --no-pci --no-huge -m 256 --single-file-segments "
        "--file-prefix={name} --vdev net_vhost0,iface={socket},"
        "queues={queues} -- --forward-mode=io --rxq={queues} "
        "--txq={queues} --total-num-mbufs=16384 -a",
        "DPDK's vhost PMD in testpmd, io forwarding (frames come back)"),
    KnownBackend(
        "qsd", "blk", "build:storage-daemon/qemu-storage-daemon",
        "--blockdev driver=file,node-name=disk,filename={disk},locking=off "
        "--export type=vhost-user-blk,id=exp,node-name=disk,"
        "addr.type=unix,addr.path={socket},writable=on,"
        "num-queues={queues}",
        "qemu-storage-daemon's vhost-user-blk export"),
    KnownBackend(
        "vhost-user-blk", "blk",
        "build:contrib/vhost-user-blk/vhost-user-blk",
        "-s {socket} -b {disk}",
        "QEMU's contrib/vhost-user-blk (one connection, then it exits)"),
    KnownBackend(
        "vhost-user-bridge", "net", "build:tests/vhost-user-bridge",
        "-u {socket} -l 127.0.0.1:{port} -r 127.0.0.1:{port}",
        "QEMU's vhost-user bridge, its UDP side sending to itself"),
    KnownBackend(
        "virtiofsd", "fs", "cache:virtiofsd/virtiofsd",
        "--socket-path={socket} --shared-dir={share} --sandbox none "
        "--cache never --log-level error",
        "virtiofsd (Rust, on rust-vmm's vhost-user-backend), sharing a "
        "folder of its own"),
)}


def cache_root() -> str:
    """The suite's cache of slow builds ($AVOCADO_VHOST_CACHE)."""
    return os.environ.get("AVOCADO_VHOST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "avocado-vhost")


def backends_build() -> Optional[str]:
    """The build directory of QEMU's own back-ends: $AVOCADO_VHOST_BACKENDS,
    else the newest under the cache."""
    env = os.environ.get("AVOCADO_VHOST_BACKENDS")
    if env:
        return env
    builds = sorted(glob.glob(os.path.join(cache_root(), "qemu-*",
                                           "build-backends")),
                    key=os.path.getmtime)
    return builds[-1] if builds else None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(template: str, socket_path: str, name: str, folder: str,
         queues: int = 1) -> str:
    """``template`` with its placeholders replaced; the disk image is made
    when the template names one and it does not exist yet."""
    disk = os.path.join(folder, f"{name}.img")
    if "{disk}" in template and not os.path.exists(disk):
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
    port = _free_udp_port() if "{port}" in template else 0
    # one shared folder per folder, not per instance: the back-ends of a
    # migration must share the same files, as with real shared storage
    share = os.path.join(folder, "share")
    if "{share}" in template:
        os.makedirs(share, exist_ok=True)
    return template.format(socket=socket_path, name=name, dir=folder,
                           queues=queues, disk=disk, port=port, share=share)


def cleanup(name: str) -> None:
    """Remove what a back-end started as ``name`` leaves outside its folder
    (DPDK's runtime directory for ``--file-prefix={name}``)."""
    for path in glob.glob(os.path.join(dpdk_runtime_base(), name + "*")):
        shutil.rmtree(path, ignore_errors=True)


def listening(path: str) -> bool:
    """Whether a socket listens at ``path`` -- read from /proc/net/unix, not
    by connecting: a back-end that serves one connection and exits would
    take a test connection for its one.  (The socket file appears at
    bind(); listen() comes after.)"""
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; Flags
                # 00010000 is __SO_ACCEPTCON: listening
                if (len(fields) >= 8 and fields[7] == path
                        and int(fields[3], 16) & 0x10000):
                    return True
    except OSError:
        pass
    return False


def ended(proc: "subprocess.Popen[bytes]") -> Optional[str]:
    """How a back-end process ended ("killed by SIGSEGV", "exited with
    1"), or None while it runs."""
    code = proc.poll()
    if code is None:
        return None
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
