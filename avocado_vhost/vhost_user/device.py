"""
The narrow interface between a back-end and the device it hosts.

A device (the virtio-net data path of :mod:`.net`) sees the back-end only
through :class:`DeviceHost`: its name (for records), the device state
negotiated so far (memory table, dirty log, rings, features) and a way to
report an error.  It does not see connections, the trace, faults or the
back-end's lock discipline -- the back-end calls the device with its lock
held.  Like libvhost-user's ``VuDevIface`` the other way round: the device
is a plug-in, and this is all it may plug into.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Protocol

    from .state import DeviceState

    class DeviceHost(Protocol):
        """What a hosted device may use of its back-end."""

        @property
        def name(self) -> str: ...

        @property
        def state(self) -> "DeviceState": ...

        def record_error(self, text: str) -> None: ...
else:
    DeviceHost = object

__all__ = ["DeviceHost"]
