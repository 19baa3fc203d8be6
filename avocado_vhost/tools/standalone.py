"""
One VM with a back-end, outside Avocado: for benchmark scripts and
experiments.

``with standalone_vm(backend) as vm:`` gives a launched VM whose vhost-user
socket the back-end listens on, in a private temp dir; leaving the block
shuts QEMU down, stops the back-end and removes the dir, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import TYPE_CHECKING, Iterator, Optional

from avocado_vhost.peers.qemu.binary import find_binary, probe
from avocado_vhost.peers.qemu.platform import platform_for
from avocado_vhost.peers.qemu.spec import VMOptions, VMSpec, default_tmpdir
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.plumbing.tmpdirs import make_private_tmpdir
from avocado_vhost.vhost_user import VhostUserBackend


if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["standalone_vm"]


@contextlib.contextmanager
def standalone_vm(backend: VhostUserBackend, qemu_bin: Optional[str] = None,
                  name: str = "vm", qtest: bool = True, launch: bool = True,
                  **spec: Unpack[VMOptions]) -> Iterator[VhostVM]:
    """A VM served by ``backend`` (started here, stopped on exit).

    :param launch: launch it here (else the caller calls ``vm.launch()``,
        e.g. to time it).
    :param spec: further :class:`VMSpec` fields (``firmware``, ``queues``).
    """
    workdir = make_private_tmpdir(default_tmpdir())
    vm: Optional[VhostVM] = None
    try:
        sock = os.path.join(workdir, "vu.sock")
        backend.listen(sock)
        backend.start()
        binary = find_binary(qemu_bin)
        vm = VhostVM(VMSpec(name, binary, workdir, sock,
                            platform=platform_for(probe(binary).arch),
                            **spec), workdir, qtest=qtest)
        if launch:
            vm.launch()
        yield vm
    finally:
        if vm is not None:
            vm.shutdown()
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)
