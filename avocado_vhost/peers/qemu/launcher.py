"""
Start QEMU processes from one long-lived thread, so they die with the test.

QEMU runs under ``setpriv --pdeathsig KILL``: the kernel kills it when its
parent goes away.  "Parent" means the *thread* that forked it, and Avocado
runs ``setUp``, the test method and ``tearDown`` each in a short-lived
thread of its own, so a VM launched from the test method would be killed as
soon as the method returns.  Every launch is therefore handed to one daemon
thread that lives as long as the test process: QEMU then outlives the
methods but not the process, not even when the process is killed.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import threading
from concurrent.futures import Future
from typing import Any, Callable, List, Optional, Tuple, TypeVar

__all__ = ["call_in_launcher", "submit_to_launcher", "die_with_parent"]

T = TypeVar("T")


def die_with_parent(argv: List[str]) -> List[str]:
    """``argv`` under ``setpriv --pdeathsig KILL`` (start it from the
    launcher thread: the "parent" is the thread that forks)."""
    return [shutil.which("setpriv") or "setpriv", "--pdeathsig", "KILL",
            "--"] + list(argv)

_lock = threading.Lock()
_queue: "queue.Queue[Tuple[Callable[[], Any], Future[Any]]]" = queue.Queue()
_thread: Optional[threading.Thread] = None


def _serve() -> None:
    # qemu.qmp's synchronous wrapper binds to the event loop current where
    # it is created; give this thread one of its own.
    asyncio.set_event_loop(asyncio.new_event_loop())
    while True:
        func, future = _queue.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(func())
        except BaseException as exc:  # handed to the caller
            future.set_exception(exc)


def submit_to_launcher(func: Callable[[], T]) -> "Future[T]":
    """Run ``func`` in the launcher thread; its result comes as a Future.

    ``func`` must bound its own waits (QEMUMachine.launch does, with its
    QMP timeout).
    """
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="qemu-launcher",
                                       daemon=True)
            _thread.start()
    future: "Future[T]" = Future()
    _queue.put((func, future))
    return future


def call_in_launcher(func: Callable[[], T]) -> T:
    """Run ``func`` in the launcher thread and return (or raise) its result."""
    return submit_to_launcher(func).result()
