"""
Booting the real guest inside a test: the assets for the QEMU's target
(CANCEL where there are none), a VM that boots them with its console
connected, and a started :class:`~.run.GuestRun` once eth0 is up.

Functions of the test (:class:`avocado_vhost.harness.Harness`), which
keeps the test's life: every VM, back-end and console made here is torn
down by it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Tuple

from avocado_vhost.checks import triage
from avocado_vhost.errors import NotAvailable
from avocado_vhost.peers.qemu.spec import VMOptions
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.vhost_user import VhostUserBackend
from avocado_vhost.vhost_user.net import NetDevice, Port
from avocado_vhost.peers.guest import assets as guest_assets
from avocado_vhost.peers.guest.assets import GuestAssets
from avocado_vhost.peers.guest.boot import (GuestOptions, backend_config,
                                            device_opts, guest_spec_args)
from avocado_vhost.peers.guest.console import GuestConsole
from avocado_vhost.peers.guest.netstack import Responder
from avocado_vhost.peers.guest.run import GuestFailure, GuestRun

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from avocado_vhost.harness import Harness

__all__ = ["require_guest", "launch_guest_vm", "start_guest"]


def require_guest(test: "Harness") -> GuestAssets:
    """The real guest's kernel and initramfs for the QEMU's target
    (x86_64 or aarch64, under TCG); CANCEL with the reason where they are
    missing or cannot run."""
    test.require_arch(*guest_assets.ARCHES)
    if not test.caps.has_accel("tcg"):
        raise NotAvailable(f"the real guest needs TCG: "
                           f"{test.caps.accel_error('tcg')}")
    assets = guest_assets.load(test.caps.arch)  # AssetsMissing: CANCEL
    test.log.info("guest made of %s", guest_assets.describe(assets))
    return assets


def launch_guest_vm(test: "Harness", name: str, backend: VhostUserBackend,
                    options: GuestOptions, **spec: Unpack[VMOptions]
                    ) -> Tuple[VhostVM, GuestConsole]:
    """Launch a VM that boots the real guest (or, with ``incoming=``,
    waits for one), with its console connected; ``extra`` arguments (more
    devices) come after the guest's own."""
    assets = require_guest(test)
    console_sock = os.path.join(test.workdir_short, f"{name}.con")
    chosen: VMOptions = {
        **spec, "firmware": True, "accel": "tcg", "queues": options.queues,
        "device_opts": device_opts(options),
        "extra": guest_spec_args(assets, options, console_sock)
        + spec.get("extra", [])}
    vm = test.make_vm(name, backend.listener_path, **chosen)
    vm.launch()
    log = "console.log" if name == "guest" else f"{name}-console.log"
    console = GuestConsole(console_sock, os.path.join(test.logdir, log))
    test.cleanup(console.close)
    return vm, console


def start_guest(test: "Harness", options: GuestOptions, name: str = "guest",
                backend_name: str = "backend", port: Optional[Port] = None,
                **spec: Unpack[VMOptions]) -> GuestRun:
    """Boot the real guest on a vhost-user virtio-net served by a new
    back-end with a responder on its wire (``port``: shared with other
    back-ends, e.g. a migration destination); returns once eth0 is up.
    The console goes to ``console.log`` (``<name>-console.log`` for other
    VM names)."""
    port = port or Port()
    backend = test.make_backend(backend_name, backend_config(options),
                                device=NetDevice(port))
    responder = Responder(port, backend.poke)
    vm, console = launch_guest_vm(test, name, backend, options, **spec)
    run = GuestRun(vm, console, backend, port, responder, options)
    try:
        run.wait_ready(test.scaled(90))
    except GuestFailure:
        # QEMU died under the guest?  (Its console closes just before the
        # process is reaped: give it a moment.)
        if vm.wait_exit(test.scaled(2)) is not None:
            triage.qemu_died(test, vm, options.msix,
                           "while the guest's driver started the device")
        raise
    return run
