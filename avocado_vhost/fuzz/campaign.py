"""
A fuzz run: moves, probes, findings, reproducers.

:func:`run` plays seeded moves (:mod:`.generate`) against a back-end
(:mod:`.target`) within a budget of messages and seconds.  After every
move the probe (:mod:`.wire`) says whether the back-end still answers.
A *finding* is what a back-end must never do whatever a front-end sends:

* ``crash`` -- the process ended by a signal (SIGSEGV, SIGABRT, ...);
* ``hang`` -- it runs but does not answer within the hang timeout;
* ``refused`` -- it runs but takes no new connection;
* ``memory`` / ``fds`` -- its resident memory or open fds grew past the
  limit: it keeps what no connection holds any more.

A back-end hanging up (``closed``) or exiting by itself (``exit``) after
bad input is allowed, counted, and the run goes on (reconnecting, or
restarting the back-end).  Each finding's run is written as a reproducer,
cut down (:mod:`.minimise`) when the back-end can be restarted, and the
cut-down form written beside it; :func:`replay` plays one again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from avocado_vhost.vhost_user.message import (HEADER, VERSION, Request,
                                              request_name)
from avocado_vhost.fuzz.generate import Generator
from avocado_vhost.fuzz.minimise import ddmin
from avocado_vhost.fuzz.step import Step, dump
from avocado_vhost.fuzz.target import Target, TargetError
from avocado_vhost.fuzz.wire import (ANSWERED, ENDED, GREW, SILENT,
                                     SharedMemory, Wire)

__all__ = ["Budget", "Finding", "Report", "run", "replay", "discover",
           "FINDINGS"]

FINDINGS = ("crash", "hang", "refused", "memory", "fds")


@dataclass
class Budget:
    """How much to fuzz and how patient to be."""

    messages: int = 2000
    seconds: float = 60.0
    hang_timeout: float = 2.0
    memory_limit_kib: int = 256 * 1024
    fd_limit: int = 1000
    max_findings: int = 3
    minimise_tries: int = 300
    minimise_seconds: float = 180.0
    #: ring indexes stay below this (None: any, past the end too)
    rings: Optional[int] = None


@dataclass
class Outcome:
    """How a step ended when it was not simply answered."""

    kind: str
    detail: str


@dataclass
class Finding:
    outcome: Outcome
    steps: List[Step]
    minimal: List[Step]
    reproducer: str
    minimal_reproducer: str = ""
    #: whether replaying the steps from a fresh back-end found it again
    #: (False: it depends on timing; None: the back-end cannot be
    #: restarted, so it was not tried)
    replayed: Optional[bool] = None
    #: how the cut-down run ends (its detail names its own last step)
    minimal_outcome: Optional[Outcome] = None

    @property
    def signature(self) -> Tuple[str, str, str]:
        """(kind, detail, the last message's request) of the cut-down
        run: what :mod:`avocado_vhost.fuzz.findings` matches."""
        outcome = self.minimal_outcome or self.outcome
        last = next((s for s in reversed(self.minimal)
                     if s.kind in ("msg", "hangup")), None)
        return (outcome.kind, outcome.detail,
                request_name(last.request) if last is not None else "")


@dataclass
class Report:
    """What a run did and found (the CLI prints it; tests assert on it)."""

    seed: int
    features: int = 0
    protocol_features: int = 0
    messages: int = 0
    steps: int = 0
    seconds: float = 0.0
    counts: Dict[str, int] = field(default_factory=dict)
    findings: List[Finding] = field(default_factory=list)
    peak_rss_kib: int = 0
    peak_fds: int = 0
    #: known defects met again (by id), not cut down
    known: List[str] = field(default_factory=list)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def summary(self) -> Dict[str, Any]:
        return {"seed": self.seed, "messages": self.messages,
                "steps": self.steps, "seconds": round(self.seconds, 1),
                "outcomes": dict(sorted(self.counts.items())),
                "peak_rss_kib": self.peak_rss_kib,
                "peak_fds": self.peak_fds,
                "known_defects_met": dict(sorted(
                    (k, self.known.count(k)) for k in set(self.known))),
                "findings": [{"kind": f.outcome.kind,
                              "detail": f.outcome.detail,
                              "steps": len(f.steps),
                              "minimal_steps": len(f.minimal),
                              "replayed": f.replayed,
                              "last_request": f.signature[2],
                              "reproducer": f.minimal_reproducer
                              or f.reproducer} for f in self.findings]}


def discover(target: Target, timeout: float) -> Tuple[int, int]:
    """The features and protocol features the back-end offers (read once,
    so that the moves never depend on its later answers)."""
    memory = SharedMemory()
    wire = Wire(target.socket_path, memory, 0, timeout)
    try:
        if not wire.open(timeout):
            raise TargetError(f"cannot connect to {target.socket_path}")
        features = _ask_u64(wire, Request.GET_FEATURES)
        protocol = (_ask_u64(wire, Request.GET_PROTOCOL_FEATURES)
                    if features & (1 << 30) else 0)
        return features, protocol
    finally:
        wire.close()
        memory.close()


def _ask_u64(wire: Wire, request: Request) -> int:
    """Ask a u64; a back-end that hangs up, resets the connection or says
    nothing within the wire's timeout is a :class:`TargetError` (a clear
    error for the user, never a traceback)."""
    assert wire.sock is not None
    data = b""
    try:
        wire.sock.sendall(HEADER.pack(request, VERSION, 0))
        while len(data) < 20:
            chunk = wire.sock.recv(20 - len(data))
            if not chunk:
                raise TargetError(f"the back-end hung up on {request.name}")
            data += chunk
    except OSError as exc:  # a reset, a broken pipe, the wire's timeout
        raise TargetError(f"the back-end did not answer {request.name}: "
                          f"{exc}") from None
    return int.from_bytes(data[12:20], "little")


class _Player:
    """Plays steps against one back-end process and says how they end."""

    def __init__(self, target: Target, budget: Budget, seed: int):
        self.target = target
        self.budget = budget
        self.memory = SharedMemory()
        self.wire = Wire(target.socket_path, self.memory, seed,
                         budget.hang_timeout)
        self.rss_base: Optional[int] = None
        self.fds_base: Optional[int] = None
        #: connections made since the back-end started (a back-end
        #: usually forgets a connection's state when it ends)
        self.connections = 0

    def close(self) -> None:
        self.wire.close()
        self.memory.close()

    def restart(self) -> None:
        self.wire.close()
        self.memory.clear()
        self.target.start()
        self.wire.pidfd = self.target.pidfd
        self.wire.guard = self._outgrown
        self.rss_base = self.fds_base = None
        self.rss_base = self.target.rss_kib()  # the guard's reference
        if not self.wire.open(self.budget.hang_timeout):
            raise TargetError("the back-end listens but does not accept")

    def step(self, step: Step, report: Optional[Report] = None
             ) -> Optional[Outcome]:
        """Carry out ``step`` and probe; an :class:`Outcome` when the step
        did not end with the back-end answering."""
        if step.kind == "connect":
            return self._reconnect(report)
        sent = self.wire.do(step)
        if step.kind == "hangup":
            return self._reconnect(report)
        state = self.wire.probe() if sent == ANSWERED else sent
        if state == ANSWERED:
            return None
        ended = self._ended(state == ENDED)
        if ended is not None:
            return ended
        if state == SILENT:
            return Outcome("hang", f"no answer to GET_FEATURES within "
                           f"{self.budget.hang_timeout}s after: {step}")
        if state == GREW:
            return Outcome("memory", f"resident memory grew past "
                           f"{self.budget.memory_limit_kib} KiB over its "
                           f"first reading while it did not answer, after:"
                           f" {step}")
        if report is not None:
            report.count("closed by the back-end")
        return self._reconnect(report)

    def _reconnect(self, report: Optional[Report]) -> Optional[Outcome]:
        """A new connection, proven served by a probe (a back-end that
        hangs up and then dies must not look alive)."""
        if self.wire.open(self.budget.hang_timeout):
            state = self.wire.probe()
            if state == ANSWERED:
                self.connections += 1
                return None
            if state == SILENT and self._ended() is None:
                return Outcome("refused", "the back-end took a new "
                               "connection but did not answer on it within"
                               f" {self.budget.hang_timeout}s")
        # A back-end that serves one connection closes its socket and
        # then exits: give the exit as long again before calling it stuck.
        ended = self._ended(self.wire.died(self.budget.hang_timeout))
        if ended is not None:
            return ended
        return Outcome("refused", "the back-end runs but accepts no new "
                       f"connection within {2 * self.budget.hang_timeout}s")

    def _ended(self, dying: bool = False) -> Optional[Outcome]:
        """How the process ended; ``dying``: its pidfd said it ended (the
        exit status follows at once)."""
        if dying and self.target.proc is not None:
            try:
                self.target.proc.wait(self.budget.hang_timeout)
            except Exception:  # subprocess.TimeoutExpired: still there
                pass
        how = self.target.ended()
        if how is None:
            return None
        if self.target.crashed():
            return Outcome("crash", how)
        return Outcome("exit", how)

    def _outgrown(self) -> bool:
        rss = self.target.rss_kib()
        return (rss is not None and self.rss_base is not None
                and rss - self.rss_base > self.budget.memory_limit_kib)

    def watch(self, report: Report) -> Optional[Outcome]:
        """Resident memory and open fds against their first reading."""
        rss, fds = self.target.rss_kib(), self.target.open_fds()
        report.peak_rss_kib = max(report.peak_rss_kib, rss or 0)
        report.peak_fds = max(report.peak_fds, fds or 0)
        for kind, now, limit, unit in (
                ("memory", rss, self.budget.memory_limit_kib, " KiB"),
                ("fds", fds, self.budget.fd_limit, "")):
            if now is None:
                continue
            base = self.rss_base if kind == "memory" else self.fds_base
            if base is None:
                self._set_base(kind, now)
            elif now - base > limit:
                what = "resident memory" if kind == "memory" else "open fds"
                return Outcome(kind, f"{what} grew from {base}{unit} to "
                               f"{now}{unit}")
        return None

    def _set_base(self, kind: str, value: int) -> None:
        if kind == "memory":
            self.rss_base = value
        else:
            self.fds_base = value


def play(target: Target, steps: List[Step], budget: Budget
         ) -> Optional[Outcome]:
    """Steps from a freshly started back-end; the first finding (or an
    exit), or None when every step was answered."""
    player = _Player(target, budget, 0)
    try:
        player.restart()
        watched = Report(0)  # peaks, unused: the growth is what counts
        for number, step in enumerate(steps, 1):
            outcome = player.step(step)
            if outcome is None and number % 50 == 0:
                outcome = player.watch(watched)
            if outcome is not None:
                return outcome
        return player.watch(watched)
    finally:
        player.close()
        target.stop()


#: ``known(kind, request, detail)``: the id of a known defect a finding
#: of that kind at that request (or with that detail) is -- it is then not
#: cut down again -- or None
Known = Callable[[str, str, str], Optional[str]]


def run(target: Target, seed: int, budget: Budget, out_dir: str,
        log: Callable[[str], None] = lambda line: None,
        known: Known = lambda kind, request, detail: None) -> Report:
    """One campaign; reproducers go to ``out_dir``."""
    report = Report(seed)
    if target.restartable:
        target.start()
    report.features, report.protocol_features = discover(
        target, budget.hang_timeout)
    generator = Generator(seed, report.features, report.protocol_features,
                          budget.rings)
    player = _Player(target, budget, seed)
    started = time.monotonic()
    history: List[Step] = []
    pending: List[Step] = []
    mark = 0
    try:
        if target.restartable:  # some serve one connection, then exit
            player.restart()
        else:
            player.wire.pidfd = target.pidfd  # --pid: watched, not ours
            player.wire.guard = player._outgrown
            if not player.wire.open(budget.hang_timeout):
                raise TargetError("the back-end accepts no connection")
        pending = generator.opening()
        while (player.wire.sent < budget.messages
               and time.monotonic() - started < budget.seconds
               and len(report.findings) < budget.max_findings
               and len(report.known) < 10 * budget.max_findings):
            step = pending.pop(0) if pending else generator.next()
            history.append(step)
            report.steps += 1
            connections = player.connections
            outcome = player.step(step, report)
            if player.connections != connections and outcome is None:
                mark = len(history)  # this connection's steps start here
            if outcome is None and report.steps % 50 == 0:
                outcome = player.watch(report)
            if step.kind in ("connect", "hangup"):
                pending = generator.opening()
            if outcome is None:
                continue
            report.count(outcome.kind)
            log(f"step {report.steps}: {outcome.kind}: {outcome.detail}")
            last = next((s for s in reversed(history)
                         if s.kind in ("msg", "hangup")), None)
            defect = known(outcome.kind, request_name(last.request)
                           if last is not None else "", outcome.detail)
            if outcome.kind in FINDINGS and defect is not None:
                log(f"a known defect: {defect} (not cut down again)")
                report.known.append(defect)
            elif outcome.kind in FINDINGS:
                report.findings.append(_finding(
                    target, outcome, history,
                    generator.opening() + history[mark:], budget, out_dir,
                    len(report.findings) + 1, report, log))
            if not target.restartable:
                break
            player.restart()
            history, pending, mark = [], generator.opening(), 0
    finally:
        report.messages = player.wire.sent
        report.seconds = time.monotonic() - started
        player.close()
        target.stop()
    return report


def _finding(target: Target, outcome: Outcome, history: List[Step],
             last_connection: List[Step], budget: Budget, out_dir: str,
             number: int, report: Report, log: Callable[[str], None]
             ) -> Finding:
    """Write the finding's run; replay it, and cut it down.  The last
    connection's steps (after an opening) are tried first: most back-ends
    forget a connection's state with it, and replays of a long run are
    slow."""
    header = {"seed": report.seed, "features": report.features,
              "protocol_features": report.protocol_features,
              "command": target.command, "outcome": outcome.kind,
              "detail": outcome.detail}
    path = os.path.join(out_dir, f"finding-{number}-{outcome.kind}.jsonl")
    steps = list(history)
    dump(path, steps, header)
    finding = Finding(outcome, steps, steps, path)
    if not target.restartable:
        return finding

    def fails(candidate: List[Step]) -> bool:
        again = play(target, candidate, budget)
        return again is not None and again.kind == outcome.kind and (
            outcome.kind != "crash" or again.detail == outcome.detail)

    log(f"cutting down {len(steps)} steps ...")
    start = steps
    if len(last_connection) < len(steps) and fails(last_connection):
        start = last_connection
        finding.replayed = True
    else:
        finding.replayed = fails(steps)
    if not finding.replayed:
        log("the finding did not happen again on replay: kept as found")
        return finding
    finding.minimal = ddmin(start, fails, budget.minimise_tries,
                            budget.minimise_seconds)
    finding.minimal_reproducer = path.replace(".jsonl", "-minimal.jsonl")
    again = play(target, finding.minimal, budget)  # its own words
    if again is not None and again.kind == outcome.kind:
        finding.minimal_outcome = again
        header = dict(header, detail=again.detail)
    dump(finding.minimal_reproducer, finding.minimal, header)
    log(f"cut down to {len(finding.minimal)} steps: "
        f"{finding.minimal_reproducer}")
    return finding


def replay(target: Target, steps: List[Step], budget: Budget
           ) -> Optional[Outcome]:
    """Play a reproducer's steps from a fresh back-end."""
    return play(target, steps, budget)
