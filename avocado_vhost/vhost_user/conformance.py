"""
Conformance rules: the front-end's conduct judged against the vhost-user spec.

Each rule looks at one decoded request and the device state *before* the
request is applied, and returns a description of the violation or ``None``.
A rule is known by its identifier, its function's name spelt with hyphens
(``features-subset``): the back-end records every violation with the rule
and the message that caused it, and tests and allow-lists name the rule
they expect, never its text.

Rules only flag what the spec forbids, not what QEMU happens to do
differently from other front-ends: QEMU sends GET_FEATURES, protocol
feature negotiation, GET_QUEUE_NUM and GET_MAX_MEM_SLOTS before SET_OWNER;
it sends SET_VRING_ADDR to a running ring to switch used-ring logging on;
and with multiqueue net it repeats feature negotiation per queue pair.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, List, NamedTuple, Optional

from .message import (FLAG_NEED_REPLY, MAX_MEM_REGIONS, VRING_IDX_MASK, Header,
                      MemoryTable, Payload, ProtocolFeature, Request, U64,
                      VirtioFeature, VringAddr, VringState, LogDescription,
                      feature_names)
from .state import DeviceState

__all__ = ["Rule", "RULES", "RULE_SCOPE", "REQUIRED_PROTOCOL_FEATURE",
           "Breach", "rule_id", "FRONT_END_RULES", "FDS_WITH_THE_HEADER",
           "check"]

Rule = Callable[[Request, Payload, Header, DeviceState], Optional[str]]

#: A request is only legal once this protocol feature is negotiated
#: (spec: the feature's own section and the request's description).
REQUIRED_PROTOCOL_FEATURE: Dict[Request, ProtocolFeature] = {
    Request.GET_QUEUE_NUM: ProtocolFeature.MQ,
    Request.SEND_RARP: ProtocolFeature.RARP,
    Request.NET_SET_MTU: ProtocolFeature.NET_MTU,
    Request.SET_BACKEND_REQ_FD: ProtocolFeature.BACKEND_REQ,
    Request.SET_VRING_ENDIAN: ProtocolFeature.CROSS_ENDIAN,
    Request.GET_CONFIG: ProtocolFeature.CONFIG,
    Request.SET_CONFIG: ProtocolFeature.CONFIG,
    Request.CREATE_CRYPTO_SESSION: ProtocolFeature.CRYPTO_SESSION,
    Request.CLOSE_CRYPTO_SESSION: ProtocolFeature.CRYPTO_SESSION,
    Request.POSTCOPY_ADVISE: ProtocolFeature.PAGEFAULT,
    Request.POSTCOPY_LISTEN: ProtocolFeature.PAGEFAULT,
    Request.POSTCOPY_END: ProtocolFeature.PAGEFAULT,
    Request.GET_INFLIGHT_FD: ProtocolFeature.INFLIGHT_SHMFD,
    Request.SET_INFLIGHT_FD: ProtocolFeature.INFLIGHT_SHMFD,
    Request.RESET_DEVICE: ProtocolFeature.RESET_DEVICE,
    Request.VRING_KICK: ProtocolFeature.INBAND_NOTIFICATIONS,
    Request.GET_MAX_MEM_SLOTS: ProtocolFeature.CONFIGURE_MEM_SLOTS,
    Request.ADD_MEM_REG: ProtocolFeature.CONFIGURE_MEM_SLOTS,
    Request.REM_MEM_REG: ProtocolFeature.CONFIGURE_MEM_SLOTS,
    Request.SET_STATUS: ProtocolFeature.STATUS,
    Request.GET_STATUS: ProtocolFeature.STATUS,
    Request.GET_SHARED_OBJECT: ProtocolFeature.SHARED_OBJECT,
    Request.SET_DEVICE_STATE_FD: ProtocolFeature.DEVICE_STATE,
    Request.CHECK_DEVICE_STATE: ProtocolFeature.DEVICE_STATE,
    Request.SET_LOG_BASE: ProtocolFeature.LOG_SHMFD,
}

_RING_REQUESTS = {
    Request.SET_VRING_NUM, Request.SET_VRING_ADDR, Request.SET_VRING_BASE,
    Request.GET_VRING_BASE, Request.SET_VRING_KICK, Request.SET_VRING_CALL,
    Request.SET_VRING_ERR, Request.SET_VRING_ENABLE, Request.VRING_KICK,
    Request.SET_VRING_ENDIAN,
}


def _ring_index(req: Request, payload: Payload) -> Optional[int]:
    if isinstance(payload, (VringState, VringAddr)):
        return payload.index
    if isinstance(payload, U64) and req in _RING_REQUESTS:
        return payload.value & VRING_IDX_MASK
    return None


def protocol_feature_gate(req: Request, payload: Payload, header: Header,
                          state: DeviceState) -> Optional[str]:
    """A gated request arrives without its protocol feature negotiated."""
    need = REQUIRED_PROTOCOL_FEATURE.get(req)
    if need is not None and not state.protocol_negotiated(need):
        return (f"{req.name} requires protocol feature {need.name}, which is "
                f"not negotiated (acked: "
                f"{feature_names(state.acked_protocol_features or 0, ProtocolFeature)})")
    return None


def protocol_features_offered(req: Request, payload: Payload, header: Header,
                              state: DeviceState) -> Optional[str]:
    """GET/SET_PROTOCOL_FEATURES and SET_VRING_ENABLE need
    VHOST_USER_F_PROTOCOL_FEATURES offered by the back-end."""
    if req in (Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES,
               Request.SET_VRING_ENABLE):
        if not state.offered_features & VirtioFeature.PROTOCOL_FEATURES:
            return (f"{req.name} although the back-end did not offer "
                    "VHOST_USER_F_PROTOCOL_FEATURES")
        if not state.get_features_seen:
            return f"{req.name} before GET_FEATURES"
    return None


def features_subset(req: Request, payload: Payload, header: Header,
                    state: DeviceState) -> Optional[str]:
    """The front-end may only ack features the back-end offered."""
    if req is Request.SET_FEATURES and isinstance(payload, U64):
        extra = payload.value & ~state.offered_features
        if extra:
            return ("SET_FEATURES acks features not offered: "
                    + feature_names(extra, VirtioFeature))
    if req is Request.SET_PROTOCOL_FEATURES and isinstance(payload, U64):
        extra = payload.value & ~state.offered_protocol_features
        if extra:
            return ("SET_PROTOCOL_FEATURES acks features not offered: "
                    + feature_names(extra, ProtocolFeature))
    return None


#: A protocol feature that may only be negotiated together with others
#: (spec: "In-band notifications" needs BACKEND_REQ and REPLY_ACK;
#: GET_VRING_BASE_INFLIGHT "must only be negotiated if
#: VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD is also negotiated").
PROTOCOL_FEATURE_NEEDS: Dict[ProtocolFeature, ProtocolFeature] = {
    ProtocolFeature.INBAND_NOTIFICATIONS:
        ProtocolFeature.BACKEND_REQ | ProtocolFeature.REPLY_ACK,
    ProtocolFeature.GET_VRING_BASE_INFLIGHT: ProtocolFeature.INFLIGHT_SHMFD,
}


def protocol_feature_needs(req: Request, payload: Payload, header: Header,
                           state: DeviceState) -> Optional[str]:
    """A protocol feature acked without those it needs
    (:data:`PROTOCOL_FEATURE_NEEDS`)."""
    if req is Request.SET_PROTOCOL_FEATURES and isinstance(payload, U64):
        value = payload.value
        for feature, need in PROTOCOL_FEATURE_NEEDS.items():
            if value & feature and value & need != need:
                return (f"{feature.name} negotiated without "
                        + feature_names(need & ~value, ProtocolFeature))
    return None


def iotlb_needs_platform(req: Request, payload: Payload, header: Header,
                         state: DeviceState) -> Optional[str]:
    """IOTLB messages only for a device behind an IOMMU
    (VIRTIO_F_IOMMU_PLATFORM negotiated)."""
    if req is Request.IOTLB_MSG and not state.feature_acked(
            VirtioFeature.ACCESS_PLATFORM):
        return "IOTLB_MSG without VIRTIO_F_IOMMU_PLATFORM negotiated"
    return None


def need_reply_needs_ack(req: Request, payload: Payload, header: Header,
                         state: DeviceState) -> Optional[str]:
    """NEED_REPLY is only defined once REPLY_ACK is negotiated."""
    if header.need_reply and not state.protocol_negotiated(
            ProtocolFeature.REPLY_ACK) and req not in (
                Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                Request.SET_PROTOCOL_FEATURES):
        return f"{req.name} sets NEED_REPLY but REPLY_ACK is not negotiated"
    return None


def ring_index_valid(req: Request, payload: Payload, header: Header,
                     state: DeviceState, max_rings: int = 0
                     ) -> Optional[str]:
    """A ring request names a ring the device has."""
    index = _ring_index(req, payload)
    if index is not None and max_rings and index >= max_rings:
        return f"{req.name} for ring {index}, but the device has {max_rings}"
    return None


def reserved_num_zero(req: Request, payload: Payload, header: Header,
                      state: DeviceState) -> Optional[str]:
    """GET_VRING_BASE and VRING_KICK: ``num`` is reserved, must be 0."""
    if req in (Request.GET_VRING_BASE, Request.VRING_KICK) and isinstance(
            payload, VringState) and payload.num != 0:
        return f"{req.name} with reserved num={payload.num} (must be 0)"
    return None


def ring_size_valid(req: Request, payload: Payload, header: Header,
                    state: DeviceState) -> Optional[str]:
    """Queue sizes: 1..32768; a power of 2 for split rings."""
    if req is Request.SET_VRING_NUM and isinstance(payload, VringState):
        num = payload.num
        packed = state.feature_acked(VirtioFeature.RING_PACKED)
        if not 0 < num <= 32768 or (not packed and num & (num - 1)):
            return f"SET_VRING_NUM {num} for ring {payload.index} is invalid"
    return None


def no_reconfig_while_started(req: Request, payload: Payload, header: Header,
                              state: DeviceState) -> Optional[str]:
    """Size, base and endianness may only change while the ring is stopped."""
    if req in (Request.SET_VRING_NUM, Request.SET_VRING_BASE,
               Request.SET_VRING_ENDIAN) and isinstance(payload, VringState):
        ring = state.vrings.get(payload.index)
        if ring is not None and ring.started:
            return f"{req.name} for ring {payload.index} while it is started"
    return None


def ring_addr_mapped(req: Request, payload: Payload, header: Header,
                     state: DeviceState) -> Optional[str]:
    """Ring addresses must lie in the memory table (unless an IOMMU is on)."""
    if req is Request.SET_VRING_ADDR and isinstance(payload, VringAddr):
        if state.feature_acked(VirtioFeature.ACCESS_PLATFORM):
            return None
        if not len(state.memory):
            return (f"SET_VRING_ADDR for ring {payload.index} before any "
                    "memory table")
        for name in ("desc", "used", "avail"):
            addr = getattr(payload, name)
            try:
                state.memory.uva_to_gpa(addr)
            except LookupError:
                return (f"SET_VRING_ADDR ring {payload.index}: {name} "
                        f"address 0x{addr:x} is not in the memory table")
    return None


def packed_base_has_used_half(req: Request, payload: Payload,
                              header: Header, state: DeviceState
                              ) -> Optional[str]:
    """A packed ring's base carries the used index and wrap counter too."""
    if (req is Request.SET_VRING_BASE and isinstance(payload, VringState)
            and state.feature_acked(VirtioFeature.RING_PACKED)
            and payload.num >> 16 == 0 and payload.num & 0xFFFF):
        return (f"SET_VRING_BASE 0x{payload.num:x} for packed ring "
                f"{payload.index} has no used half (bits 16-31 are 0, so "
                "the used wrap counter says 0 while the available one says "
                "1): \"For a packed virtqueue, both indices are supplied, as "
                "they are not explicitly available in memory.\" (vhost-user, "
                "VHOST_USER_SET_VRING_BASE)")
    return None


