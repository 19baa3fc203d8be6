"""
One running real guest and what a test does with it: bring eth0 up, ping
the back-end's host, send it frames and read its counters -- every wait on
the guest's console, bounded, and every failure with the console's tail and
the back-end trace's tail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

from avocado_vhost.errors import Misbehaved
from avocado_vhost.plumbing.phases import phase
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.vhost_user import VhostUserBackend
from avocado_vhost.vhost_user.net import Port
from avocado_vhost.peers.guest.assets import READY
from avocado_vhost.peers.guest.boot import GuestOptions
from avocado_vhost.peers.guest.console import ConsoleTimeout, GuestConsole
from avocado_vhost.peers.guest.netstack import GUEST_IP, HOST_IP, Responder

__all__ = ["GuestRun", "GuestFailure", "PING_SUMMARY"]

PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) packets received")
_RX = "/sys/class/net/eth0/statistics/rx_packets"


class GuestFailure(Misbehaved):
    """The guest did not reach a state a test expected."""


@dataclass
class GuestRun:
    """A booted guest with its back-end, port and responder."""

    vm: VhostVM
    console: GuestConsole
    backend: VhostUserBackend
    port: Port
    responder: Responder
    options: GuestOptions

    def explain(self, what: str) -> str:
        """A failure message: what went wrong, the console's tail and the
        back-end's last requests."""
        if "Kernel panic" in self.console.tail(1 << 20):
            what = f"{what} (THE GUEST KERNEL PANICKED: see the console)"
        return (f"{what}\n--- guest console (tail) ---\n"
                f"{self.console.tail(1200)}\n--- back-end {self.backend.name}"
                f" (last requests) ---\n{self.backend.trace.tail(15)}")

    def run(self, command: str, timeout: float = 30.0) -> str:
        """A guest shell command that must succeed; its output."""
        try:
            return self.console.run(command, timeout)[1]
        except (ConsoleTimeout, AssertionError) as exc:
            raise GuestFailure(self.explain(str(exc))) from None

    def wait_ready(self, timeout: float, since: int = 0) -> None:
        """Until /init (started after console position ``since``) loaded
        the driver, and eth0 has carrier and its address."""
        try:
            with phase("guest-boot"):
                self.console.wait_for(READY, timeout, "the guest's /init",
                                      since=since)
        except ConsoleTimeout as exc:
            raise GuestFailure(self.explain(str(exc))) from None
        if "AVH-INSMOD-FAILED" in self.console.tail(4000):
            raise GuestFailure(self.explain("a module did not load"))
        with phase("link-up"):
            self.link_up(timeout)

    def link_up(self, timeout: float = 30.0) -> None:
        """eth0 up with the guest's address, carrier on (bounded in the
        guest: it asks the kernel, the test waits for the answer)."""
        self.run("ip link set eth0 up && "
                 f"(ip addr show eth0 | grep -q {GUEST_IP} || "
                 f"ip addr add {GUEST_IP}/24 dev eth0)")
        self.run("i=0; until [ \"$(cat /sys/class/net/eth0/carrier)\" = 1 ];"
                 " do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.1; done",
                 timeout)

    def ping(self, count: int, interval: float = 0.02,
             timeout: float = 60.0) -> Tuple[int, int]:
        """``ping`` the back-end's host from the guest: (transmitted,
        received)."""
        return self.ping_summary(self.run(
            f"ping -c {count} -i {interval} -W 5 {HOST_IP} | tail -n 3",
            timeout))

    def ping_summary(self, out: str) -> Tuple[int, int]:
        """(transmitted, received) from ping's last lines in ``out``.

        :raise GuestFailure: there is no summary (ping never ended: the
            guest, its console and its panic, if any, are in the message).
        """
        match = PING_SUMMARY.search(out)
        if match is None:
            raise GuestFailure(self.explain(f"no ping summary in: {out}"))
        return int(match.group(1)), int(match.group(2))

    def rx_packets(self) -> int:
        return int(self.run(f"cat {_RX}").split()[-1])

    def send_to_guest(self, count: int, timeout: float = 30.0) -> int:
        """The host sends ``count`` UDP frames; returns how many more
        frames the guest's eth0 counted (waits until it counted them all,
        or the bound)."""
        before = self.rx_packets()
        frames = self.responder.udp_frames(count)
        delivered = sum(self.port.received.values())
        taken = self.port.offer(frames)
        if taken != count:
            raise GuestFailure(f"the port took {taken} of {count} frames")
        self.backend.poke()
        try:
            self.port.wait_received(delivered + count, timeout)
        except TimeoutError as exc:
            raise GuestFailure(self.explain(str(exc))) from None
        want = before + count
        self.run(f"i=0; until [ $(cat {_RX}) -ge {want} ]; do i=$((i+1)); "
                 "[ $i -gt 300 ] && break; sleep 0.05; done", timeout)
        return self.rx_packets() - before
