"""
``python -m avocado_vhost``: the suite's tools from the command line.

``serve``
    The in-process back-end standing alone, against a QEMU started by hand
    (or any vhost-user front-end): it listens on (or connects to) a UNIX
    socket, decodes and judges every message, prints the trace as it goes
    and, on Ctrl-C, writes it (``--trace``, ``--json``) and says whether the
    front-end broke a rule.  ``--datapath echo`` sends every frame the guest
    transmits back to it; ``drop`` takes and counts them.
``proxy``
    Between a front-end and any back-end: every message and fd relayed,
    both directions decoded and judged.
``fuzz``
    A hostile front-end against any back-end (:mod:`.fuzz`): crashes,
    hangs and leaks found, cut down to reproducers, replayed.
``chart``
    A message-sequence chart (HTML with SVG, opens offline) of trace files
    (``*.trace.json``) or of a test's log directory.

Example, with QEMU started by hand against the back-end::

    python -m avocado_vhost serve /tmp/vu.sock --json /tmp/vu.trace.json
    qemu-system-x86_64 -machine memory-backend=mem0 \\
        -object memory-backend-memfd,id=mem0,size=256M,share=on -m 256M \\
        -chardev socket,id=vu,path=/tmp/vu.sock \\
        -netdev vhost-user,id=n0,chardev=vu -device virtio-net-pci,netdev=n0
    python -m avocado_vhost chart /tmp/vu.trace.json -o /tmp/vu.html
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import threading
from typing import List, Optional, Sequence

from avocado_vhost.tools.chart import write_chart
from avocado_vhost.vhost_user.device_offers import DEVICES, device_config
from avocado_vhost.fuzz import command as fuzz_command
from avocado_vhost.peers.guest.boot import GuestOptions, backend_config
from avocado_vhost.vhost_user import (Fault, FaultAction, Request,
                                      VhostUserBackend)
from avocado_vhost.vhost_user.message import (FLAG_REPLY, VERSION, VringState,
                                              encode)
from avocado_vhost.vhost_user.net import NetDevice, Port, SentFrame
from avocado_vhost.vhost_user.proxy import Proxy
from avocado_vhost.vhost_user.trace import Trace

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    if args.device == "net":
        # what the real-guest tests offer: a virtio-net back-end like a
        # real one
        config = backend_config(GuestOptions(
            queues=args.queues, packed=args.packed,
            event_idx=args.event_idx))
    else:  # configuration space served, rings never processed
        config = device_config(args.device)
    port = Port()
    device = (None if args.datapath == "none" or args.device != "net"
              else NetDevice(port))
    backend = VhostUserBackend(args.name, config, device)
    backend.faults.extend(_planted_bugs(args))
    if args.datapath == "echo":
        def echo(frames: List[SentFrame]) -> None:
            port.wire.extend(f.data for f in frames)  # port.cond is held
            backend.poke()
        port.on_sent.append(echo)
    if not args.quiet:
        backend.trace.live = lambda line: print(line, flush=True)
    if args.connect:
        backend.reconnect_path = args.socket
        backend.connect(args.socket)
    else:
        backend.listen(args.socket)
    backend.start()
    print(f"serve: back-end '{args.name}' "
          f"{'connected to' if args.connect else 'listening on'} "
          f"{args.socket}; Ctrl-C ends it", file=sys.stderr, flush=True)
    _until_interrupted()
    backend.stop()
    return _verdict(args, backend.trace, "serve",
                    f"{backend.messages} messages, {len(backend.violations)} "
                    f"violations, {len(backend.errors)} errors; frames taken "
                    f"{port.sent_total}, delivered "
                    f"{sum(port.received.values())}",
                    backend.violations + backend.errors)


def _planted_bugs(args: argparse.Namespace) -> List[Fault]:
    """``--crash-on``, ``--hang-on``, ``--misname-ring``: a back-end with a
    known bug, the negative controls of the fuzzer (it must find the bug
    and cut its run down to the one message) and of the kit's verdict (a
    scenario must fail on it)."""
    faults = []
    if args.crash_on:
        def crash(request: Request, payload: object) -> bool:
            os.abort()  # SIGABRT, as a failed assertion in C
        faults.append(Fault(FaultAction.DISCONNECT,
                            request=Request[args.crash_on], match=crash))
    if args.hang_on:
        faults.append(Fault(FaultAction.HOLD, request=Request[args.hang_on],
                            times=0, hold_timeout=3600.0))
    if args.misname_ring:
        def misnamed(request: Request, payload: object) -> bytes:
            # the next ring's name, base 0: right for rings never used
            assert isinstance(payload, VringState)
            return encode(Request.GET_VRING_BASE,
                          VringState(payload.index + 1, 0),
                          VERSION | FLAG_REPLY)
        faults.append(Fault(FaultAction.REPLY, request=Request.GET_VRING_BASE,
                            times=0, reply_bytes=misnamed))
    return faults


def _until_interrupted() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


def _verdict(args: argparse.Namespace, trace: Trace, tool: str,
             summary: str, problems: Sequence[object]) -> int:
    """After Ctrl-C: write the trace where asked, say what happened and
    list every problem; exit status 1 if there was any."""
    if args.trace:
        trace.write(args.trace)
    if args.json:
        trace.write_json(args.json)
    print(f"{tool}: {summary}", file=sys.stderr)
    for text in problems:
        print(f"  - {text}", file=sys.stderr)
    return 1 if problems else 0


def _proxy(args: argparse.Namespace) -> int:
    proxy = Proxy(args.listen, args.backend, args.name)
    if not args.quiet:
        proxy.trace.live = lambda line: print(line, flush=True)
    proxy.start()
    print(f"proxy: front-ends connect to {args.listen}; the back-end is at "
          f"{args.backend}; Ctrl-C ends it", file=sys.stderr, flush=True)
    _until_interrupted()
    proxy.stop()
    return _verdict(args, proxy.trace, "proxy", proxy.describe(),
                    proxy.violations + proxy.errors)


def _chart(args: argparse.Namespace) -> int:
    paths: List[str] = []
    for item in args.traces:
        if os.path.isdir(item):
            paths += glob.glob(os.path.join(item, "*.trace.json"))
        else:
            paths.append(item)
    if not paths:
        print("chart: no *.trace.json given or found", file=sys.stderr)
        return 2
    out = args.output or os.path.join(
        os.path.dirname(os.path.abspath(paths[0])), "chart.html")
    write_chart(paths, out, args.title or ", ".join(
        os.path.basename(p) for p in paths))
    print(out)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m avocado_vhost",
        description="vhost-user tools of avocado-vhost")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the back-end against a QEMU started by hand",
        description="The in-process back-end standing alone: it listens "
        "on (or connects to) a UNIX socket, decodes and judges every "
        "message, prints the trace as it goes and, on Ctrl-C, writes it "
        "and says whether the front-end broke a rule (exit status 1).")
    serve.add_argument("socket", help="UNIX socket path")
    serve.add_argument("--device", choices=("net", *DEVICES), default="net",
                       help="the device type served (default net; gpio, "
                            "blk and scmi serve their configuration space "
                            "and leave the rings alone)")
    serve.add_argument("--connect", action="store_true",
                       help="connect to the socket (QEMU's server=on) and "
                            "reconnect when a connection ends, instead of "
                            "listening")
    serve.add_argument("--name", default="backend",
                       help="the back-end's name in the trace")
    serve.add_argument("--queues", type=int, default=1,
                       help="queue pairs offered (GET_QUEUE_NUM)")
    serve.add_argument("--packed", action="store_true",
                       help="offer VIRTIO_F_RING_PACKED")
    serve.add_argument("--event-idx", action="store_true",
                       help="offer VIRTIO_F_RING_EVENT_IDX")
    serve.add_argument("--datapath", choices=("echo", "drop", "none"),
                       default="drop",
                       help="what to do with transmitted frames (default: "
                            "drop, counted); none: never touch the rings")
    requests = [r.name for r in Request if r is not Request.NONE]
    serve.add_argument("--crash-on", metavar="REQUEST", choices=requests,
                       help="abort (SIGABRT) on this request: a planted "
                            "bug for the fuzzer's negative control")
    serve.add_argument("--hang-on", metavar="REQUEST", choices=requests,
                       help="stop answering at this request (a planted "
                            "hang)")
    serve.add_argument("--misname-ring", action="store_true",
                       help="answer GET_VRING_BASE naming the next ring (a "
                            "planted deviation QEMU lets pass and the proxy "
                            "catches: the kit's verdict control)")
    _trace_options(serve)
    serve.set_defaults(func=_serve)
    proxy = sub.add_parser(
        "proxy", help="relay and judge between a front-end and any back-end",
        description="Sits between a front-end (QEMU connects to LISTEN) and "
        "any back-end listening at BACKEND: passes every message and fd "
        "through unchanged, prints both directions decoded, and judges both "
        "sides (the front-end by the suite's conformance rules, the back-end "
        "by the reply rules); on Ctrl-C lists what either side did against "
        "the spec (exit status 1 then).")
    proxy.add_argument("listen", help="socket the front-end connects to")
    proxy.add_argument("backend", help="the back-end's listening socket")
    proxy.add_argument("--name", default="proxy")
    _trace_options(proxy)
    proxy.set_defaults(func=_proxy)
    chart = sub.add_parser(
        "chart", help="message-sequence chart of traces (HTML with SVG)")
    chart.add_argument("traces", nargs="+",
                       help="*.trace.json files, or a test's log directory")
    chart.add_argument("-o", "--output",
                       help="HTML file (default: chart.html beside the "
                            "first trace)")
    chart.add_argument("--title", help="the page's title")
    chart.set_defaults(func=_chart)
    fuzz_command.add_parser(sub)
    return top


def _trace_options(tool: argparse.ArgumentParser) -> None:
    """What serve and proxy do with their trace (see :func:`_verdict`)."""
    tool.add_argument("--trace", help="write the trace (text) here on exit")
    tool.add_argument("--json", help="write the trace (JSON, for chart) "
                                     "here on exit")
    tool.add_argument("--quiet", action="store_true",
                      help="do not print the trace as it goes")


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))
