#!/usr/bin/env python3
"""
How much of QEMU's vhost-user front-end the suite runs, next to upstream's
own vhost-user qtests: gcov line and function coverage, measured on QEMU.

    .venv/bin/python scripts/qemu_coverage.py [--series 10.2] [--build DIR]
        [--no-upstream] [--suite-args '...'] [--offers modern,legacy,...]
        [--json FILE]

(``scripts/test-all`` runs it with ``--suite-args --filter-by-tags=smoke``:
a check that it still runs, not the figure.)

1. builds the newest QEMU (x86_64) with ``--enable-gcov`` in a build
   directory of its own (``QEMU_GCOV=1 scripts/build-qemu``; cached like
   the other builds: cold, about 10 minutes on 2 cores);
2. runs the functional suite against it (without DPDK's interop tests,
   which start no QEMU), once per offer of ``--offers`` (the capability
   matrix reaches QEMU's legacy paths too), and reads the counters;
3. clears them and runs every vhost-user path of upstream's
   ``tests/qtest/qos-test`` from the same build, one process per path, as
   QEMU's ``meson test`` does, and reads them again;
4. prints, for each front-end file, lines and functions reached by the
   suite and by upstream side by side, then the functions neither reaches
   and those only upstream reaches.

A test that fails does not stop the measurement (the job's counts are
printed; a known QEMU defect CANCELs as usual).  The figure is a map of
what is tested, not a verdict: a function reached is not a function
checked.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: the front-end's files, as QEMU's tree names them
FILES = ("hw/virtio/vhost-user.c", "hw/virtio/vhost.c", "net/vhost-user.c",
         "hw/net/vhost_net.c", "hw/virtio/vhost-user-base.c",
         "hw/block/vhost-user-blk.c")


@dataclass
class FileCoverage:
    """One source file's counters after one run."""

    lines: Dict[int, int] = field(default_factory=dict)  # line -> count
    functions: Dict[str, int] = field(default_factory=dict)  # name -> calls

    def merge(self, other: "FileCoverage") -> None:
        """A file compiled into several objects: counts add up."""
        for line, count in other.lines.items():
            self.lines[line] = self.lines.get(line, 0) + count
        for name, count in other.functions.items():
            self.functions[name] = self.functions.get(name, 0) + count

    def reached(self) -> Tuple[int, int, int, int]:
        """(lines run, lines, functions run, functions)."""
        return (sum(1 for c in self.lines.values() if c),
                len(self.lines),
                sum(1 for c in self.functions.values() if c),
                len(self.functions))


def build_qemu(series: str) -> str:
    env = dict(os.environ, QEMU_GCOV="1", QEMU_TARGETS="x86_64")
    out = subprocess.run([os.path.join(HERE, "build-qemu"), series], env=env,
                         stdout=subprocess.PIPE, check=True)
    return out.stdout.decode().strip().splitlines()[-1]


def notes_for(build: str, source: str) -> List[str]:
    """The .gcno files of ``source`` (meson names objects after the path,
    slashes as underscores)."""
    name = source.replace("/", "_") + ".gcno"
    return sorted(glob.glob(os.path.join(build, "**", name), recursive=True))


def reset(build: str) -> None:
    for path in glob.glob(os.path.join(build, "**", "*.gcda"),
                          recursive=True):
        os.unlink(path)


def collect(build: str) -> Dict[str, FileCoverage]:
    """Counters of :data:`FILES` now, read with ``gcov --json-format``."""
    found: Dict[str, FileCoverage] = {}
    for source in FILES:
        total = FileCoverage()
        for note in notes_for(build, source):
            proc = subprocess.run(
                ["gcov", "--json-format", "--stdout", note],
                cwd=build, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                check=False)
            for line in proc.stdout.decode().splitlines():
                if not line.startswith("{"):
                    continue
                for entry in json.loads(line).get("files", []):
                    if not entry["file"].endswith(source):
                        continue  # a header it includes
                    part = FileCoverage(
                        {ln["line_number"]: ln["count"]
                         for ln in entry["lines"]},
                        {fn["name"]: fn["execution_count"]
                         for fn in entry["functions"]})
                    total.merge(part)
        if total.lines:
            found[source] = total
    return found


