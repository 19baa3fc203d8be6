"""
A watchdog process that outlives a killed test process and cleans up.

A test process killed by SIGKILL runs no tear-down.  QEMU dies with it
(``setpriv --pdeathsig``), but its temp dir would stay until the next test
removes it.  So each test starts a small watchdog (``python -m
avocado_vhost.plumbing.watchdog``) holding a pidfd of the test process and
the read end of a pipe.  At a normal end the test writes to the pipe and the
watchdog leaves.  If the pidfd fires first, the test process died: the
watchdog removes the temp dirs it owned, at once.

Under Avocado a killed test would also hang the whole job: Avocado 113's
instrumented runner waits on its test's result queue and never looks at the
test process (the test's ``timeout`` is enforced inside that process, which
is gone), and ending the runner does not help either -- the job's state
machine then waits forever for a result (``TaskStateMachine.monitor``).  So
the watchdog also holds the write end of that queue (Avocado sets it up as
the test process's ``sys.stdout.queue``) and, when the test dies, sends the
result Avocado waits for: ERROR, "test process died".  The job goes on at
once.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
from typing import Callable, List, Optional

from avocado_vhost.plumbing.tmpdirs import remove_all_orphans

__all__ = ["start_watchdog"]


def start_watchdog(tmp_base: str, result_fd: Optional[int] = None
                   ) -> Callable[[], None]:
    """Start a watchdog for this process; returns the function that tells
    it the test ended normally (call it last in tear-down).

    :param result_fd: the write end of Avocado's result queue, if any.
    """
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "avocado_vhost.plumbing.watchdog",
               "--pid", str(os.getpid()), "--fd", str(read_end)]
    fds = [read_end]
    if result_fd is not None:
        command += ["--result-fd", str(result_fd)]
        fds.append(result_fd)
    command += ["--tmp", tmp_base]
    child = subprocess.Popen(command, pass_fds=fds,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(read_end)

    def release() -> None:
        try:
            os.write(write_end, b"done")
            os.close(write_end)
        except OSError:
            pass
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return release


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="avocado-vhost watchdog")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--tmp", required=True)
    parser.add_argument("--result-fd", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        pidfd = os.pidfd_open(args.pid)
    except ProcessLookupError:
        pidfd = None
    watched = [args.fd] + ([pidfd] if pidfd is not None else [])
    ready, _, _ = select.select(watched, [], [])
    if args.fd in ready and os.read(args.fd, 16):
        return 0  # the test ended normally
    # The test process is gone without a word: its pipe closes early in
    # its exit, so wait (bounded) until it has really exited -- until then
    # /proc still shows it alive and its dirs are not orphans yet.
    if pidfd is not None:
        select.select([pidfd], [], [], 10)
    for path in remove_all_orphans(args.tmp):
        print(f"avocado-vhost watchdog: removed {path} of dead test "
              f"process {args.pid}", file=sys.stderr)
    if args.result_fd is not None:
        _report_death(args.result_fd, args.pid)
    return 0


def _report_death(fd: int, pid: int) -> None:
    """Put Avocado's "finished" message into the dead test's result queue
    (framed as ``SimpleQueue.put`` frames it)."""
    from multiprocessing.connection import Connection
    from multiprocessing.reduction import ForkingPickler

    from avocado.core.utils.messages import FinishedMessage
    reason = (f"the test process (pid {pid}) died without a result (killed?);"
              " avocado-vhost's watchdog removed its temp dirs")
    message = FinishedMessage.get("error", fail_reason=reason,
                                  fail_class="TestProcessDied")
    try:
        Connection(fd, readable=False).send_bytes(
            bytes(ForkingPickler.dumps(message)))
        print(f"avocado-vhost watchdog: {reason}", file=sys.stderr)
    except OSError:
        pass  # the runner is gone too


if __name__ == "__main__":
    sys.exit(main())