def mem_regions_disjoint(req: Request, payload: Payload, header: Header,
                         state: DeviceState) -> Optional[str]:
    """The regions of a memory table do not overlap in guest memory."""
    if req is Request.SET_MEM_TABLE and isinstance(payload, MemoryTable):
        regions = sorted(payload.regions, key=lambda r: r.guest_addr)
        for a, b in zip(regions, regions[1:]):
            if a.guest_addr + a.size > b.guest_addr:
                return f"memory regions overlap: {a} and {b}"
        # The front-end's addresses translate ring addresses: two regions
        # at one user address would make that translation ambiguous.
        by_user = sorted(payload.regions, key=lambda r: r.user_addr)
        for a, b in zip(by_user, by_user[1:]):
            if a.user_addr + a.size > b.user_addr:
                return f"memory regions overlap in user addresses: {a} and {b}"
        if len(regions) > MAX_MEM_REGIONS:
            return f"{len(regions)} memory regions"
    return None


def log_covers_memory(req: Request, payload: Payload, header: Header,
                      state: DeviceState) -> Optional[str]:
    """The dirty log must have a bit for every guest page in the table."""
    if req is Request.SET_LOG_BASE and isinstance(payload, LogDescription):
        top = max((g + s for g, s in state.memory.ram_ranges()), default=0)
        pages = payload.size * 8
        if top and pages * 4096 < top:
            return (f"dirty log of {payload.size} bytes covers "
                    f"{pages * 4096:#x} bytes of guest memory, the table "
                    f"reaches {top:#x}")
    return None


