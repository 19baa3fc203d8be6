"""
Deviations of a peer from the spec that a run accepts, each with why.

An external back-end is judged through the proxy, and every rule it breaks
fails its scenario -- unless the user lists the deviation as known: one
line per deviation in a text file given with ``-p backend_allow=FILE``::

    # side      | text the violation contains     | why (the spec sentence)
    back-end    | reply to message 3 GET_FEATURES | an old back-end ...

``side`` is ``front-end`` or ``back-end`` (the proxy writes it before each
violation); an entry matches a violation of that side whose text contains
``text``.  Blank lines and ``#`` comments are ignored; an entry without a
reason is an error, so an allow-list always says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

__all__ = ["Allowed", "AllowListError", "load", "parse", "allowed"]

SIDES = ("front-end", "back-end")


class AllowListError(ValueError):
    """The allow-list cannot be read (the line and why in the text)."""


@dataclass(frozen=True)
class Allowed:
    """One accepted deviation."""

    side: str
    text: str
    why: str

    def matches(self, violation: str) -> bool:
        prefix = f"{self.side}: "
        return violation.startswith(prefix) and self.text in violation


def parse(text: str, origin: str = "<allow-list>") -> List[Allowed]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not all(parts):
            raise AllowListError(f"{origin}:{number}: want 'side | text | "
                                 f"why', got {line!r}")
        if parts[0] not in SIDES:
            raise AllowListError(f"{origin}:{number}: side {parts[0]!r} is "
                                 f"not one of {', '.join(SIDES)}")
        entries.append(Allowed(*parts))
    return entries


def load(path: str) -> List[Allowed]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read(), path)
    except OSError as exc:
        raise AllowListError(f"cannot read the allow-list {path}: "
                             f"{exc.strerror}") from None


def allowed(violation: str, entries: Sequence[Allowed]) -> Optional[Allowed]:
    """The entry that accepts ``violation``, if any."""
    return next((e for e in entries if e.matches(violation)), None)
