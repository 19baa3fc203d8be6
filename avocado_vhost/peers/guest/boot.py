"""
A booted real guest: QEMU (TCG) with Debian's kernel and the suite's
initramfs, a vhost-user virtio-net served by an in-process back-end with a
:class:`~.netstack.Responder` on its wire, and the guest's console.

:class:`GuestOptions` says what the device negotiates (queue pairs, packed
rings, mergeable receive buffers, event index, MSI-X);
:func:`guest_spec_args` turns it into QEMU arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from avocado_vhost.vhost_user import BackendConfig
from avocado_vhost.peers.guest.assets import GuestAssets
from avocado_vhost.peers.guest.console import console_args

__all__ = ["GuestOptions", "guest_spec_args", "backend_config",
           "KERNEL_ARGS"]

#: After ``console=<the target's serial port>``; ``quiet``: kernel
#: messages would interleave with command output.  ``cryptomgr.notests``:
#: the crypto self-tests are a sixth of the boot under TCG (0.35 s of
#: 2.35 s to the ready marker, ``scripts/bench_boot.py``) and test the
#: kernel's ciphers, which nothing here uses.
KERNEL_ARGS = "quiet loglevel=3 panic=-1 cryptomgr.notests"


@dataclass(frozen=True)
class GuestOptions:
    """What the guest's virtio-net device is."""

    queues: int = 1
    packed: bool = False
    mrg_rxbuf: bool = True
    event_idx: bool = True
    msix: bool = True

    @property
    def cpus(self) -> int:
        """One vCPU per queue pair (Linux then uses them all)."""
        return self.queues

    def describe(self) -> str:
        return (f"{self.queues} pair(s), {'packed' if self.packed else 'split'}"
                f", mrg_rxbuf {'on' if self.mrg_rxbuf else 'off'}, event_idx "
                f"{'on' if self.event_idx else 'off'}, MSI-X "
                f"{'on' if self.msix else 'off'}")


def backend_config(options: GuestOptions) -> BackendConfig:
    """What the back-end offers for ``options`` (QEMU offers the guest the
    features both it and the back-end have, and its own switches)."""
    # STATUS: QEMU then shows the guest the link going down when the
    # back-end goes away (DPDK's back-end offers it too).
    return BackendConfig.net(options.queues, packed=options.packed,
                             mrg_rxbuf=options.mrg_rxbuf,
                             event_idx=options.event_idx, status=True)


def device_opts(options: GuestOptions) -> List[str]:
    """The virtio-net-pci properties for ``options``."""
    opts = ["romfile=", f"packed={'on' if options.packed else 'off'}",
            f"mrg_rxbuf={'on' if options.mrg_rxbuf else 'off'}",
            f"event_idx={'on' if options.event_idx else 'off'}"]
    if not options.msix:
        opts.append("vectors=0")
    return opts


def guest_spec_args(assets: GuestAssets, options: GuestOptions,
                    console: str) -> List[str]:
    """QEMU arguments beyond the VM's own: kernel, initramfs, CPUs and the
    console on socket ``console``."""
    return (["-kernel", assets.kernel, "-initrd", assets.initrd,
             "-append", f"console={assets.target.console} {KERNEL_ARGS}",
             "-smp", str(options.cpus)]
            + console_args(console))