def postcopy_order(req: Request, payload: Payload, header: Header,
                   state: DeviceState) -> Optional[str]:
    """POSTCOPY_ADVISE -> POSTCOPY_LISTEN -> POSTCOPY_END."""
    order = {Request.POSTCOPY_LISTEN: "advised",
             Request.POSTCOPY_END: "listening"}
    if req in order and state.postcopy != order[req]:
        return f"{req.name} in postcopy state '{state.postcopy}'"
    return None


def shared_object_named(req: Request, payload: Payload, header: Header,
                        state: DeviceState) -> Optional[str]:
    """GET_SHARED_OBJECT's payload is the UUID of the object asked for."""
    uuid = getattr(payload, "uuid", b"")
    if len(uuid) != 16:
        return (f"GET_SHARED_OBJECT carries no UUID ({len(uuid)} of "
                "VhostUserShared's 16 bytes): the back-end cannot tell which "
                "object is asked for")
    return None


#: virtio device status bits (virtio 1.x, 2.1 "Device Status Field")
STATUS_FEATURES_OK = 8
STATUS_DRIVER_OK = 4


def status_only_grows(req: Request, payload: Payload, header: Header,
                      state: DeviceState) -> Optional[str]:
    """SET_STATUS carries the virtio device status: the driver never clears
    a bit but by writing 0, which resets the device, and sets DRIVER_OK
    only after FEATURES_OK (virtio 3.1.1)."""
    if not isinstance(payload, U64):
        return None
    new, old = payload.value, state.status
    if new and old & ~new:
        return (f"status {new:#x} clears bits of {old:#x}: a driver "
                "never clears a status bit except by writing 0 (a reset)")
    if new & STATUS_DRIVER_OK and not new & STATUS_FEATURES_OK:
        return (f"status {new:#x} sets DRIVER_OK without FEATURES_OK: the "
                "driver sets FEATURES_OK first (virtio 3.1.1)")
    return None