def run_suite(build: str, extra: List[str]) -> str:
    env = dict(os.environ,
               QEMU_TEST_QEMU_BINARY=f"{build}/qemu-system-x86_64")
    with tempfile.TemporaryDirectory(prefix="avh-cov-") as results:
        proc = subprocess.run(
            [os.path.join(ROOT, ".venv/bin/avocado"), "run",
             "--job-results-dir", results, os.path.join(ROOT,
                                                        "tests/functional"),
             *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            check=False)
    summary = [line for line in proc.stdout.decode().splitlines()
               if line.startswith(("RESULTS", "JOB TIME"))]
    return "; ".join(summary) or proc.stdout.decode()[-1000:]


def upstream_paths(build: str) -> List[str]:
    qos = os.path.join(build, "tests/qtest/qos-test")
    env = dict(os.environ, QTEST_QEMU_BINARY=f"{build}/qemu-system-x86_64")
    out = subprocess.run([qos, "-l"], env=env, cwd=build,
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    return [p.strip() for p in out.splitlines()
            if "vhost-user" in p and p.strip().startswith("/x86_64/")]


def run_upstream(build: str) -> str:
    env = dict(os.environ, QTEST_QEMU_BINARY=f"{build}/qemu-system-x86_64")
    storage = os.path.join(build, "storage-daemon/qemu-storage-daemon")
    if os.path.exists(storage):
        env["QTEST_QEMU_STORAGE_DAEMON_BINARY"] = storage
    paths = upstream_paths(build)
    failed = []
    for path in paths:
        proc = subprocess.run(
            [os.path.join(build, "tests/qtest/qos-test"), "-p", path],
            env=env, cwd=build, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=600, check=False)
        if proc.returncode != 0:
            failed.append(path.rsplit("/", 2)[-2] + "/" +
                          path.rsplit("/", 1)[-1])
    return (f"{len(paths)} qos-test paths, {len(paths) - len(failed)} "
            "passed" + (f"; failed: {', '.join(failed)}" if failed else ""))


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "   - "


def report(suite: Dict[str, FileCoverage],
           upstream: Optional[Dict[str, FileCoverage]]) -> str:
    out = ["file                          suite: lines      functions"
           + ("   | upstream: lines      functions" if upstream else "")]
    for source in FILES:
        mine = suite.get(source)
        if mine is None:
            out.append(f"{source:29} not built (no .gcno)")
            continue
        lr, lt, fr, ft = mine.reached()
        row = (f"{source:29} {lr:4}/{lt:<4} {pct(lr, lt)}  {fr:3}/{ft:<3} "
               f"{pct(fr, ft)}")
        if upstream and source in upstream:
            ulr, ult, ufr, uft = upstream[source].reached()
            row += (f" | {ulr:4}/{ult:<4} {pct(ulr, ult)}  {ufr:3}/{uft:<3} "
                    f"{pct(ufr, uft)}")
        out.append(row)
    for source in FILES:
        if source not in suite:
            continue
        never: List[str] = []
        only_upstream: List[str] = []
        for name, count in sorted(suite[source].functions.items()):
            if count:
                continue
            theirs = upstream.get(source) if upstream else None
            if theirs and theirs.functions.get(name):
                only_upstream.append(name)
            else:
                never.append(name)
        out.append(f"\n{source}: {len(never)} function(s) neither reaches"
                   + (":" if never else ""))
        out += [f"    {name}" for name in never]
        if only_upstream:
            out.append(f"  reached by upstream only: "
                       f"{', '.join(only_upstream)}")
    return "\n".join(out)


def as_json(run: Dict[str, FileCoverage]) -> Dict[str, object]:
    return {source: {"lines": dict(sorted(cov.lines.items())),
                     "functions": cov.functions}
            for source, cov in run.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--series", default="10.2")
    parser.add_argument("--build", default=None,
                        help="a gcov build directory (default: build it)")
    parser.add_argument("--no-upstream", action="store_true")
    parser.add_argument("--suite-args", default="",
                        help="avocado run arguments instead of the default "
                        "tag filter (which leaves out DPDK's tests)")
    parser.add_argument("--offers", default="modern",
                        help="comma-separated offers of the suite's "
                        "back-ends (-p offer=), one suite run each; the "
                        "counts add up (the capability matrix: "
                        "modern,legacy,no-reply-ack,no-mq)")
    parser.add_argument("--json", default=None,
                        help="also write the counters here")
    args = parser.parse_args()
    build = args.build or build_qemu(args.series)
    if not notes_for(build, FILES[0]):
        sys.exit(f"{build} has no gcov notes for {FILES[0]}: not a gcov "
                 "build (QEMU_GCOV=1 scripts/build-qemu)")
    reset(build)
    for offer in args.offers.split(","):
        extra = args.suite_args.split() or ["--filter-by-tags=-dpdk",
                                            "--filter-by-tags-include-empty"]
        print(f"suite, offer={offer}: "
              f"{run_suite(build, [*extra, '-p', f'offer={offer}'])}",
              flush=True)
    suite = collect(build)
    upstream: Optional[Dict[str, FileCoverage]] = None
    if not args.no_upstream:
        reset(build)
        print(f"upstream: {run_upstream(build)}", flush=True)
        upstream = collect(build)
    print(f"\nQEMU {build}\n")
    print(report(suite, upstream))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"build": build, "suite": as_json(suite),
                       "upstream": as_json(upstream) if upstream else None},
                      out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
