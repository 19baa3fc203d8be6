"""
Message-sequence charts of vhost-user conversations: one HTML page with an
SVG that a browser opens offline.

Lanes: QEMU (the front-end) on the left, one lane per back-end trace (a
migration has two: source and destination).  Rows follow the wall clock
across all traces.  A request is an arrow from QEMU to its back-end, a
reply an arrow back; ring starts and stops, connections, faults and
logging switches are marked on the back-end's lane; violations, errors
and refusals are red, across the row, with their text.  The summary at the
top says what a reader needs first: how many messages, and whether anything
broke the rules.

Input: the ``<name>.trace.json`` files the suite writes beside each
``<name>.trace.log`` (:meth:`Trace.write_json`).
"""

from __future__ import annotations

import html
import json
import os
from typing import Dict, List, Sequence, Tuple

__all__ = ["render", "render_files", "write_chart"]

_ROW = 18
_LANE = 330
_LEFT = 150
_MAX_ROWS = 3000
_BAD = ("violation", "error", "refused")
_COLOURS = {"RING-STARTED": "#2e7d32", "RING-STOPPED": "#757575",
            "CONNECTED": "#1565c0", "DISCONNECTED": "#ef6c00",
            "FAULT": "#6a1b9a", "LOG-ALL": "#00838f", "LOG-BASE": "#00838f"}


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def render(traces: Sequence[Dict[str, object]], title: str) -> str:
    """The HTML page for ``traces`` (each ``{"name", "entries"}``)."""
    rows: List[Tuple[float, int, int, Dict[str, object]]] = []
    for lane, trace in enumerate(traces, start=1):
        for entry in trace["entries"]:  # type: ignore[attr-defined]
            rows.append((float(entry["wall"]), lane, int(entry["seq"]), entry))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    cut = len(rows) - _MAX_ROWS
    rows = rows[:_MAX_ROWS]
    bad = sum(1 for r in rows if r[3]["kind"] in _BAD)
    messages = sum(1 for r in rows if r[3]["kind"] in ("rx", "tx"))
    width = _LEFT + _LANE * len(traces) + 420
    height = 60 + _ROW * (len(rows) + 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" font-family="monospace" font-size="11">',
           '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="7" '
           'refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker>'
           '</defs>']
    xs = [_LEFT] + [_LEFT + _LANE * i for i in range(1, len(traces) + 1)]
    names = ["QEMU (front-end)"] + [f"back-end {t['name']}" for t in traces]
    for x, name in zip(xs, names):
        out.append(f'<text x="{x}" y="20" text-anchor="middle" '
                   f'font-weight="bold">{_esc(name)}</text>'
                   f'<line x1="{x}" y1="30" x2="{x}" y2="{height}" '
                   'stroke="#bbb"/>')
    t0 = rows[0][0] if rows else 0.0
    for n, (wall, lane, _, e) in enumerate(rows):
        y = 50 + _ROW * n
        kind, request = str(e["kind"]), str(e["request"])
        detail = str(e["detail"])[:60]
        out.append(f'<text x="4" y="{y + 4}" fill="#888">'
                   f'{wall - t0:9.4f}s c{e["conn"]}</text>')
        xq, xb = xs[0], xs[lane]
        if kind in ("rx", "tx"):
            x1, x2 = (xq, xb) if kind == "rx" else (xb, xq)
            colour = "#000" if kind == "rx" else "#555"
            out.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" '
                       f'stroke="{colour}" marker-end="url(#a)"/>'
                       f'<text x="{min(x1, x2) + 6}" y="{y - 3}" '
                       f'fill="{colour}">{_esc(request)} {_esc(detail)}'
                       '</text>')
        elif kind in _BAD:
            out.append(f'<rect x="{xq}" y="{y - 12}" width="{width - xq - 4}"'
                       f' height="{_ROW - 2}" fill="#ffebee"/>'
                       f'<text x="{xq + 6}" y="{y + 1}" fill="#c62828" '
                       f'font-weight="bold">{_esc(kind.upper())}: '
                       f'{_esc(request)} {_esc(str(e["detail"])[:160])}'
                       '</text>')
        else:
            colour = _COLOURS.get(request, "#444")
            out.append(f'<circle cx="{xb}" cy="{y - 4}" r="5" '
                       f'fill="{colour}"/><text x="{xb + 9}" y="{y}" '
                       f'fill="{colour}">{_esc(request)} {_esc(detail)}'
                       '</text>')
    out.append("</svg>")
    verdict = (f'<span style="color:#c62828;font-weight:bold">{bad} '
               'violation(s), error(s) or refusal(s) -- in red below</span>'
               if bad else '<span style="color:#2e7d32;font-weight:bold">'
               'no violation, error or refusal</span>')
    more = (f"<p>(the first {_MAX_ROWS} of {_MAX_ROWS + cut} entries)</p>"
            if cut > 0 else "")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title></head>"
            "<body style=\"font-family:sans-serif\">"
            f"<h2>{_esc(title)}</h2><p>{messages} messages between QEMU and "
            f"{len(traces)} back-end(s): {verdict}.  Arrows: requests "
            "(black) and replies (grey); dots: ring starts (green), stops "
            "(grey), connections (blue/orange), faults (purple), logging "
            f"(teal).</p>{more}{''.join(out)}</body></html>\n")


def render_files(paths: Sequence[str], title: str) -> str:
    traces = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            traces.append(json.load(f))
    # lanes in the order the back-ends first spoke (a migration's source
    # before its destination)
    traces.sort(key=lambda t: min((e["wall"] for e in t["entries"]),
                                  default=0.0))
    return render(traces, title)


def write_chart(paths: Sequence[str], out: str, title: str) -> None:
    """Write the chart of the trace files ``paths`` to ``out``."""
    page = render_files(paths, title)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, out)
