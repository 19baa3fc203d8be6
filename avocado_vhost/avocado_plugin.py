"""
Avocado plugins of the suite, loaded through entry points (``pyproject.toml``).

``VhostInit`` (``avocado.plugins.init``)
    registers a ``vhost.<name>`` setting for every parameter of
    :mod:`avocado_vhost.params`, with its default, its environment variable
    and what is valid, so ``avocado config reference`` documents them and an
    Avocado config file can set them (``[vhost]`` section).

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

from .params import PARAMS

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


def _whiteboard(test: Dict[str, Any]) -> Dict[str, Any]:
    try:
        data = json.loads(test.get("whiteboard") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class VhostResult(Result):
    """QEMU binary and version, and trace links, in the job's results."""

    name = "vhost"
    description = "avocado-vhost: QEMU and trace paths in results.json"

    def render(self, result: Any, job: Any) -> None:
        path = os.path.join(job.logdir, "results.json")
        try:
            with open(path, encoding="utf-8") as src:
                results = json.load(src)
        except (OSError, ValueError):
            return  # the json result was disabled
        summary: Dict[str, Any] = {"qemu": {}, "tests": {}}
        for test in results.get("tests", []):
            info = _whiteboard(test)
            if not info:
                continue
            test["qemu"] = info.get("qemu")
            test["qemu_version"] = info.get("qemu_version")
            traces: List[str] = [os.path.join(test.get("logdir", ""), name)
                                  for name in info.get("traces", [])]
            test["traces"] = traces
            summary["qemu"][info.get("qemu")] = info.get("qemu_version")
            summary["tests"][test.get("name")] = {
                "status": test.get("status"), "traces": traces,
                "qemu": info.get("qemu"),
                "accel": info.get("accel"), "arch": info.get("arch")}
        with open(path, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=4)
        _add_to_xunit(os.path.join(job.logdir, "results.xml"),
                      summary["tests"], summary["qemu"])
        with open(os.path.join(job.logdir, "vhost.json"), "w",
                  encoding="utf-8") as out:
            json.dump(summary, out, indent=4)
        with open(os.path.join(job.logdir, "vhost.html"), "w",
                  encoding="utf-8") as out:
            out.write(_html_page(job.logdir, results.get("tests", [])))


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
                  ("qemu_version", qemu.get(info.get("qemu"), "") or ""),
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


def _html_page(job_dir: str, tests: List[Dict[str, Any]]) -> str:
    """One row per test, every link relative to the job directory."""
    rows = []
    for test in tests:
        logdir = test.get("logdir", "")
        files = sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []
        links = " ".join(
            f'<a href="{html.escape(os.path.relpath(os.path.join(logdir, f), job_dir))}">'
            f"{html.escape(f)}</a>"
            for f in files if f.endswith(".log") or f.endswith(".txt"))
        status = html.escape(str(test.get("status")))
        reason = "" if status == "PASS" else str(test.get("fail_reason") or "")
        rows.append(
            f"<tr><td>{html.escape(str(test.get('name')))}</td>"
            f'<td class="{status}">{status}</td>'
            f"<td>{html.escape(str(test.get('qemu_version') or ''))}</td>"
            f"<td>{html.escape(reason)}</td>"
            f"<td>{links}</td></tr>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            "<title>avocado-vhost job</title><style>"
            "body{font-family:sans-serif} td{padding:4px 8px;"
            "border-bottom:1px solid #ddd;vertical-align:top}"
            ".PASS{color:green}.FAIL,.ERROR,.INTERRUPT{color:red}"
            ".CANCEL,.SKIP{color:#a60}</style></head><body>"
            "<h1>avocado-vhost: tests, QEMU, traces</h1><table>"
            "<tr><th>test</th><th>status</th><th>QEMU</th><th>reason</th>"
            "<th>logs and vhost-user traces</th></tr>"
            + "".join(rows) + "</table></body></html>\n")
