"""
What a back-end offers the front-end: :class:`BackendConfig`.

Kept apart from the back-end so that the proxy's judge, the CLI and the
device catalogue (:mod:`avocado_vhost.vhost_user.device_offers`) can build one without the
thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from ..virtio.features import VirtioFeature
from .message import ProtocolFeature
from .records import MAX_RECORDS
from .trace import MAX_ENTRIES

__all__ = ["BackendConfig", "NET_FEATURES", "NET_PROTOCOL_FEATURES",
           "MAX_RINGS", "MAX_MAPPED"]

#: What a virtio-net back-end offers by default: enough for QEMU to start
#: the device and to migrate it (LOG_ALL + LOG_SHMFD).
NET_FEATURES = (VirtioFeature.VERSION_1 | VirtioFeature.LOG_ALL
                | VirtioFeature.PROTOCOL_FEATURES
                | VirtioFeature.NOTIFY_ON_EMPTY)
NET_PROTOCOL_FEATURES = (ProtocolFeature.LOG_SHMFD | ProtocolFeature.MQ
                         | ProtocolFeature.REPLY_ACK)

#: QEMU's VIRTIO_QUEUE_MAX: no device has more rings
MAX_RINGS = 1024

#: what the back-end maps at most by default: 1 TiB of the 128 TiB a
#: process has (the suite's guests have up to a few GiB)
MAX_MAPPED = 1 << 40


@dataclass
class BackendConfig:
    """What the back-end offers; a test may change it between connections.

    :param features: virtio feature bits returned by GET_FEATURES.
    :param protocol_features: returned by GET_PROTOCOL_FEATURES.
    :param queue_num: GET_QUEUE_NUM answer (queue *pairs* for net).
    :param max_rings: highest ring index + 1 accepted (0: QEMU's maximum).
    :param max_mem_slots: GET_MAX_MEM_SLOTS answer.
    :param config: device config space served by GET/SET_CONFIG.
    :param message_timeout: bound on the arrival of a started message.
    :param max_records: problems of each kind kept (the rest counted).
    :param max_trace: trace entries kept (its start and its recent past).
    :param max_mapped: bytes of guest memory and dirty log the back-end
        maps at most; a memory table beyond it is refused with the reason
        (a front-end's sizes must not take the address space).
    :param unmap_replaced_log: take SET_LOG_BASE as DPDK's vhost library
        does -- the log in use is unmapped at once for the new one -- and
        record an error when a SET_LOG_BASE replaces a log that was in use
        (logging on, a ring running): a back-end whose data path writes
        the log from other threads, as DPDK's does, may then write an
        unmapped log and crash.  Off, a replaced log is just replaced.
    :param device_state: the back-end's internal state, which a source
        back-end saves into the migration (DEVICE_STATE); the destination
        records what it loads in its state's ``loaded_device_state``.
    :param device_state_wire: a fault: what a source writes to the pipe
        instead of its framed state (garbage, a truncated frame).
    :param resignal_on_call_switch: a ring signalled since its last call
        fd is signalled again on the new one (SET_VRING_CALL), as
        libvhost-user does: QEMU discards an interrupt raised between a
        ring's SET_VRING_KICK and its SET_VRING_CALL.  Off, a test sees
        what QEMU alone does.
    :param shared_objects: what this back-end exports (SHARED_OBJECT):
        UUID (16 bytes) -> the bytes of the object, served as a memfd to
        GET_SHARED_OBJECT (the spec's dma-buf; QEMU only passes it on).
    :param answer_unnamed_lookup: answer a GET_SHARED_OBJECT that names no
        UUID with the one object exported (a lenient exporter, to get past
        that front-end fault to what follows); off, it has no object.
    :param postcopy_register: register guest memory with the userfaultfd
        after POSTCOPY_LISTEN; False is a negative control (a back-end that
        reads pages which have not arrived yet).
    :param iotlb_invalidate: drop the IOTLB entries an IOTLB_MSG
        invalidation names; False is a negative control (a back-end that
        keeps translating through a mapping the guest took away).
    :param judge: this back-end only judges a conversation another
        back-end answers (the proxy's judge): what it refuses or cannot
        answer is recorded and never ends the connection, so that every
        request of the conversation is judged to its end.
    """

    features: int = int(NET_FEATURES)
    protocol_features: int = int(NET_PROTOCOL_FEATURES)
    queue_num: int = 1
    max_rings: int = 0
    max_mem_slots: int = 32
    config: bytes = b""
    message_timeout: float = 5.0
    unmap_replaced_log: bool = False
    judge: bool = False
    resignal_on_call_switch: bool = True
    device_state: bytes = b""
    device_state_wire: Optional[Callable[[bytes], bytes]] = None
    shared_objects: Dict[bytes, bytes] = field(default_factory=dict)
    answer_unnamed_lookup: bool = False
    postcopy_register: bool = True
    iotlb_invalidate: bool = True
    max_records: int = MAX_RECORDS
    max_trace: int = MAX_ENTRIES
    max_mapped: int = MAX_MAPPED

    @classmethod
    def net(cls, pairs: int = 1, *, indirect: bool = True,
            packed: bool = False, event_idx: bool = False,
            mrg_rxbuf: bool = False, status: bool = False,
            **options: Any) -> "BackendConfig":
        """A virtio-net offer for ``pairs`` queue pairs: its two rings per
        pair, MQ and CTRL_VQ with more than one pair (virtio: MQ needs the
        control queue), and the ring and net features asked for;
        ``options`` are other fields (``unmap_replaced_log=True``)."""
        features = int(NET_FEATURES)
        for wanted, bits in (
                (indirect, VirtioFeature.RING_INDIRECT_DESC),
                (packed, VirtioFeature.RING_PACKED),
                (event_idx, VirtioFeature.RING_EVENT_IDX),
                (mrg_rxbuf, VirtioFeature.NET_F_MRG_RXBUF),
                (status, VirtioFeature.NET_F_STATUS),
                (pairs > 1, VirtioFeature.NET_F_MQ
                 | VirtioFeature.NET_F_CTRL_VQ)):
            if wanted:
                features |= int(bits)
        return cls(features=features, queue_num=pairs, max_rings=2 * pairs,
                   **options)

    @property
    def ring_limit(self) -> int:
        """Ring indexes at and above this are refused."""
        return self.max_rings or MAX_RINGS
