"""
Avocado plugins of the suite, loaded through entry points (``pyproject.toml``).

``VhostInit`` (``avocado.plugins.init``)
    registers a ``vhost.<name>`` setting for every parameter of
    :mod:`avocado_vhost.params`, with its default, its environment variable
    and what is valid, so ``avocado config reference`` documents them and an
    Avocado config file can set them (``[vhost]`` section); and
    ``vhost.order``, read by :mod:`.avocado_order`.

``VhostResult`` (``avocado.plugins.result``)
    after a job, adds to every test of ``results.json`` the QEMU it ran
    (binary, version, target, accelerator) and the paths of its vhost-user
    traces, and writes ``vhost.json`` beside it: the QEMU binaries of the
    job and each test's traces.  The tests leave this information in their
    whiteboard (which the HTML report shows too).  It runs after Avocado's
    ``json`` result plugin (plugins run in name order).
"""

from __future__ import annotations

import html
import json
import os
from xml.dom import minidom
from xml.parsers.expat import ExpatError
from typing import Any, Dict, List

from avocado.core.plugin_interfaces import Init, Result
from avocado.core.settings import settings

from avocado_vhost.params import PARAMS

__all__ = ["VhostInit", "VhostResult", "SECTION"]

SECTION = "vhost"


class VhostInit(Init):
    """Register the suite's parameters as Avocado settings."""

    name = "vhost"
    description = "avocado-vhost: parameters of the vhost-user suite"

    def initialize(self) -> None:
        # Result plugins run in name order unless told otherwise; the vhost
        # result plugin edits results.json and results.xml, so those two go
        # first (the others keep their order after them).  A configured
        # order is left alone.
        if not settings.as_dict().get("plugins.result.order"):
            settings.update_option("plugins.result.order", ["json", "xunit"])
        for param in PARAMS.values():
            settings.register_option(
                section=SECTION, key=param.name, default=param.default,
                help_msg=(f"{param.help}. Test parameter -p {param.name}=, "
                          f"environment variable {param.env}; the order of "
                          "precedence is -p, the environment, this setting, "
                          "the default"))
        settings.register_option(
            section=SECTION, key="order", default="longest-first",
            help_msg=("the order a job starts its tests in: longest-first "
                      "(each test's time in this machine's recent jobs, "
                      "else a prior from its tags; see "
                      "avocado_vhost.runner.avocado_order) or given "
                      "(Avocado's own, alphabetical)"))


