"""
``python -m avocado_vhost fuzz``: the hostile front-end from the command
line.

Fuzz a back-end the fuzzer starts (it can restart it, so findings are cut
down to a short reproducer)::

    python -m avocado_vhost fuzz --cmd 'vhost-user-blk -s {socket} -b disk.img' \\
        --seed 1 --messages 5000 --seconds 120 --out fuzz-out

or one already running (no restart, no cutting down)::

    python -m avocado_vhost fuzz /run/my-backend.sock --pid 1234

and play a reproducer again::

    python -m avocado_vhost fuzz --cmd '...' --replay fuzz-out/finding-1-crash-minimal.jsonl

Exit status: 0 nothing found, 1 a finding (or, on replay, the reproducer
still fails), 2 the back-end could not be started or reached.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from typing import Optional

from avocado_vhost.fuzz import findings
from avocado_vhost.peers.external.backends import BACKENDS
from avocado_vhost.fuzz.campaign import Budget, replay, run
from avocado_vhost.fuzz.step import load
from avocado_vhost.fuzz.target import Target, TargetError

__all__ = ["add_parser"]


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]"
               ) -> None:
    fuzz = sub.add_parser(
        "fuzz", help="drive any back-end with malformed and boundary "
        "messages; report and cut down crashes and hangs",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    fuzz.add_argument("socket", nargs="?",
                      help="the back-end's socket (omit with --cmd: the "
                           "fuzzer picks one)")
    fuzz.add_argument("--cmd", help="command that starts the back-end "
                      "listening at {socket} ({dir}: a folder for its "
                      "files; {name}: a name unique to the run)")
    fuzz.add_argument("--backend", choices=sorted(BACKENDS),
                      help="a real back-end the kit knows (instead of "
                           "--cmd): " + "; ".join(
                               f"{b.name}: {b.about}"
                               for b in BACKENDS.values()))
    fuzz.add_argument("--pid", type=int, help="the running back-end's pid "
                      "(without --cmd), to watch its memory and fds")
    fuzz.add_argument("--seed", type=int, help="default: a random one, "
                      "printed")
    fuzz.add_argument("--messages", type=int, default=2000)
    fuzz.add_argument("--seconds", type=float, default=60.0)
    fuzz.add_argument("--hang-timeout", type=float, default=2.0)
    fuzz.add_argument("--max-findings", type=int, default=3)
    fuzz.add_argument("--rings", type=int, help="keep ring indexes below "
                      "this (to step around a known unchecked index); "
                      "default: any index, past the end too")
    fuzz.add_argument("--out", help="folder for reproducers and the "
                      "summary (default: fuzz-SEED)")
    fuzz.add_argument("--replay", metavar="FILE",
                      help="play this reproducer instead of fuzzing")
    fuzz.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.backend:
        known = BACKENDS[args.backend]
        args.cmd = known.template()
        if args.cmd is None:
            print(f"fuzz: {known.missing()}", file=sys.stderr)
            return 2
    if not args.cmd and not args.socket:
        print("fuzz: give the back-end's socket, or --cmd", file=sys.stderr)
        return 2
    budget = Budget(messages=args.messages, seconds=args.seconds,
                    hang_timeout=args.hang_timeout,
                    max_findings=args.max_findings, rings=args.rings)
    backend = args.backend or ""

    def known_defect(kind: str, request: str, detail: str) -> Optional[str]:
        return findings.known_id(backend, kind, request, detail)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    out = args.out or f"fuzz-{seed}"
    with tempfile.TemporaryDirectory(prefix="vf-") as folder:
        path = args.socket or os.path.join(folder, "backend.sock")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "backend.log"), "ab") as log:
            target = Target(path, args.cmd, args.pid, log)
            try:
                if args.replay:
                    return _replay(target, args.replay, budget)
                print(f"fuzz: seed {seed}, up to {budget.messages} messages"
                      f" or {budget.seconds:g} s; output in {out}",
                      file=sys.stderr, flush=True)
                report = run(target, seed, budget, out,
                             lambda line: print(f"fuzz: {line}",
                                                file=sys.stderr, flush=True),
                             known_defect)
            except TargetError as exc:
                print(f"fuzz: {exc}", file=sys.stderr)
                return 2
            finally:
                target.stop()
    summary = report.summary()
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 1 if report.findings else 0


def _replay(target: Target, path: str, budget: Budget) -> int:
    if not target.restartable:
        print("fuzz: --replay needs --cmd (each replay starts the back-end)",
              file=sys.stderr)
        return 2
    header, steps = load(path)
    outcome = replay(target, steps, budget)
    print(f"fuzz: replayed {len(steps)} steps of {path} (found: "
          f"{header.get('outcome')}: {header.get('detail')}): "
          + (f"{outcome.kind}: {outcome.detail}" if outcome else
             "every step answered"), file=sys.stderr)
    return 1 if outcome is not None and outcome.kind == header.get(
        "outcome") else 0
