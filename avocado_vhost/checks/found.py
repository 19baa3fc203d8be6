"""
What a test found beyond its verdict, for the result plugin and the
kit's conformance table.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from avocado_vhost.checks import known_defects

__all__ = ["Found"]


@dataclass
class Found:
    """One test's records, filled as it runs.

    :param known_defects: ids of the known QEMU defects it ran into
        (:mod:`.known_defects`).
    :param backend_defects: ids of the known back-end defects it found
        (:mod:`avocado_vhost.fuzz.findings`).
    :param external_backend: the kit's name of the back-end under test
        (``custom`` for a ``-p backend_cmd=``), if any.
    :param external_procs: that back-end's processes, by instance name.
    :param accepted_deviations: violations let through, each with why.
    :param traces: the trace files written to the log directory.
    """

    known_defects: List[str] = field(default_factory=list)
    backend_defects: List[str] = field(default_factory=list)
    external_backend: Optional[str] = None
    external_procs: List[Tuple[str, "subprocess.Popen[bytes]"]] = field(
        default_factory=list)
    accepted_deviations: List[str] = field(default_factory=list)
    traces: List[str] = field(default_factory=list)

    def info(self) -> Dict[str, Any]:
        """The fields of ``results.json`` the result plugin reads."""
        return {
            "traces": list(self.traces),
            "known_defects": [
                {"id": d, "commit": known_defects.DEFECTS[d].commit,
                 "title": known_defects.DEFECTS[d].title}
                for d in self.known_defects],
            "external_backend": self.external_backend,
            "accepted_deviations": self.accepted_deviations,
            "backend_defects": self.backend_defects}
