"""
QEMU as the server of the vhost-user socket (``server=on``): the back-end
connects as soon as QEMU waits for it, and reconnects whenever a
connection ends -- the way a back-end restarts under a running QEMU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple

from avocado_vhost.peers.qemu.spec import VMOptions
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.vhost_user import BackendConfig, Fault, VhostUserBackend
from avocado_vhost.vhost_user.device import Device

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from avocado_vhost.harness import Harness

__all__ = ["launch_server_mode"]


def launch_server_mode(test: "Harness", name: str = "vm",
                       backend_name: str = "backend",
                       faults: Sequence[Fault] = (),
                       on_connect: Optional[Callable[..., None]] = None,
                       config: Optional[BackendConfig] = None,
                       data_path: Optional[Device] = None,
                       **spec: Unpack[VMOptions]
                       ) -> Tuple[VhostVM, VhostUserBackend]:
    """A launched VM whose chardev listens, and the back-end connected to
    it.  ``faults`` and the per-connection hook ``on_connect`` are in
    place before QEMU's first message; ``data_path`` is the back-end's
    device (``spec``'s ``device`` is QEMU's)."""
    backend = test.make_backend(backend_name, config, listen=False,
                                device=data_path)
    backend.faults.extend(faults)
    backend.on_connect = on_connect
    path = test.socket_path(f"{name}-vhost")
    server: VMOptions = {**spec, "vhost_server": True}
    vm = test.make_vm(name, path, **server)
    backend.reconnect_path = path
    vm.launch(connect=backend.connect, timeout=test.scaled(30))
    return vm, backend
