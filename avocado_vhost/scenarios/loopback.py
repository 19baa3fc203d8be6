"""
Frames through a back-end's rings and back, as the test's driver sees
them: transmitted frames must come out of the back-end's port, frames put
on its wire must land in the driver's receive buffers -- each byte for
byte, in order, with the virtio-net header.  Used wherever a test needs
the data path to move (plain rings, packed rings, behind a vIOMMU).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, List

from avocado_vhost.peers.qemu.driver import NET_HDR, DriverQueue
from avocado_vhost.vhost_user import VhostUserBackend
from avocado_vhost.vhost_user.net import Port
from avocado_vhost.virtio import NET_HDR_LEN

if TYPE_CHECKING:
    from avocado_vhost.harness import Harness

__all__ = ["frames", "transmit", "receive"]

#: frames posted per batch: the ring keeps room to reap
BATCH = 16


def frames(rng: random.Random, count: int, tag: bytes = b"") -> List[bytes]:
    """Frames of varied sizes (60..1514 bytes), each unique (``tag`` and
    its number first)."""
    out = []
    for i in range(count):
        size = rng.choice((60, 61, 64, 128, 500, 1000, 1514))
        head = tag + i.to_bytes(4, "big")
        out.append(head + rng.randbytes(size - len(head)))
    return out


def transmit(test: "Harness", port: Port, txq: DriverQueue,
             payloads: List[bytes], layout: str = "single") -> None:
    """Post ``payloads`` on the transmit queue a batch at a time; each
    must come out of ``port`` intact, and each buffer be used."""
    before = len(port.sent)
    for chunk in range(0, len(payloads), BATCH):
        batch = payloads[chunk:chunk + BATCH]
        txq.post_out([NET_HDR + f for f in batch], layout=layout)
        port.wait_sent(before + chunk + len(batch), timeout=test.scaled(10))
        done = txq.reap()
        test.assertEqual(len(done), len(batch),
                         f"the device used {len(done)} of the {len(batch)} "
                         f"buffers just transmitted ({layout}); see the "
                         "back-end trace")
    _same(test, [s.data for s in port.sent[before:]], payloads,
          f"transmitted ({layout}): the port saw", "the driver sent")


def receive(test: "Harness", backend: VhostUserBackend, port: Port,
            rxq: DriverQueue, payloads: List[bytes]) -> None:
    """Put ``payloads`` on ``port``'s wire a batch at a time, with receive
    buffers posted for them; each must land in the driver's buffers
    intact, after a virtio-net header."""
    before = sum(port.received.values())
    got = []
    for chunk in range(0, len(payloads), BATCH):
        batch = payloads[chunk:chunk + BATCH]
        rxq.post_in(len(batch))
        with port.cond:
            port.wire.extend(batch)
        backend.poke()
        port.wait_received(before + chunk + len(batch),
                           timeout=test.scaled(10))
        for head, length in rxq.reap():
            data = rxq.read_buffer(head, length)
            test.assertEqual(data[:NET_HDR_LEN], NET_HDR,
                             f"received buffer {head}: bad virtio-net header")
            got.append(data[NET_HDR_LEN:])
    _same(test, got, payloads, "received: the driver got",
          "the wire had")


def _same(test: "Harness", got: List[bytes], sent: List[bytes],
          seen_by: str, sent_by: str) -> None:
    """``got`` is ``sent``, frame for frame; the first difference named."""
    test.assertEqual(len(got), len(sent), f"{seen_by} {len(got)} frames, "
                     f"{sent_by} {len(sent)}")
    for i, (want, seen) in enumerate(zip(sent, got)):
        test.assertTrue(want == seen, f"{seen_by} frame {i} as "
                        f"{seen[:16].hex()}.. ({len(seen)} bytes), {sent_by} "
                        f"{want[:16].hex()}.. ({len(want)})")
