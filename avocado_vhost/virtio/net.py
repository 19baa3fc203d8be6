"""
The virtio-net header ("Device Operation" of the network device).

With VIRTIO_F_VERSION_1 (or MRG_RXBUF) every frame on a virtqueue is
preceded by ``struct virtio_net_hdr_v1``: flags, gso_type, hdr_len,
gso_size, csum_start, csum_offset (10 bytes) and num_buffers (u16), 12
bytes in all.  This project sends no offloads, so only num_buffers varies.
"""

from __future__ import annotations

__all__ = ["NET_HDR_LEN", "net_header"]

#: virtio_net_hdr_v1: the header size of a VERSION_1 device
NET_HDR_LEN = 12


def net_header(num_buffers: int = 1) -> bytes:
    """A header with no offloads, for a frame spread over ``num_buffers``
    buffers (the driver sends 1; the device writes how many it used)."""
    return bytes(10) + num_buffers.to_bytes(2, "little")