def no_ring_state_after_reset(req: Request, payload: Payload,
                              header: Header,
                              state: DeviceState) -> Optional[str]:
    """Writing 0 to the device status resets the device, rings and all
    (virtio 2.1); a GET_VRING_BASE after it asks the back-end for ring
    positions it no longer has.  QEMU sent SET_STATUS 0 first from 7.2
    (923b8921d2) until 6f8be29ec1 ("vhost-user: send SET_STATUS 0 after
    GET_VRING_BASE")."""
    if state.reset_by_status:
        return ("GET_VRING_BASE after SET_STATUS 0: the status write "
                "reset the device, whose ring positions are gone (virtio "
                "2.1: writing 0 to the device status resets the device)")
    return None


def device_state_of_a_stopped_device(req: Request, payload: Payload,
                                     header: Header,
                                     state: DeviceState) -> Optional[str]:
    """The only migration phase is "stopped": "both the source and
    destination devices are suspended" while the state moves."""
    running = state.started_rings()
    if running:
        return (f"SET_DEVICE_STATE_FD while ring(s) {running} run: the state "
                "moves only while the device is stopped")
    return None


#: Every rule, with the requests it concerns (it is only run for those).
RULE_SCOPE: Dict[Rule, FrozenSet[Request]] = {
    protocol_features_offered: frozenset({
        Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES,
        Request.SET_VRING_ENABLE}),
    protocol_feature_gate: frozenset(REQUIRED_PROTOCOL_FEATURE),
    features_subset: frozenset({Request.SET_FEATURES,
                                Request.SET_PROTOCOL_FEATURES}),
    protocol_feature_needs: frozenset({Request.SET_PROTOCOL_FEATURES}),
    iotlb_needs_platform: frozenset({Request.IOTLB_MSG}),
    reserved_num_zero: frozenset({Request.GET_VRING_BASE,
                                  Request.VRING_KICK}),
    ring_size_valid: frozenset({Request.SET_VRING_NUM}),
    no_reconfig_while_started: frozenset({
        Request.SET_VRING_NUM, Request.SET_VRING_BASE,
        Request.SET_VRING_ENDIAN}),
    ring_addr_mapped: frozenset({Request.SET_VRING_ADDR}),
    mem_regions_disjoint: frozenset({Request.SET_MEM_TABLE}),
    packed_base_has_used_half: frozenset({Request.SET_VRING_BASE}),
    log_covers_memory: frozenset({Request.SET_LOG_BASE}),
    postcopy_order: frozenset({Request.POSTCOPY_LISTEN,
                               Request.POSTCOPY_END}),
    status_only_grows: frozenset({Request.SET_STATUS}),
    no_ring_state_after_reset: frozenset({Request.GET_VRING_BASE}),
    device_state_of_a_stopped_device: frozenset({
        Request.SET_DEVICE_STATE_FD}),
    shared_object_named: frozenset({Request.GET_SHARED_OBJECT}),
}
RULES: List[Rule] = list(RULE_SCOPE) + [need_reply_needs_ack]

