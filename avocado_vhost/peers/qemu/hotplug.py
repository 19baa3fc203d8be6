"""
PCI hot-plug and hot-unplug of a device, with the test as the guest.

Plugging needs nothing from the guest (``device_add``).  Unplugging does:
QEMU's ``device_del`` only *asks* the guest to let go of the device, and
the device goes only when the guest ejects it.  On x86's ``pc`` machine
the guest's ACPI code does that by writing the slot's bit into the PIIX4
PCI hot-plug controller's eject register (I/O port 0xAE08, QEMU's
``hw/acpi/pcihp.c``); the test writes it over qtest, as QEMU's own libqos
does (``qpci_unplug_acpi_device_test``), and then waits for QEMU's
``DEVICE_DELETED`` event.  Other machines (``virt``: PCIe native hot-plug
through a root port) are not driven here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from qemu.qmp import ExecuteError

from avocado_vhost.errors import Misbehaved
from avocado_vhost.peers.qemu.platform import Platform
from avocado_vhost.peers.qemu.qtest import QtestLink
from avocado_vhost.peers.qemu.spec import TRANSITIONAL
from avocado_vhost.peers.qemu.vm import VhostVM

__all__ = ["HotplugError", "ACPI_PCIHP_EJECT", "ACPI_MEMHP_BASE", "unplug",
           "plug", "can_unplug", "drain_rcu", "plug_dimm", "unplug_dimm"]

#: PIIX4's ACPI PCI hot-plug eject register (ACPI_PCIHP_ADDR 0xAE00 +
#: PCI_EJ_BASE 0x08): a 1 in bit ``slot`` ejects the device in that slot
ACPI_PCIHP_EJECT = 0xAE08

#: the pc machine's ACPI memory hot-plug registers (docs/specs/
#: acpi_mem_hotplug.rst): a write of the DIMM slot at +0 selects it, a
#: write of 8 (eject) to its control byte at +0x14 removes it, which is
#: what the guest's _EJ0 method does
ACPI_MEMHP_BASE = 0xA00
_MEMHP_EJECT = 8


class HotplugError(Misbehaved):
    """A plug or unplug did not happen (QEMU's answer is in the text)."""


def can_unplug(platform: Platform) -> Optional[str]:
    """None when the test can eject a device on ``platform``; else why
    not."""
    if platform.machine != "pc":
        return (f"hot-unplug is driven through the pc machine's ACPI PCI "
                f"hot-plug register (x86_64); {platform.machine} has none")
    return None


def unplug(vm: VhostVM, device_id: str, slot: int, timeout: float) -> None:
    """``device_del`` ``device_id`` (in PCI slot ``slot`` of bus 0), eject
    it as the guest's ACPI code would, and wait for ``DEVICE_DELETED``.

    :raise HotplugError: QEMU did not delete the device within ``timeout``.
    """
    def eject(qtest: QtestLink) -> None:
        qtest.outl(ACPI_PCIHP_EJECT, 1 << slot)
    _delete(vm, device_id, eject, timeout)


def _delete(vm: VhostVM, device_id: str, eject: Callable[[QtestLink], None],
            timeout: float) -> None:
    """``device_del``, then ``eject`` as the guest's ACPI code would, then
    wait for ``DEVICE_DELETED``."""
    why = can_unplug(vm.spec.platform)
    if why is not None:
        raise HotplugError(why)
    if vm.qtest is None:
        raise HotplugError("hot-unplug needs the test's qtest link")
    vm.qmp("device_del", id=device_id)
    eject(vm.qtest)
    event = vm.events_or_exit([("DEVICE_DELETED",
                                {"data": {"device": device_id}})],
                              timeout, f"DEVICE_DELETED of {device_id}")
    if event is None:
        raise HotplugError(f"QEMU exited ({vm.exitcode}) while {device_id} "
                           "was being unplugged")


def drain_rcu(vm: VhostVM) -> None:
    """Return once QEMU has run every RCU callback queued so far.

    QEMU frees much of an unplugged device through RCU callbacks, on its
    RCU thread, some time after the QMP command that removed it: a defect
    there (a use after free, a node queued twice) strikes later, at an
    unknown moment.  QMP has no command to wait for them, but a
    ``device_add`` that fails calls ``drain_call_rcu()`` before answering
    (``qmp_device_add`` in system/qdev-monitor.c: "user might expect that
    this interface will finish its job completely once qmp command returns
    result"), so a ``device_add`` of a driver that does not exist is the
    barrier.  A QEMU that dies there raises what its monitor raises.
    """
    try:
        vm.qmp("device_add", driver="avocado-vhost-rcu-barrier")
    except ExecuteError:
        return  # the expected refusal, after the drain
    raise HotplugError("QEMU added a device named "
                       "'avocado-vhost-rcu-barrier'")


def plug(vm: VhostVM, driver: str, device_id: str, slot: int,
         **props: Any) -> None:
    """``device_add`` a ``driver`` device as ``device_id`` in PCI slot
    ``slot`` of bus 0 (a ``romfile`` is never loaded: the test is the
    guest)."""
    args: Dict[str, Any] = {"driver": driver, "id": device_id,
                            "addr": f"0x{slot:x}", "romfile": ""}
    if driver in TRANSITIONAL:
        args["disable-legacy"] = "on"  # the test's driver is modern-only
    args.update(props)
    vm.qmp("device_add", **args)


def plug_dimm(vm: VhostVM, dimm_id: str, size: int, qom: str) -> None:
    """Hot-plug a ``pc-dimm`` ``dimm_id`` of ``size`` bytes, backed by a
    shared memory backend of type ``qom`` (``memory-backend-memfd`` ...),
    named ``<dimm_id>-mem`` (as ``ram_ranges`` knows it): a vhost-user
    back-end can only map memory shared with it."""
    vm.qmp("object-add", **{"qom-type": qom, "id": f"{dimm_id}-mem",
                            "size": size, "share": True})
    vm.qmp("device_add", driver="pc-dimm", id=dimm_id,
           memdev=f"{dimm_id}-mem")


def unplug_dimm(vm: VhostVM, dimm_id: str, timeout: float) -> None:
    """``device_del`` DIMM ``dimm_id``, eject it as the guest's ACPI code
    would (select its slot, write the eject bit) and wait for
    ``DEVICE_DELETED``; then remove its memory backend.

    :raise HotplugError: not on this machine, or QEMU did not delete it.
    """
    slot = int(str(vm.qmp("qom-get", path=dimm_id, property="slot")))

    def eject(qtest: QtestLink) -> None:
        qtest.outl(ACPI_MEMHP_BASE, slot)
        qtest.outb(ACPI_MEMHP_BASE + 0x14, _MEMHP_EJECT)
    _delete(vm, dimm_id, eject, timeout)
    vm.qmp("object-del", id=f"{dimm_id}-mem")
