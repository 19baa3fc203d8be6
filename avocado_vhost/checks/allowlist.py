"""
Deviations of a peer from the spec that a run accepts, each with why.

An external back-end is judged through the proxy, and every rule it breaks
fails its scenario -- unless the user lists the deviation as known: one
line per deviation in a text file given with ``-p backend_allow=FILE``::

    # side      | rule                   | why (the spec sentence)
    back-end    | reply-names-request    | an old back-end ...

``side`` is ``front-end`` or ``back-end``; ``rule`` the identifier of a
rule that side can break (a front-end's:
:data:`avocado_vhost.vhost_user.conformance.FRONT_END_RULES`; a
back-end's: :data:`avocado_vhost.vhost_user.reply_rules.REPLY_RULES`).  An
entry accepts every violation of that rule by that side.  Blank lines and ``#`` comments are
ignored; an entry without a reason, or naming a rule that does not exist,
is an error: an allow-list always says why, and never silently accepts
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from avocado_vhost.errors import SetupError
from avocado_vhost.vhost_user.conformance import FRONT_END_RULES
from avocado_vhost.vhost_user.reply_rules import REPLY_RULES
from avocado_vhost.vhost_user.records import Problem, Side

__all__ = ["Allowed", "AllowListError", "load", "parse", "allowed"]

#: the rules each side can break, by identifier
RULES_OF: Dict[Side, Dict[str, str]] = {
    Side.FRONT_END: {**FRONT_END_RULES,
                     **{k: v for k, v in REPLY_RULES.items()
                        if k in ("readable-message", "request-payload")}},
    Side.BACK_END: {k: v for k, v in REPLY_RULES.items()
                    if k != "request-payload"},
}


class AllowListError(SetupError, ValueError):
    """The allow-list cannot be read (the line and why in the text)."""


@dataclass(frozen=True)
class Allowed:
    """One accepted deviation."""

    side: Side
    rule: str
    why: str

    def matches(self, violation: Problem) -> bool:
        return violation.side is self.side and violation.rule == self.rule


def parse(text: str, origin: str = "<allow-list>") -> List[Allowed]:
    entries = []
    sides = {side.value: side for side in Side}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split("|")]
        where = f"{origin}:{number}"
        if len(parts) != 3 or not all(parts):
            raise AllowListError(f"{where}: want 'side | rule | why', got "
                                 f"{line!r}")
        side = sides.get(parts[0])
        if side is None:
            raise AllowListError(f"{where}: side {parts[0]!r} is not one of "
                                 f"{', '.join(sides)}")
        if parts[1] not in RULES_OF[side]:
            raise AllowListError(
                f"{where}: {side.value} rule {parts[1]!r} does not exist; "
                f"its rules: {', '.join(sorted(RULES_OF[side]))}")
        entries.append(Allowed(side, parts[1], parts[2]))
    return entries


def load(path: str) -> List[Allowed]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read(), path)
    except OSError as exc:
        raise AllowListError(f"cannot read the allow-list {path}: "
                             f"{exc.strerror}") from None


def allowed(violation: Problem,
            entries: Sequence[Allowed]) -> Optional[Allowed]:
    """The entry that accepts ``violation``, if any."""
    return next((e for e in entries if e.matches(violation)), None)