def _whiteboard(test: Dict[str, Any]) -> Dict[str, Any]:
    try:
        data = json.loads(test.get("whiteboard") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class VhostResult(Result):
    """QEMU binary and version, trace links, known QEMU defects and spec
    violations in the job's results."""

    name = "vhost"
    description = "avocado-vhost: QEMU, traces, known defects, violations"

    def render(self, result: Any, job: Any) -> None:
        path = os.path.join(job.logdir, "results.json")
        try:
            with open(path, encoding="utf-8") as src:
                results = json.load(src)
        except (OSError, ValueError):
            return  # the json result was disabled
        summary: Dict[str, Any] = {"qemu": {}, "tests": {},
                                   "known_defects": {}, "violations": {},
                                   "conformance": {},
                                   "backend_defects": {}}
        for test in results.get("tests", []):
            info = _whiteboard(test)
            if not info:
                continue
            test["qemu"] = info.get("qemu")
            test["qemu_version"] = info.get("qemu_version")
            traces: List[str] = [os.path.join(test.get("logdir", ""), name)
                                  for name in info.get("traces", [])]
            test["traces"] = traces
            test["known_defects"] = info.get("known_defects", [])
            test["violations"] = info.get("violations", [])
            summary["qemu"][info.get("qemu")] = {
                "version": info.get("qemu_version"),
                "arch": info.get("arch"), "accel": info.get("accel")}
            summary["tests"][test.get("name")] = {
                "status": test.get("status"), "traces": traces,
                "qemu": info.get("qemu"),
                "accel": info.get("accel"), "arch": info.get("arch")}
            for defect in test["known_defects"]:
                found = summary["known_defects"].setdefault(
                    defect["id"], dict(defect, tests=[]))
                found["tests"].append(test.get("name"))
            if test["violations"]:
                summary["violations"][test.get("name")] = test["violations"]
            _conformance(summary, test, info)
        results["known_defects"] = list(summary["known_defects"].values())
        with open(path, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=4)
        _add_to_xunit(os.path.join(job.logdir, "results.xml"),
                      summary["tests"], summary["qemu"])
        with open(os.path.join(job.logdir, "vhost.json"), "w",
                  encoding="utf-8") as out:
            json.dump(summary, out, indent=4)
        with open(os.path.join(job.logdir, "vhost.html"), "w",
                  encoding="utf-8") as out:
            out.write(_html_page(job.logdir, results.get("tests", []),
                                 summary))


def _conformance(summary: Dict[str, Any], test: Dict[str, Any],
                 info: Dict[str, Any]) -> None:
    """The conformance kit's table: per external back-end, each scenario's
    verdict and the deviations it accepted; and the back-end defects the
    fuzzer found again."""
    backend = info.get("external_backend")
    if not backend:
        return
    scenario = str(test.get("name", "")).split(":")[-1]
    summary["conformance"].setdefault(backend, {})[scenario] = {
        "status": test.get("status"),
        "reason": test.get("fail_reason") if test.get("status") != "PASS"
        else None,
        "deviations": info.get("accepted_deviations", [])}
    for defect in info.get("backend_defects", []):
        summary["backend_defects"].setdefault(backend, [])
        if defect not in summary["backend_defects"][backend]:
            summary["backend_defects"][backend].append(defect)


def _add_to_xunit(path: str, tests: Dict[str, Any],
                  qemu: Dict[str, Any]) -> None:
    """Each testcase of results.xml gets properties: the QEMU binary and
    version, and one ``trace`` per vhost-user trace."""
    try:
        document = minidom.parse(path)
    except (OSError, ExpatError):
        return  # the xunit result was disabled
    for case in document.getElementsByTagName("testcase"):
        info = tests.get(case.getAttribute("name"))
        if info is None:
            continue
        props = document.createElement("properties")
        values = [("qemu", info.get("qemu") or ""),
                  ("qemu_version",
                   (qemu.get(info.get("qemu")) or {}).get("version") or ""),
                  ("accel", info.get("accel") or "")]
        values += [("trace", trace) for trace in info.get("traces", [])]
        for name, value in values:
            prop = document.createElement("property")
            prop.setAttribute("name", name)
            prop.setAttribute("value", str(value))
            props.appendChild(prop)
        case.insertBefore(props, case.firstChild)
    with open(path, "w", encoding="utf-8") as out:
        document.writexml(out, encoding="UTF-8")


_STYLE = ("body{font-family:sans-serif;max-width:80em} td,th{padding:4px 8px;"
          "border-bottom:1px solid #ddd;vertical-align:top;text-align:left;"
          "overflow-wrap:anywhere} table{border-collapse:collapse;"
          "width:100%} .PASS{color:green}.FAIL,.ERROR,.INTERRUPT{color:red}"
          ".CANCEL,.SKIP,.WARN{color:#a60} .links a{margin-right:.6em}")


def _links(job_dir: str, test: Dict[str, Any]) -> str:
    """The chart first, then the test's logs and traces."""
    logdir = test.get("logdir", "")
    files = sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []
    shown = [f for f in files if f == "chart.html"] + [
        f for f in files if f.endswith(".log") or f.endswith(".txt")]
    return " ".join(
        f'<a href="{html.escape(os.path.relpath(os.path.join(logdir, f), job_dir))}">'
        f"{html.escape(f)}</a>" for f in shown)


def _table(header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_page(job_dir: str, tests: List[Dict[str, Any]],
               summary: Dict[str, Any]) -> str:
    """What a reader needs first -- the QEMU under test, the counts, the
    known QEMU defects found, the spec violations found, the failures --
    then every test; links relative to the job directory."""
    esc = html.escape
    counts: Dict[str, int] = {}
    for test in tests:
        counts[str(test.get("status"))] = counts.get(
            str(test.get("status")), 0) + 1
    qemus = _table(["QEMU", "version", "target", "accelerator"], [
        [esc(str(path)), esc(str(q.get("version"))), esc(str(q.get("arch"))),
         esc(str(q.get("accel")))] for path, q in summary["qemu"].items()])
    defects = summary["known_defects"]
    defect_part = _table(["defect", "fixed by", "tests that hit it"], [
        [esc(d["id"]), f"{esc(d['commit'])} {esc(d['title'])}",
         "<br>".join(esc(str(t)) for t in d["tests"])]
        for d in defects.values()]) if defects else "<p>none</p>"
    violations = summary["violations"]
    violation_part = _table(["test", "violation"], [
        [esc(str(name)), "<br>".join(esc(v) for v in found)]
        for name, found in violations.items()]) if violations \
        else "<p>none</p>"

    conformance = "".join(
        f"<h3>{esc(backend)}</h3>" + _table(
            ["scenario", "verdict", "deviations accepted"],
            [[esc(name), f'<span class="{esc(str(v["status"]))}">'
              f'{esc(str(v["status"]))}</span>'
              + (f" {esc(str(v['reason']))}" if v["reason"] else ""),
              "<br>".join(esc(d) for d in v["deviations"]) or "none"]
             for name, v in sorted(scenarios.items())])
        + ("<p>known defects found: " + ", ".join(
            esc(d) for d in summary["backend_defects"].get(backend, []))
           + "</p>" if summary["backend_defects"].get(backend) else "")
        for backend, scenarios in sorted(summary["conformance"].items()))

    def row(test: Dict[str, Any]) -> List[str]:
        status = esc(str(test.get("status")))
        reason = "" if status == "PASS" else str(test.get("fail_reason")
                                                 or "")
        return [esc(str(test.get("name"))),
                f'<span class="{status}">{status}</span>', esc(reason),
                f'<span class="links">{_links(job_dir, test)}</span>']

    bad = [t for t in tests
           if t.get("status") in ("FAIL", "ERROR", "INTERRUPTED")]
    rest = [t for t in tests if t not in bad]
    header = ["test", "status", "reason", "chart, logs and traces"]
    failures = _table(header, [row(t) for t in bad]) if bad \
        else "<p>none</p>"
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>avocado-vhost job</title><style>{_STYLE}</style></head>"
            "<body><h1>avocado-vhost</h1>"
            f"<h2>QEMU under test</h2>{qemus}"
            "<h2>Results</h2><p>" + ", ".join(
                f'<span class="{esc(k)}">{esc(k)} {v}</span>'
                for k, v in sorted(counts.items()))
            + f" (known QEMU defects: {len(defects)})</p>"
            f"<h2>Known QEMU defects found</h2>{defect_part}"
            f"<h2>Spec violations found</h2>{violation_part}"
            + (f"<h2>Conformance of external back-ends</h2>{conformance}"
               if conformance else "") +
            f"<h2>Failures</h2>{failures}"
            f"<h2>Every other test</h2>{_table(header, [row(t) for t in rest])}"
            "</body></html>\n")
