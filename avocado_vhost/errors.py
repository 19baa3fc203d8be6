"""
What can end a test, and what each ending means: one hierarchy, one
mapping (:func:`outcome_of`), used by the harness for every test method
and set-up.

Three meanings, as a QEMU developer reads a result::

    AvocadoVhostError
     +-- NotAvailable   CANCEL  this host or this QEMU lacks what the test
     |    |                     needs (a feature, a package, an asset);
     |    |                     the reason says which
     |    +-- peers.qemu.membackend.Unavailable,
     |        peers.guest.assets.AssetsMissing,
     |        peers.dpdk.NoTestpmd, peers.external.launch.NoExternalBackend
     +-- SetupError     ERROR   the test's own set-up is broken (a
     |    |                     parameter, the QEMU binary, an allow-list,
     |    |                     a helper that would not start)
     |    +-- params.ParamError, peers.qemu.binary.QemuBinaryError,
     |        checks.allowlist.AllowListError, fuzz.target.TargetError,
     |        peers.external.launch.ExternalBackendError
     +-- Misbehaved     FAIL    the thing under test -- QEMU, the guest, a
          |                     back-end -- did not do what the spec or
          |                     the test says (an AssertionError)
          +-- peers.qemu: qtest.QtestError, virtio_pci.VirtioPciError,
              hotplug.HotplugError; peers.guest: console.ConsoleTimeout,
              run.GuestFailure; peers.dpdk.TestpmdError

Beside it: the back-end library's :class:`.vhost_user.error.VhostUserError`
(usable on its own, so not a subclass), whose ``BackendFailure`` is an
AssertionError and whose ``WaitTimeout`` a TimeoutError -- both FAIL, as
is any TimeoutError (QEMU's QMP waits, a socket that never appears): a
bounded wait on the thing under test that expired says what it saw
instead.  Anything else raised by a test is a bug of the test or of this
framework: ERROR, with its traceback.
"""

from __future__ import annotations

import enum

__all__ = ["AvocadoVhostError", "NotAvailable", "SetupError", "Misbehaved",
           "Outcome", "outcome_of"]


class AvocadoVhostError(Exception):
    """Root of this framework's errors."""


class NotAvailable(AvocadoVhostError):
    """The test cannot run here: CANCEL, with the reason."""


class SetupError(AvocadoVhostError):
    """The test's own set-up is broken: ERROR."""


class Misbehaved(AvocadoVhostError, AssertionError):
    """What the test drives did not behave: FAIL."""


class Outcome(enum.Enum):
    """How a test ends, in Avocado's words."""

    CANCEL = "CANCEL"
    ERROR = "ERROR"
    FAIL = "FAIL"


def outcome_of(exc: BaseException) -> Outcome:
    """The one mapping from an exception to a test's outcome."""
    if isinstance(exc, NotAvailable):
        return Outcome.CANCEL
    if isinstance(exc, SetupError):
        return Outcome.ERROR
    # AssertionError: Misbehaved, BackendFailure and unittest's asserts;
    # TimeoutError: a bounded wait on QEMU, a guest or a back-end
    if isinstance(exc, (AssertionError, TimeoutError)):
        return Outcome.FAIL
    return Outcome.ERROR
