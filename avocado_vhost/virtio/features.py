"""
Virtio feature bits (virtio 1.x, "Feature Bits" and "Reserved Feature
Bits"), plus the two vhost ones that travel in the same 64-bit word.

One enum for all: a vhost-user back-end offers device bits (0-23),
transport bits (24-40) and vhost's LOG_ALL and PROTOCOL_FEATURES in one
GET_FEATURES answer, and the driver acks them in one word.
"""

from __future__ import annotations

import enum
from typing import Type

__all__ = ["VirtioFeature", "feature_names"]


class VirtioFeature(enum.IntFlag):
    """The feature bits this project offers, negotiates or checks."""

    NET_F_CSUM = 1 << 0
    NET_F_GUEST_CSUM = 1 << 1
    NET_F_MTU = 1 << 3
    NET_F_MAC = 1 << 5
    NET_F_MRG_RXBUF = 1 << 15
    NET_F_STATUS = 1 << 16
    NET_F_CTRL_VQ = 1 << 17
    NET_F_MQ = 1 << 22
    NOTIFY_ON_EMPTY = 1 << 24
    LOG_ALL = 1 << 26  # VHOST_F_LOG_ALL
    ANY_LAYOUT = 1 << 27
    RING_INDIRECT_DESC = 1 << 28
    RING_EVENT_IDX = 1 << 29
    PROTOCOL_FEATURES = 1 << 30  # VHOST_USER_F_PROTOCOL_FEATURES
    VERSION_1 = 1 << 32
    ACCESS_PLATFORM = 1 << 33  # a.k.a. IOMMU_PLATFORM
    RING_PACKED = 1 << 34
    IN_ORDER = 1 << 35
    RING_RESET = 1 << 40


def feature_names(value: int, flags: Type[enum.IntFlag] = VirtioFeature
                  ) -> str:
    """Render a feature mask as ``NAME|NAME|bit40`` for traces and errors."""
    names = []
    for bit in range(64):
        if value & (1 << bit):
            member = flags._value2member_map_.get(1 << bit)
            names.append(member.name if member is not None else f"bit{bit}")
    return "|".join(names) or "0"
