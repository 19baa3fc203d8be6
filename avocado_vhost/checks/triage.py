"""
What a failure of QEMU's means for the test that saw it.

A test provokes a behaviour and fails when QEMU misbehaves, whatever the
version; only then is the failure triaged here, in one place:

* a failure that matches a known defect of the QEMU under test
  (:mod:`.known_defects`) ends the test as that defect's report -- CANCEL
  "KNOWN QEMU DEFECT" naming the fix, never a pass;
* a known defect a test only ran into on its way (it was written for
  something else) is reported and does not fail it, so that a QEMU that
  carries one defect is still tested for everything else;
* QEMU ending under a test is a FAIL that says how (signal or status,
  version, the end of its output).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from avocado_vhost.checks import known_defects
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.vhost_user.records import Problem

if TYPE_CHECKING:
    from avocado_vhost.harness import Harness

__all__ = ["report_if_known", "known_in_passing", "qemu_ended", "qemu_died",
           "EVIDENCE"]

#: where a failure message's attached evidence begins (see
#: :meth:`avocado_vhost.peers.guest.run.GuestRun.explain`)
EVIDENCE = "\n--- "


def report_if_known(test: "Harness", failure: str) -> None:
    """CANCEL ``test`` as the report of the known defect ``failure`` is
    (recorded for the result plugin); return for any other failure, which
    stays a failure."""
    caps = getattr(test, "caps", None)
    if caps is None:
        return
    # The evidence a failure carries (a console's or a trace's tail, each
    # after a "--- ... ---" line) is not what failed: a known defect the
    # trace shows in passing must not turn another failure into its report.
    own_words = failure.split(EVIDENCE, 1)[0]
    defect = known_defects.match(own_words, caps.version_tuple)
    if defect is None:
        return
    test.found.known_defects.append(defect.id)
    test.log.error("known QEMU defect %s (%s): %s", defect.id,
                   defect.fix_text(), failure)
    test.cancel(f"KNOWN QEMU DEFECT {defect.id} (not a pass): QEMU "
                f"{caps.version} carries it; {defect.fix_text()}. {failure}")


def known_in_passing(test: "Harness", violation: Problem) -> bool:
    """Whether ``violation`` is a known defect of the QEMU under test that
    ``test`` only ran into on its way; if so it is logged and recorded as
    found.  The tests written for the defect fail on it (and end as its
    report)."""
    caps = getattr(test, "caps", None)
    if caps is None:
        return False
    defect = known_defects.match(str(violation), caps.version_tuple)
    if defect is None or defect in known_defects.defects_for_test(test.id()):
        return False
    if defect.id not in test.found.known_defects:
        test.found.known_defects.append(defect.id)
        test.log.error("known QEMU defect %s seen in passing (%s; its own "
                       "test fails on it): %s", defect.id, defect.fix_text(),
                       violation)
    return True


def qemu_ended(test: "Harness", vm: VhostVM, when: str, context: str = ""
               ) -> NoReturn:
    """QEMU is ending or ended on its own: FAIL with how (its exit signal or
    status, version, output).  The FAIL goes through the test's known
    defect triage like any other."""
    code = vm.wait_exit(test.scaled(5))
    how = ("still running" if code is None else
           f"signal {-code}" if code < 0 else f"status {code}")
    evidence = (f"QEMU {test.caps.version} ({test.qemu_bin}) exited with "
                f"{how} {when}" + (f" ({context})" if context else "")
                + f"; its output: {vm.log_tail() or '(none)'}")
    test.log.error("%s", evidence)
    test.fail(evidence)


def qemu_died(test: "Harness", vm: VhostVM, msix: bool, when: str
              ) -> NoReturn:
    """:func:`qemu_ended` for a device started with MSI-X on or off."""
    qemu_ended(test, vm, when, f"MSI-X {'on' if msix else 'off'}, accel "
               f"{vm.spec.accel}")
