"""
Live migration between two VMs, each with its own back-end.

:func:`start_pair` makes the source (running, device driven) and the
destination (waiting for the migration stream); :func:`migrate` starts the
migration, optionally holding the source back-end's answer to the first
GET_VRING_BASE: at that moment QEMU has stopped the VM and sent every page
once, and reads the dirty log only after the answer, so whatever a test
writes then reaches the destination through the log or not at all.

:func:`dirty_log_handoff` is the seed test's story told with teeth: two
pages written by the source back-end during the hold, one logged and one
not, and a :class:`DirtyLogReport` of what the destination sees.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from avocado_vhost.checks.handoff import RingHandoffMonitor
from avocado_vhost.plumbing.phases import phase
from avocado_vhost.peers.qemu import hotplug
from avocado_vhost.peers.qemu.platform import RING_WINDOW, SCRATCH_WINDOW
from avocado_vhost.peers.qemu.spec import VMOptions
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.vhost_user import (BackendConfig, Fault, FaultAction,
                                      ProtocolFeature, Request,
                                      VhostUserBackend)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from avocado_vhost.harness import Harness

__all__ = ["MigrationPair", "start_pair", "migrate", "wait_migration",
           "MigrationOutcome", "wait_outcome",
           "DirtyLogReport", "dirty_log_handoff", "LOG_CHUNK", "expected_log_size",
           "ram_differences"]

#: one u64 word of the dirty log covers 64 pages of 4 KiB
LOG_CHUNK = 4096 * 64


def expected_log_size(ram_top: int) -> int:
    """The spec's log size for RAM up to ``ram_top``: one bit per 4 KiB
    page from address 0, in whole 64-bit words."""
    return ((ram_top - 1) // LOG_CHUNK + 1) * 8


@dataclass
class MigrationPair:
    """A source VM and its back-end, a destination VM waiting for the
    stream and its back-end, and where the stream goes."""

    src_backend: VhostUserBackend
    dst_backend: VhostUserBackend
    src: VhostVM
    dst: VhostVM
    uri: str


def need_log_fd(test: "Harness") -> None:
    """Cancel where the run's offer has no LOG_SHMFD: QEMU then blocks
    the migration ("vhost-user backend lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD
    feature"), as it should."""
    test.require_protocol(ProtocolFeature.LOG_SHMFD, "QEMU migrates a "
                          "vhost-user device only with a dirty-log fd")


def start_pair(test: "Harness", rings: int = 2,
               config: Optional[BackendConfig] = None, features: int = 0,
               driver_queues: Optional[int] = None, prefix: str = "",
               dst_extra: Sequence[str] = (),
               **spec: Unpack[VMOptions]) -> MigrationPair:
    """The source launched with ``rings`` rings started (the test's driver
    asks for ``features`` and sets up ``driver_queues`` queues, default
    ``rings``); the destination launched with ``-incoming`` (and
    ``dst_extra`` on its command line: what the source will have
    hot-plugged by then); both back-ends offer ``config``.  VMs and
    back-ends are named ``<prefix>src`` and ``<prefix>dst`` (a prefix per
    pair, for a test that migrates several)."""
    need_log_fd(test)
    src_be = test.make_backend(f"{prefix}src", copy.deepcopy(config))
    dst_be = test.make_backend(f"{prefix}dst", copy.deepcopy(config))
    src = test.make_vm(f"{prefix}src", src_be.listener_path, **spec)
    uri = "unix:" + test.socket_path(f"{prefix}migration")
    dst_spec: VMOptions = {**spec, "incoming": uri,
                           "extra": spec.get("extra", []) + list(dst_extra)}
    dst = test.make_vm(f"{prefix}dst", dst_be.listener_path, **dst_spec)
    test.start_vm(src, src_be, rings=rings, features=features,
                  queues=rings if driver_queues is None else driver_queues)
    dst.launch()
    return MigrationPair(src_be, dst_be, src, dst, uri)


def migrate(test: "Harness", src: VhostVM, dst: VhostVM, uri: str,
            hold: Optional[VhostUserBackend] = None,
            capabilities: Sequence[str] = ()) -> Optional[Fault]:
    """Start migrating ``src`` to ``dst`` (migration events on for both,
    and the migration ``capabilities`` named, such as ``return-path``: the
    destination tells the source whether it loaded the state).

    :param hold: a back-end that holds its answer to the first
        GET_VRING_BASE; the returned fault's ``reached`` is set when QEMU
        waits for it, and the test sets its ``release``.
    """
    need_log_fd(test)
    fault = None
    if hold is not None:
        fault = Fault(FaultAction.HOLD, request=Request.GET_VRING_BASE,
                      hold_timeout=test.scaled(30))
        hold.faults.append(fault)
        # A test that fails while QEMU waits must not wait out the hold.
        test.cleanup(fault.release.set)
    for vm in (src, dst):
        vm.qmp("migrate-set-capabilities", capabilities=[
            {"capability": name, "state": True}
            for name in ("events", *capabilities)])
    src.qmp("migrate", uri=uri)
    return fault


def wait_migration(test: "Harness", src: VhostVM, dst: VhostVM,
                   timeout: float = 30.0) -> Optional[str]:
    """Wait for the migration to end and the destination to resume.

    :return: None when it completed and the destination runs; else why
        not, with the tail of the destination's QEMU output.
    """
    # The destination has the last word: it may refuse what the source
    # sent successfully.  Both sides need the "events" capability.
    with phase("migration"):
        event = dst.events_wait(
            [("RESUME", None),
             ("MIGRATION", {"data": {"status": "failed"}})],
            timeout=test.scaled(timeout))
    if event and event["event"] == "RESUME":
        return None
    dst.wait_exit(test.scaled(timeout))
    return ("migration failed on the destination; destination QEMU: "
            + dst.log_tail(4))


#: x86's legacy hole (VGA and ROM): pmemsave reads the ROM there, not the
#: RAM the back-end maps
_LEGACY_HOLE = (0xA0000, 0x100000)
_PAGE = 4096


def _compared_ranges(ranges: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``(address, size)`` of the RAM to compare: the back-end's regions
    without the legacy hole."""
    out = []
    lo, hi = _LEGACY_HOLE
    for gpa, size in ranges:
        end = gpa + size
        for start, stop in ((gpa, min(end, lo)), (max(gpa, hi), end)):
            if start < stop:
                out.append((start, stop - start))
    return out


def ram_differences(test: "Harness", source: VhostUserBackend,
                    dst: VhostVM, limit: int = 20) -> List[str]:
    """The guest pages whose content the migration did not carry: the
    source's RAM (stopped, read through its back-end's mapping) against
    the destination's (paused before it ever ran, read by QEMU's
    ``pmemsave``), page by page, over the RAM the back-end maps.

    After a completed migration, with both sides stopped, they must be
    equal byte for byte: a page the source back-end wrote and QEMU did not
    send -- a write missing from the dirty log, or a log QEMU did not read
    -- shows here, however the guest would have noticed it later.
    """
    found: List[str] = []
    dump = os.path.join(test.workdir_short, "dst-ram")
    ranges = _compared_ranges(list(source.state.memory.ram_ranges()))
    compared = sum(size for _, size in ranges)
    test.log.info("RAM compared, source against destination: %d pages in %s",
                  compared // _PAGE, ", ".join(
                      f"0x{gpa:x}+0x{size:x}" for gpa, size in ranges))
    if not compared:
        raise AssertionError("no RAM to compare: the source back-end maps "
                             "none (a comparison of nothing proves nothing)")
    try:
        for start, length in ranges:
            dst.qmp("pmemsave", val=start, size=length, filename=dump)
            with open(dump, "rb") as saved:
                theirs = saved.read()
            ours = source.state.memory.read(start, length)
            if ours == theirs:
                continue
            log = source.state.log
            marked = log.marked if log is not None else set()
            for off in range(0, length, _PAGE):
                if ours[off:off + _PAGE] != theirs[off:off + _PAGE]:
                    at = next(i for i in range(_PAGE)
                              if ours[off + i] != theirs[off + i])
                    who = ("the source back-end wrote and logged it"
                           if (start + off) // _PAGE in marked else
                           "never logged by the source back-end")
                    found.append(f"page 0x{start + off:x} (first difference "
                                 f"at +0x{at:x}; {who})")
                    if len(found) >= limit:
                        return found
    finally:
        if os.path.exists(dump):
            os.unlink(dump)
    return found


@dataclass
class MigrationOutcome:
    """How a migration ended, as both QEMUs tell it.

    :param status: the source's last MIGRATION status (``completed``,
        ``failed``, ``cancelled``), or ``source died`` / ``timed out``.
    :param error: the source's ``query-migrate`` error description.
    :param source_exit: the source QEMU's exit code (negative: signal), or
        None while it runs.
    :param source_running: the source's run state after the migration
        (``running``, ``postmigrate``, ...), None when it is gone.
    :param destination_resumed: the destination sent RESUME.
    """

    status: str
    error: Optional[str]
    source_exit: Optional[int]
    source_running: Optional[str]
    destination_resumed: bool

    @property
    def failed_cleanly(self) -> bool:
        """Failed, reported, and the VM runs on on the source."""
        return (self.status == "failed" and self.source_exit is None
                and self.source_running == "running")

    def __str__(self) -> str:
        exit_ = ("runs" if self.source_exit is None else
                 f"killed by signal {-self.source_exit}"
                 if self.source_exit < 0 else f"exited {self.source_exit}")
        return (f"migration {self.status}"
                + (f" ({self.error})" if self.error else "")
                + f"; source QEMU {exit_}"
                + (f", {self.source_running}" if self.source_running else "")
                + f"; destination {'resumed' if self.destination_resumed else 'did not resume'}")


_END = ("completed", "failed", "cancelled")


def wait_outcome(test: "Harness", src: VhostVM, dst: VhostVM,
                 timeout: float = 30.0,
                 ends: Sequence[str] = _END) -> MigrationOutcome:
    """Wait for the migration started by :func:`migrate` to end, one way
    or another (the source's MIGRATION event with a status of ``ends``, or
    the source's death), and say how it ended.  A postcopy migration may
    also end in ``postcopy-paused``: the source waits for a recovery."""
    try:
        event = src.events_or_exit(
            [("MIGRATION", {"data": {"status": s}}) for s in ends],
            test.scaled(timeout), "end of the migration")
        status = "source died" if event is None else event["data"]["status"]
    except TimeoutError:
        status = "timed out"
    error = running = None
    if status in ("failed", "cancelled") and src.is_running() \
            and _runstate(src) != "running":
        # A source that had stopped the VM runs it again a moment after it
        # reports the failure (vm_start, which sends RESUME); until then it
        # reads "finish-migrate" or the like.  One that failed before it
        # stopped the VM (at log start) never stopped: no RESUME comes.
        try:
            src.events_or_exit([("RESUME", None)], test.scaled(timeout),
                               "RESUME of the source after the failure")
        except TimeoutError:
            pass  # judged below: the source never ran again
    if src.is_running():
        info = src.qmp("query-migrate")
        assert isinstance(info, dict)
        error = info.get("error-desc")
        running = _runstate(src)
    resumed = False
    if status == "completed" and dst.is_running():
        resumed = dst.events_or_exit([("RESUME", None)], test.scaled(timeout),
                                     "RESUME") is not None
    return MigrationOutcome(status, error, src.exitcode, running, resumed)


def _runstate(vm: VhostVM) -> str:
    state = vm.qmp("query-status")
    assert isinstance(state, dict)
    return str(state.get("status"))


@dataclass
class DirtyLogReport:
    """What :func:`dirty_log_handoff` saw."""

    log_size: int
    #: the end of the highest RAM region (the log must cover up to it)
    ram_top: int
    logged_page: int
    unlogged_page: int
    #: the two pages as the destination's QEMU reads them (empty when the
    #: migration failed)
    logged_on_dst: bytes
    unlogged_on_dst: bytes
    #: the logged page through the destination back-end's mapping
    logged_on_dst_backend: bytes
    monitor: RingHandoffMonitor
    #: why the migration failed (None: it completed)
    failure: Optional[str]
    #: the pages where log mistakes hide (:func:`edge_pages`), written and
    #: logged by the source during the hold
    edges: List[int] = field(default_factory=list)
    #: those of them whose write is not on the destination
    edges_lost: List[int] = field(default_factory=list)
    #: ``(guest address, size)`` of the hot-plugged DIMM, if one was
    dimm: Optional[Tuple[int, int]] = None


#: what the pages hold before, and what the source back-end writes
OLD, NEW = 0x11, 0x42

PAGE = 4096
#: one 64-bit word of the dirty log covers 64 pages
LOG_WORD_SPAN = 64 * PAGE
#: "the top and bottom 256 KiB" of each region
EDGE = 256 * 1024


def edge_pages(ranges: Sequence[Tuple[int, int]],
               exclude: Sequence[Tuple[int, int]] = (),
               boundaries: int = 4) -> List[int]:
    """The pages where dirty-log mistakes hide, for RAM ``ranges``
    (``(guest address, size)``): every page of each region's bottom and
    top 256 KiB (its first and last page among them), and the pages on
    either side of its first and last ``boundaries`` log-word boundaries
    (bit 63 of one word and bit 0 of the next; the log counts pages from
    address 0).  Pages inside ``exclude`` ranges (``(start, end)``: the
    rings) are left out."""
    pages = set()
    for start, size in ranges:
        end = start + size
        first = start - start % PAGE
        last = end - PAGE - (end - PAGE) % PAGE
        for base in range(first, min(first + EDGE, end), PAGE):
            pages.add(base)
        for base in range(max(last - EDGE + PAGE, first), last + PAGE, PAGE):
            pages.add(base)
        inside = list(range(first - first % LOG_WORD_SPAN + LOG_WORD_SPAN,
                            end, LOG_WORD_SPAN))
        for boundary in inside[:boundaries] + inside[-boundaries:]:
            pages.update(p for p in (boundary - PAGE, boundary)
                         if first <= p <= last)
    return sorted(p for p in pages
                  if not any(lo <= p < hi for lo, hi in exclude))


def page_mark(page: int) -> bytes:
    """What the source writes into ``page``: its own address, repeated (a
    page that arrived at the wrong place is told apart)."""
    return (page.to_bytes(8, "little") + bytes([NEW]) * 8) * (PAGE // 16)


#: the DIMM :func:`dirty_log_handoff` hot-plugs into the source
DIMM_ID, DIMM_SIZE = "dimm1", 128 << 20


def dirty_log_handoff(test: "Harness", unlogged_edges: Sequence[int] = (),
                      dimm: bool = False) -> DirtyLogReport:
    """Migrate with two pages written by the source back-end while QEMU
    waits for its GET_VRING_BASE answer, one logged, one not; and the edge
    pages of every RAM region (:func:`edge_pages`), logged but for
    ``unlogged_edges`` (indexes into them: a negative control).

    :param dimm: hot-plug a ``pc-dimm`` (a shared memfd) into the running
        source first -- its region's edges are written too -- and start
        the destination with it, as a migration after a hot-plug does.
    """
    spec: VMOptions = {}
    dst_extra: List[str] = []
    if dimm:
        mem_mb = test.mem_mb()
        spec = {"mem_slots": 1, "maxmem_mb": mem_mb + (DIMM_SIZE >> 20)}
        dst_extra = ["-object", f"memory-backend-memfd,id={DIMM_ID}-mem,"
                     f"size={DIMM_SIZE},share=on",
                     "-device", f"pc-dimm,id={DIMM_ID},memdev={DIMM_ID}-mem"]
    pair = start_pair(test, dst_extra=dst_extra, **spec)
    dimm_range = None
    if dimm:
        regions = len(pair.src_backend.state.memory)
        hotplug.plug_dimm(pair.src, DIMM_ID, DIMM_SIZE,
                          "memory-backend-memfd")
        pair.src_backend.wait_for(
            lambda: len(pair.src_backend.state.memory) > regions,
            f"the DIMM's region in the back-end's table (had {regions})",
            timeout=test.scaled(10))
        (dimm_range,) = pair.src.ram_ranges(f"{DIMM_ID}-mem")
    logged = test.platform.ram(SCRATCH_WINDOW[0])
    unlogged = logged + 4096
    monitor = RingHandoffMonitor(pair.src_backend, pair.dst_backend)
    src_qtest, dst_qtest = pair.src.qtest, pair.dst.qtest
    assert src_qtest is not None and dst_qtest is not None
    for page in (logged, unlogged):
        src_qtest.memset(page, 4096, OLD)
    # The story needs every page sent once before the source stops: QEMU
    # may otherwise stop early (its downtime estimate covers what is left)
    # and send the rest after the hold -- the DIMM, the last block, with
    # the back-end's unlogged write in it.  Nothing dirties guest RAM here,
    # so a 1 ms limit still converges, after the first pass.
    pair.src.qmp("migrate-set-parameters", **{"downtime-limit": 1})
    hold = migrate(test, pair.src, pair.dst, pair.uri, hold=pair.src_backend)
    assert hold is not None
    src_be = pair.src_backend
    src_be.wait_log_base(timeout=test.scaled(10))
    assert src_be.state.log is not None
    log_size = src_be.state.log.size
    ram_top = max(g + s for g, s in src_be.state.memory.ram_ranges())
    if not hold.reached.wait(test.scaled(30)):
        raise AssertionError("QEMU never stopped the source rings (no "
                             "GET_VRING_BASE): " + src_be.describe())
    rings = test.platform.window(RING_WINDOW)
    edges = [p for p in edge_pages(list(src_be.state.memory.ram_ranges()),
                                   [rings])
             if p not in (logged, unlogged)]
    skipped = {edges[i] for i in unlogged_edges}
    with src_be.lock():
        for page in (logged, unlogged):
            src_be.state.memory.write(page, bytes([NEW]) * 4096)
        src_be.mark_dirty(logged, 4096)
        for page in edges:
            src_be.state.memory.write(page, page_mark(page))
            if page not in skipped:
                src_be.mark_dirty(page, PAGE)
    hold.release.set()
    pair.src.event_wait("STOP", timeout=test.scaled(30))
    failure = wait_migration(test, pair.src, pair.dst)
    report = DirtyLogReport(log_size, ram_top, logged, unlogged, b"", b"",
                            b"", monitor, failure, edges,
                            dimm=dimm_range)
    if failure is not None:  # the destination is gone: nothing to read
        return report
    pair.dst_backend.wait_rings_started(2, timeout=test.scaled(10))
    report.logged_on_dst = dst_qtest.memread(logged, 4096)
    report.unlogged_on_dst = dst_qtest.memread(unlogged, 4096)
    report.logged_on_dst_backend = pair.dst_backend.state.memory.read(
        logged, 4096)
    dst_memory = pair.dst_backend.state.memory
    report.edges_lost = [p for p in edges
                         if dst_memory.read(p, PAGE) != page_mark(p)]
    test.log.info("dirty log %d bytes for RAM up to 0x%x; destination: "
                  "logged page %02x.., unlogged page %02x.., %d of %d edge "
                  "pages lost %s; ring handoff:\n%s", log_size, ram_top,
                  report.logged_on_dst[0], report.unlogged_on_dst[0],
                  len(report.edges_lost), len(edges),
                  [hex(p) for p in report.edges_lost[:8]],
                  monitor.timeline())
    return report
