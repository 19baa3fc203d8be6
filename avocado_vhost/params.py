"""
The suite's parameters: one registry, read the same way by every runner.

Each parameter has a name (Avocado's ``-p name=value``, yaml-to-mux
variants), an environment variable (QEMU's own name where it has one, so
QEMU's meson runner can pass it), a default and a check.  A value that
fails its check, or a ``-p`` key that is not a parameter, is a
configuration error naming the parameter and what is valid: a typo must
never look like a pass on the default or like a CANCEL.

Order of precedence: the runner's parameter (``-p``), then the environment
variable, then the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

from avocado_vhost.errors import SetupError
from avocado_vhost.peers.qemu.membackend import DEFAULT_MEM_MB, MEM_BACKENDS
from avocado_vhost.vhost_user.offers import DEFAULT_OFFER, OFFERS

__all__ = ["Param", "PARAMS", "ParamError", "resolve", "unknown",
           "AVOCADO_OWN"]


class ParamError(SetupError, ValueError):
    """A parameter is unknown or has an invalid value."""


def _one_of(*valid: str) -> Callable[[str], Optional[str]]:
    def check(value: str) -> Optional[str]:
        return None if value in valid else f"valid: {', '.join(valid)}"
    return check


def _positive(kind: type) -> Callable[[str], Optional[str]]:
    def check(value: str) -> Optional[str]:
        try:
            ok = kind(value) > 0
        except ValueError:
            ok = False
        return None if ok else f"valid: a positive {kind.__name__}"
    return check


def _any(value: str) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Param:
    """One parameter: where it comes from, its default, what is valid."""

    name: str
    env: str
    default: Optional[str]
    help: str
    check: Callable[[str], Optional[str]] = _any


PARAMS: Dict[str, Param] = {p.name: p for p in (
    Param("qemu_bin", "QEMU_TEST_QEMU_BINARY", None,
          "the QEMU binary to test (default: qemu-system-x86_64 on PATH)"),
    Param("accel", "AVOCADO_VHOST_ACCEL", None,
          "accelerator: qtest, tcg or kvm (default: qtest where the binary "
          "has it, else tcg)", _one_of("qtest", "tcg", "kvm")),
    Param("membackend", "AVOCADO_VHOST_MEMBACKEND", "memfd",
          "guest memory backend: " + ", ".join(MEM_BACKENDS),
          _one_of(*MEM_BACKENDS)),
    Param("hugetlbfs_path", "QTEST_HUGETLBFS_PATH", None,
          "a hugetlbfs mount, for membackend=hugetlbfs (default: the "
          "first one mounted)"),
    Param("mem_mb", "AVOCADO_VHOST_MEM_MB", str(DEFAULT_MEM_MB),
          "guest RAM in MiB", _positive(int)),
    Param("testpmd", "AVOCADO_VHOST_TESTPMD", None,
          "DPDK's dpdk-testpmd for the interop tests (default: on PATH)"),
    Param("backend", "AVOCADO_VHOST_BACKEND", None,
          "a real back-end of the conformance kit to put under test (tags "
          "external, fuzz): dpdk, qsd, vhost-user-blk, vhost-user-bridge "
          "(avocado_vhost.peers.external.backends)"),
    Param("backend_cmd", "AVOCADO_VHOST_BACKEND_CMD", None,
          "an external back-end of your own to put under test (tags "
          "external, fuzz): a command with {socket} (where it must "
          "listen), {queues}, {name} (unique per instance), {dir}, {disk} "
          "and {port} filled in"),
    Param("backend_device", "AVOCADO_VHOST_BACKEND_DEVICE", None,
          "the device backend_cmd serves: net, blk or fs (default net)",
          _one_of("net", "blk", "fs")),
    Param("fuzz_seed", "AVOCADO_VHOST_FUZZ_SEED", "1",
          "the fuzz campaign's seed (test_fuzz.py)", _positive(int)),
    Param("fuzz_seconds", "AVOCADO_VHOST_FUZZ_SECONDS", "20",
          "the fuzz campaign's length in seconds", _positive(float)),
    Param("backend_allow", "AVOCADO_VHOST_BACKEND_ALLOW", None,
          "a file of the external back-end's known deviations, one "
          "'side | text | why' per line; any other violation fails the "
          "scenario (avocado_vhost.checks.allowlist)"),
    Param("offer", "AVOCADO_VHOST_OFFER", DEFAULT_OFFER,
          "what the suite's back-ends offer (the capability matrix): "
          + "; ".join(f"{o.name}: {o.summary}" for o in OFFERS.values()),
          _one_of(*OFFERS)),
    Param("timeout_scale", "AVOCADO_VHOST_TIMEOUT_SCALE", "1.0",
          "multiplies every bounded wait (slow machines)", _positive(float)),
)}

#: parameters Avocado itself reads from a test's params
AVOCADO_OWN = frozenset({"timeout", "timeout_factor"})


def resolve(name: str, given: Optional[object]) -> Optional[str]:
    """The value of parameter ``name``: ``given`` (the runner's), else its
    environment variable, else its default.

    :raise ParamError: the value fails the parameter's check.
    """
    param = PARAMS[name]
    if given is not None:
        value: Optional[str] = str(given)
        origin = f"{name}={given}"
    else:
        value = os.environ.get(param.env) or param.default
        origin = f"{param.env}={value}" if param.env in os.environ \
            else f"default {name}={value}"
    if value is not None:
        why = param.check(value)
        if why is not None:
            raise ParamError(f"parameter {origin}: invalid ({why})")
    return value


def unknown(names: Iterable[str]) -> List[str]:
    """The names among ``names`` that are no parameter of the suite."""
    return sorted(set(names) - set(PARAMS) - AVOCADO_OWN)
