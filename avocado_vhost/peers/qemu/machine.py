"""
``QEMUMachine`` as the suite needs it: a QMP negotiation that survives an
early event, and a failed launch that ends QEMU at once.

**The QMP race (QEMU 10.0 with qemu.qmp 0.0.6).**  QEMU runs the
``qmp_capabilities`` handler in a bottom half (``do_qmp_dispatch_bh`` in
``qapi/qmp-dispatch.c``): the handler leaves negotiation mode, and the reply
is sent only later, when the dispatcher coroutine runs again.  Anything the
main loop does in between may emit an event -- a vhost-user connection
coming up emits ``NETDEV_VHOST_USER_CONNECTED`` (``net/vhost-user.c``) -- and
since the monitor is already in command mode the event goes out *before*
the reply.  The QMP spec lets the server send events at any time in command
mode, so the client must accept one there; qemu.qmp 0.0.6's
``QMPClient._negotiate`` instead asserts that the first message after its
command is the reply, and fails with ``NegotiationError``.  The fault
sweep met it on 4 runs of 4 (the drop at SET_VRING_CALL makes QEMU
reconnect just then).  The fault is qemu.qmp's; the suite tolerates it:
events that arrive before the reply are kept, delivered to the client's
event listeners once negotiation is done, and logged.

**A failed launch.**  When ``QEMUMachine._launch`` fails after QEMU started
(QMP never came up), ``QEMUMachine.launch`` waits up to 30 s for QEMU to
exit by itself, then fails with "Could not perform graceful shutdown".
QEMU that has not answered QMP has nothing to save: it is killed at once,
so the launch fails in milliseconds with QEMU's own output.

**QEMU that exits at once** (a bad option, memory it cannot get) never
connects to the QMP socket, and ``accept`` would wait for its whole
timeout.  A watcher thread waits for QEMU's exit during the launch and, if
it comes first, connects to the QMP socket itself and hangs up: the
accept ends with an error at once, and the launch fails with QEMU's exit
code and output.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import types
from typing import Any, Dict, List, Optional

from qemu.machine import QEMUMachine
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import NegotiationError

from avocado_vhost.peers.qemu.qtest import QtestLink

__all__ = ["VhostMachine", "early_events", "tolerate_early_events"]

LOG = logging.getLogger(__name__)


async def _tolerant_negotiate(self: QMPClient) -> None:
    """qemu.qmp's ``_negotiate``, accepting events before the reply."""
    arguments: Dict[str, List[str]] = {}
    if self._greeting and "oob" in self._greeting.QMP.capabilities:
        arguments.setdefault("enable", []).append("oob")
    await self._send(self.make_execute_msg("qmp_capabilities",
                                           arguments=arguments))
    early = []
    while True:
        reply = await self._recv()
        if "event" not in reply:
            break
        early.append(reply)
    if "return" not in reply or "error" in reply:
        raise NegotiationError("Negotiation failed",
                               AssertionError(f"qmp_capabilities: {reply}"))
    for event in early:
        LOG.warning(
            "QMP: event %s arrived before the qmp_capabilities reply; "
            "qemu.qmp 0.0.6 would fail negotiation on it (see "
            "avocado_vhost.peers.qemu.machine); kept and delivered",
            event.get("event"))
        self.early_events.append(event)  # type: ignore[attr-defined]
        await self._event_dispatch(event)


def tolerate_early_events(conn: Any) -> None:
    """Make a ``QEMUMonitorProtocol`` accept events before the
    ``qmp_capabilities`` reply.  Its client object already exists (and, in
    server mode, already listens), so only its negotiation step is
    replaced, on this instance alone."""
    client = conn._qmp
    client.early_events = []
    client._negotiate = types.MethodType(_tolerant_negotiate, client)


def early_events(machine: QEMUMachine) -> List[Dict[str, Any]]:
    """Events a VM's QMP server sent before its ``qmp_capabilities`` reply
    (the race above), so that a test can say it happened."""
    conn = getattr(machine, "_qmp_connection", None)
    client = getattr(conn, "_qmp", None)
    return list(getattr(client, "early_events", []))


class VhostMachine(QEMUMachine):
    """A ``QEMUMachine`` that survives the QMP race, fails fast, and owns
    the test's qtest link through its own launch hooks: accepted once QMP
    is up (``_post_launch``), closed with the machine (``_post_shutdown``).

    :param qtest: the link QEMU connects to (``-qtest``), if any.
    """

    def __init__(self, *args: Any, qtest: Optional[QtestLink] = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._qtest = qtest

    def _soft_shutdown(self, timeout: Optional[int]) -> None:
        """QEMUMachine's, with "quit" bounded by ``timeout`` too: a QEMU
        whose main loop is stuck (in a vhost-user read, say) never answers
        it, and QEMUMachine would wait for the answer forever; past the
        timeout the hard shutdown (SIGKILL) follows."""
        if self._qmp_connection is not None and timeout is not None:
            self._qmp_connection.settimeout(timeout)
        super()._soft_shutdown(timeout)

    def _post_shutdown(self) -> None:
        if self._qtest is not None:
            self._qtest.close()
        super()._post_shutdown()

    def _pre_launch(self) -> None:
        super()._pre_launch()
        if self._qmp_connection is not None:
            tolerate_early_events(self._qmp_connection)

    def _post_launch(self) -> None:
        self._connect_qmp()
        if self._qtest is not None:
            self._qtest.accept()

    def _connect_qmp(self) -> None:
        """QEMUMachine's QMP connection, ended early if QEMU exits first."""
        popen, address = self._popen, self._monitor_address
        if popen is None or not isinstance(address, str):
            super()._post_launch()
            return
        pidfd = os.pidfd_open(popen.pid)  # readable once QEMU has exited
        stop_r, stop_w = os.pipe()

        def watch() -> None:
            ready, _, _ = select.select([pidfd, stop_r], [], [])
            if stop_r not in ready:
                LOG.warning("%s: QEMU exited before its QMP connection "
                            "came up; ending the wait for it", self._name)
                with socket.socket(socket.AF_UNIX) as poke:
                    try:
                        poke.connect(address)
                    except OSError:
                        pass

        watcher = threading.Thread(target=watch, name=f"{self._name}-exit",
                                   daemon=True)
        watcher.start()
        try:
            super()._post_launch()
        finally:
            os.write(stop_w, b"x")
            watcher.join()
            for fd in (pidfd, stop_r, stop_w):
                os.close(fd)

    def _launch(self) -> None:
        try:
            super()._launch()
        except BaseException:
            popen = self._popen
            if popen is not None and popen.poll() is None:
                LOG.warning("%s: launch failed with QEMU running; killing "
                            "it (pid %d) instead of waiting for it to exit",
                            self._name, popen.pid)
                popen.kill()
            raise
