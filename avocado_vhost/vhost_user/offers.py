"""
Named offers: which protocol features the back-end puts on the table.

What a back-end offers decides which half of QEMU's front-end runs.  A
back-end that offers only LOG_SHMFD, MQ and REPLY_ACK keeps QEMU on its
legacy paths (one SET_MEM_TABLE, no status, no reset, no back-end
channel); every back-end in use today (libvhost-user, rust-vmm's
vhost-user-backend, DPDK) offers memory slots, status and the back-end
channel, and QEMU's code for those is where its recent vhost-user bugs
were.  So the suite runs as a capability matrix: each test on each offer
it applies to, chosen with ``-p offer=NAME`` (or a yaml-to-mux variant):

``modern`` (the default)
    what a current back-end offers: CONFIGURE_MEM_SLOTS, STATUS,
    RESET_DEVICE, BACKEND_REQ on top of the device's own offer (MQ,
    LOG_SHMFD, REPLY_ACK; CONFIG where the device has a config space).
``legacy``
    the minimum: VHOST_USER_F_PROTOCOL_FEATURES with no protocol feature
    in it (no dirty-log fd, so no migration; one queue pair; no acks).
    A back-end without that bit at all is legal too (its rings start
    enabled), but QEMU's vhost-user net cannot start one (since 2.7,
    bfc6cf31ce: vhost_net_start restores the ring enable state with
    SET_VRING_ENABLE, which fails without the bit); that is one test of
    its own (``test_smoke.py``), not a column.
``no-reply-ack``
    the modern offer without REPLY_ACK (QEMU's other branch of every
    synchronous write, the one its own qtest takes).
``no-mq``
    the modern offer without MQ (one queue pair only).

A test that cannot run without a feature an offer removes says so with
the harness's ``require_protocol`` and ends as a CANCEL naming the offer
and the reason: a matrix cell is PASS, FAIL or a CANCEL that says why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict

from .config import BackendConfig
from .message import ProtocolFeature

__all__ = ["Offer", "OFFERS", "DEFAULT_OFFER", "MODERN_EXTRAS", "ORDINARY",
           "asked_on_purpose", "names"]

#: what a current back-end offers beyond the device's own protocol features
MODERN_EXTRAS = (ProtocolFeature.CONFIGURE_MEM_SLOTS | ProtocolFeature.STATUS
                 | ProtocolFeature.RESET_DEVICE | ProtocolFeature.BACKEND_REQ)

_ALL = ProtocolFeature(sum(ProtocolFeature))

#: what the offers are about; a protocol feature outside these in a
#: back-end's configuration was asked for by the test, on purpose
ORDINARY = (ProtocolFeature.LOG_SHMFD | ProtocolFeature.MQ
            | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG
            | MODERN_EXTRAS)


def asked_on_purpose(config: BackendConfig) -> int:
    """The protocol features ``config`` offers beyond :data:`ORDINARY`: a
    test that offers NET_MTU to test NET_SET_MTU cannot run on an offer
    that takes it away."""
    return config.protocol_features & ~ORDINARY


def names(features: int) -> str:
    """``features`` as ``MQ|REPLY_ACK`` (IntFlag's own str() is a number
    on newer Pythons)."""
    return "|".join(str(f.name) for f in ProtocolFeature if f & features) \
        or "none"


@dataclass(frozen=True)
class Offer:
    """One column of the capability matrix.

    :param name: as given to ``-p offer=``.
    :param summary: one line for reports.
    :param adds: protocol features added to every back-end's offer.
    :param removes: protocol features taken from every back-end's offer
        (after ``adds``).
    """

    name: str
    summary: str
    adds: ProtocolFeature = ProtocolFeature(0)
    removes: ProtocolFeature = ProtocolFeature(0)

    def apply(self, config: BackendConfig) -> BackendConfig:
        """``config`` as this offer changes it (a copy).  CONFIG is added
        only to a device that has a config space to serve."""
        adds = self.adds
        if config.config:
            adds |= ProtocolFeature.CONFIG
        protocol = int((config.protocol_features | adds) & ~self.removes)
        return dataclasses.replace(config, protocol_features=protocol)

    def lacks(self, wanted: int) -> ProtocolFeature:
        """The features of ``wanted`` this offer takes away."""
        return ProtocolFeature(wanted & self.removes)


OFFERS: Dict[str, Offer] = {o.name: o for o in (
    Offer("modern", "memory slots, status, reset, back-end channel on top "
          "of the device's offer", adds=MODERN_EXTRAS),
    Offer("legacy", "no protocol feature", removes=_ALL),
    Offer("no-reply-ack", "modern without REPLY_ACK", adds=MODERN_EXTRAS,
          removes=ProtocolFeature.REPLY_ACK),
    Offer("no-mq", "modern without MQ", adds=MODERN_EXTRAS,
          removes=ProtocolFeature.MQ),
)}

DEFAULT_OFFER = "modern"
