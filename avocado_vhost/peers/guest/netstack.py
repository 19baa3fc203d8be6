"""
The back-end's side of the wire for a real guest: a host at
:data:`HOST_IP` that answers ARP and ICMP echo, and sends UDP frames the
guest counts.

It hooks into a :class:`~avocado_vhost.vhost_user.net.Port`: every frame
the guest transmits passes :meth:`Responder.on_sent` (in the back-end's
thread); answers go on the port's wire and the back-end is poked to
deliver them.  Every frame is counted by kind, so a test can say "50
echo requests, 50 replies, nothing else".
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Callable, Dict, List

from avocado_vhost.vhost_user.net import Port, SentFrame

__all__ = ["Responder", "HOST_IP", "HOST_MAC", "GUEST_IP", "checksum"]

HOST_IP = "10.0.2.1"
HOST_MAC = bytes.fromhex("020000000001")
GUEST_IP = "10.0.2.15"
#: destination port of the frames the host sends to the guest (discard)
UDP_PORT = 9


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Responder:
    """ARP and ICMP echo for :data:`HOST_IP`, on ``port``.

    :param poke: called after answers were put on the wire (the back-end's
        ``poke``: deliver them now).
    """

    def __init__(self, port: Port, poke: Callable[[], None]):
        self.port = port
        self.poke = poke
        self.counts: Counter[str] = Counter()
        self.guest_mac = b""
        #: ICMP echo sequence numbers seen, in order (duplicates show)
        self.echo_seqs: List[int] = []
        #: the IPv4 identification of each of them: a seq seen twice with
        #: the same id is one frame read twice (a ring or memory fault), with
        #: another id a frame the guest really sent twice
        self.echo_ip_ids: List[int] = []
        #: the transmit ring each of them came off
        self.echo_rings: List[int] = []
        #: UDP frames to send the guest with every echo reply
        self.chatter = 0
        self._udp_seq = 0
        port.on_sent.append(self.on_sent)

    def wait_echoes(self, count: int, timeout: float) -> None:
        """Until ``count`` echo requests in all arrived (bounded)."""
        with self.port.cond:
            if not self.port.cond.wait_for(
                    lambda: self.counts["echo requests"] >= count, timeout):
                raise TimeoutError(f"waited {timeout}s for {count} echo "
                                   f"requests, saw {dict(self.counts)}")

    def on_sent(self, frames: List[SentFrame]) -> None:
        """Look at what the guest sent (port.cond is held)."""
        replies = []
        for frame in frames:
            reply = self._answer(frame.data, frame.ring)
            if reply is not None:
                replies.append(reply)
        if replies:
            self.port.wire.extend(replies)
            self.counts["replies"] += len(replies)
            self.poke()

    def _answer(self, data: bytes, ring: int) -> "bytes | None":
        if len(data) < 14:
            self.counts["runt"] += 1
            return None
        dst, src, ethertype = data[:6], data[6:12], data[12:14]
        if ethertype == b"\x08\x06" and len(data) >= 42:
            return self._arp(src, data[14:42])
        if ethertype == b"\x08\x00" and len(data) >= 34:
            return self._ipv4(dst, src, data[14:], ring)
        self.counts["other"] += 1
        return None

    def _arp(self, src: bytes, arp: bytes) -> "bytes | None":
        op = struct.unpack("!H", arp[6:8])[0]
        if op != 1 or arp[24:28] != _ip(HOST_IP):
            self.counts["arp other"] += 1
            return None
        self.counts["arp requests"] += 1
        self.guest_mac = src
        body = (arp[:6] + struct.pack("!H", 2) + HOST_MAC + _ip(HOST_IP)
                + arp[8:14] + arp[14:18])
        return src + HOST_MAC + b"\x08\x06" + body

    def _ipv4(self, dst: bytes, src: bytes, ip: bytes, ring: int
              ) -> "bytes | None":
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        if ip[9] != 1 or ip[16:20] != _ip(HOST_IP) or total > len(ip):
            self.counts["ip other"] += 1
            return None
        icmp = ip[ihl:total]
        if len(icmp) < 8 or icmp[0] != 8:
            self.counts["icmp other"] += 1
            return None
        self.counts["echo requests"] += 1
        self.echo_seqs.append(struct.unpack("!H", icmp[6:8])[0])
        self.echo_ip_ids.append(struct.unpack("!H", ip[4:6])[0])
        self.echo_rings.append(ring)
        if self.chatter:  # host-to-guest traffic paced by the guest's pings
            frames = self.udp_frames(self.chatter)
            self.port.wire.extend(frames)
            self.counts["udp sent"] += len(frames)
        reply = b"\0\0\0\0" + icmp[4:]
        reply = reply[:2] + struct.pack("!H", checksum(reply)) + reply[4:]
        header = bytearray(ip[:ihl])
        header[12:16], header[16:20] = ip[16:20], ip[12:16]
        header[8] = 64
        header[10:12] = b"\0\0"
        header[10:12] = struct.pack("!H", checksum(bytes(header)))
        return src + HOST_MAC + b"\x08\x00" + bytes(header) + reply

    def echo_anomalies(self, first: int, count: int) -> str:
        """What is wrong with the echo requests seen from index ``first``
        on, against seqs ``0 .. count-1`` each once: the seqs missing, each
        seq seen twice with its IPv4 ids and positions, and seqs out of
        order on one transmit ring ("" when nothing is wrong).  Each ring
        is a queue, in order; across rings virtio-net promises no order (a
        ping process that moves between vCPUs sends by both queues, and the
        back-end may take the later one first)."""
        seqs = self.echo_seqs[first:]
        ids = self.echo_ip_ids[first:]
        rings = self.echo_rings[first:]
        missing = sorted(set(range(count)) - set(seqs))
        where: Dict[int, List[str]] = {}
        for pos, (seq, ip_id) in enumerate(zip(seqs, ids)):
            where.setdefault(seq, []).append(f"#{pos} id {ip_id:#06x}")
        doubled = {seq: at for seq, at in where.items() if len(at) > 1}
        parts = []
        if missing:
            parts.append(f"missing seq {missing[:20]}")
        if doubled:
            parts.append("seen twice: " + "; ".join(
                f"seq {seq} ({', '.join(at)})"
                for seq, at in list(doubled.items())[:10]))
        for ring in sorted(set(rings)):
            mine = [seq for seq, r in zip(seqs, rings) if r == ring]
            if not parts and mine != sorted(mine):
                parts.append(f"out of order on ring {ring}: {mine[:40]}")
        return "; ".join(parts)

    def udp_frames(self, count: int, size: int = 100) -> List[bytes]:
        """``count`` UDP frames from the host to the guest (to its MAC, as
        learnt from its ARP request), numbered in their payload."""
        assert self.guest_mac, "the guest has not ARPed for the host yet"
        frames = []
        for _ in range(count):
            n = self._udp_seq
            self._udp_seq += 1
            payload = n.to_bytes(4, "big") + bytes(size - 4)
            udp = struct.pack("!HHHH", 4000, UDP_PORT, 8 + len(payload), 0)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp)
                             + len(payload), n & 0xFFFF, 0, 64, 17, 0,
                             _ip(HOST_IP), _ip(GUEST_IP))
            ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
            frames.append(self.guest_mac + HOST_MAC + b"\x08\x00" + ip
                          + udp + payload)
        return frames