# Rules per request, computed once: the back-end checks every message, so
# this is on its hot path.
_BY_REQUEST: Dict[Request, List[Rule]] = {
    req: [rule for rule, scope in RULE_SCOPE.items() if req in scope]
    for req in Request}


def rule_id(rule: Callable[..., Optional[str]]) -> str:
    """A rule's identifier: its name, with hyphens."""
    return rule.__name__.replace("_", "-")


#: fds that arrive after a message's first byte (the connection's finding)
FDS_WITH_THE_HEADER = "fds-with-the-header"

#: every rule a front-end can break, by identifier, with what it says
FRONT_END_RULES: Dict[str, str] = {
    rule_id(rule): " ".join((rule.__doc__ or "").split("\n\n")[0].split())
    for rule in RULES + [ring_index_valid]}
FRONT_END_RULES[FDS_WITH_THE_HEADER] = (
    "fds travel with the first byte of the message that carries them")


class Breach(NamedTuple):
    """One rule broken by one request."""

    rule: str
    text: str


def check(req: Request, payload: Payload, header: Header, state: DeviceState,
          max_rings: int = 0) -> List[Breach]:
    """Every violation one request commits."""
    found = []
    for rule in _BY_REQUEST[req]:
        msg = rule(req, payload, header, state)
        if msg is not None:
            found.append(Breach(rule_id(rule), msg))
    if header.flags & FLAG_NEED_REPLY:
        msg = need_reply_needs_ack(req, payload, header, state)
        if msg is not None:
            found.append(Breach(rule_id(need_reply_needs_ack), msg))
    if max_rings and req in _RING_REQUESTS:
        msg = ring_index_valid(req, payload, header, state, max_rings)
        if msg is not None:
            found.append(Breach(rule_id(ring_index_valid), msg))
    return found


#: the postcopy phase each request moves the conversation to
_POSTCOPY_PHASE = {Request.POSTCOPY_ADVISE: "advised",
                   Request.POSTCOPY_LISTEN: "listening",
                   Request.POSTCOPY_END: "ended"}


def observe(req: Request, payload: Payload, state: DeviceState) -> None:
    """What the judge remembers of a request whatever its handler did: the
    front-end's conduct, not the back-end's answer (a judge that refuses
    POSTCOPY_ADVISE still saw the front-end advise)."""
    phase = _POSTCOPY_PHASE.get(req)
    if phase is not None:
        state.postcopy = phase
    if req is Request.SET_STATUS and isinstance(payload, U64):
        # A reset of a live device; rings set up again start afresh.
        state.reset_by_status = payload.value == 0 and bool(
            state.status & STATUS_DRIVER_OK or state.reset_by_status)
    elif req in (Request.SET_VRING_BASE, Request.RESET_DEVICE,
                 Request.RESET_OWNER):
        state.reset_by_status = False
