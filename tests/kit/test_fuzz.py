"""
The hostile front-end (``python -m avocado_vhost fuzz``) against real
back-end processes.

The negative controls plant a bug in a back-end -- this project's own,
run as its own process with ``serve --crash-on`` / ``--hang-on`` -- and
the fuzzer must find it and cut its run down to that one message; the
same back-end without a planted bug must come through a campaign with no
finding.  With ``-p backend=NAME`` (a back-end of the kit:
``avocado_vhost/peers/external/backends.py``) or ``-p backend_cmd=``, a campaign runs
against that back-end: a finding the kit knows
(``avocado_vhost/fuzz/findings.py``) is reported as found, any other fails
the test with its reproducer; and every known reproducer for that back-end
is played again.
"""

import os
import sys

from avocado_vhost.fuzz import Budget, Target, load, replay, run
from avocado_vhost.fuzz.campaign import FINDINGS
from avocado_vhost.fuzz import findings
from avocado_vhost.peers.external.backends import BACKENDS
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import Request
from avocado_vhost.vhost_user.message import request_name

SERVE = f"{sys.executable} -m avocado_vhost serve {{socket}} --quiet"


class FuzzTest(VhostUserTest):
    """Runs campaigns in the test's folders."""

    def target(self, command, name="backend"):
        log = open(os.path.join(self.logdir, f"{name}.log"), "ab")
        self.cleanup(log.close)
        folder = os.path.join(self.workdir_short, name)
        os.mkdir(folder)
        target = Target(os.path.join(folder, "s.sock"), command, log=log,
                        name=f"{os.path.basename(self.workdir_short)}-{name}")
        self.cleanup(target.stop)
        return target

    def campaign(self, target, seed, known=lambda kind, request, detail: None,
                 **budget):
        out = os.path.join(self.logdir, "fuzz")
        os.makedirs(out, exist_ok=True)
        report = run(target, seed, Budget(**budget), out, self.log.info,
                     known)
        self.log.info("campaign: %s", report.summary())
        return report

    def assert_cut_down_to(self, report, kind, request):
        """One finding of ``kind``, which replays, cut down to the single
        message ``request``."""
        self.assertEqual([f.outcome.kind for f in report.findings], [kind],
                         report.summary())
        finding = report.findings[0]
        self.assertTrue(finding.replayed, "the finding did not replay")
        self.assertEqual([(s.kind, s.request) for s in finding.minimal],
                         [("msg", int(request))],
                         "not cut down to the planted message")


class PlantedBugs(FuzzTest):
    """
    :avocado: enable
    :avocado: tags=vhost-user,fuzz
    """

    def test_a_planted_crash_is_found_and_cut_down_to_its_message(self):
        target = self.target(SERVE + " --crash-on SET_VRING_ERR")
        report = self.campaign(target, seed=3, max_findings=1,
                               seconds=self.scaled(30))
        self.assert_cut_down_to(report, "crash", Request.SET_VRING_ERR)
        self.assertEqual(report.findings[0].outcome.detail,
                         "killed by SIGABRT")
        header, steps = load(report.findings[0].minimal_reproducer)
        again = replay(target, steps, Budget())
        self.assertEqual((again.kind, again.detail),
                         ("crash", "killed by SIGABRT"),
                         "the reproducer file does not replay")

    def test_a_planted_hang_is_found_and_cut_down_to_its_message(self):
        target = self.target(SERVE + " --hang-on GET_VRING_BASE")
        report = self.campaign(target, seed=3, max_findings=1,
                               hang_timeout=0.5, seconds=self.scaled(60))
        self.assert_cut_down_to(report, "hang", Request.GET_VRING_BASE)

    def test_the_back_end_without_the_bug_gives_no_finding(self):
        """The control of the controls: the same back-end and seeds, no
        planted bug, 3000 messages -- nothing found (so the findings above
        are the planted bugs, not the fuzzer's noise)."""
        target = self.target(SERVE)
        report = self.campaign(target, seed=3, messages=3000,
                               seconds=self.scaled(60))
        self.assertEqual(report.findings, [], report.summary())
        self.assertGreaterEqual(report.messages, 3000)


class RealBackend(FuzzTest):
    """
    :avocado: enable
    :avocado: tags=vhost-user,fuzz,external
    """

    def setUp(self):
        super().setUp()
        name = self.param("backend")
        self.known = BACKENDS.get(name) if name else None
        command = self.known.template() if self.known else self.param(
            "backend_cmd")
        if name and self.known is None:
            self.error(f"-p backend={name}: the kit knows "
                       f"{', '.join(sorted(BACKENDS))}")
        if name and command is None:
            self.cancel(self.known.missing())
        if not command:
            self.cancel("no back-end to fuzz: give -p backend=NAME "
                        f"({', '.join(sorted(BACKENDS))}) or -p "
                        "backend_cmd='COMMAND ... {socket} ...'")
        self.command = command
        self.found.external_backend = name or "custom"

    def test_campaign(self):
        """A seeded campaign (``-p fuzz_seed``, ``-p fuzz_seconds``): every
        finding is one the kit knows for this back-end."""
        seed = int(self.param("fuzz_seed") or 1)
        seconds = float(self.param("fuzz_seconds") or 20)
        name = self.known.name if self.known else ""
        report = self.campaign(self.target(self.command), seed,
                               seconds=seconds, messages=100000,
                               max_findings=5,
                               rings=findings.rings_limit(name),
                               known=lambda kind, request, detail:
                               findings.known_id(name, kind, request, detail))
        self.found.backend_defects.extend(sorted(set(report.known)))
        unknown = []
        for finding in report.findings:
            kind, detail, request = finding.signature
            known = findings.match(name, kind, request, detail)
            if known is None:
                unknown.append(f"{kind} ({detail}) at {request}: "
                               f"{finding.minimal_reproducer or finding.reproducer}")
            else:
                self.log.error("known back-end defect %s found again: %s",
                               known.id, known.title)
                self.found.backend_defects.append(known.id)
        self.assertEqual(unknown, [], "the fuzzer found new defects in "
                         "the back-end (reproducers in the test's fuzz/ "
                         "folder)")

    def test_known_reproducers(self):
        """Every reproducer the kit keeps: a back-end that carries its
        defect still shows it as recorded (else it was fixed: the registry
        is out of date); any other back-end survives it, or shows one of
        its own known defects."""
        backend = self.known.name if self.known else ""
        names = sorted({r for d in findings.FINDINGS for r in d.reproducers})
        for name in names:
            header, steps = load(findings.reproducer_path(name))
            outcome = replay(self.target(self.command, name[:-6]), steps,
                             Budget())
            self.log.info("%s: %s", name, outcome)
            carried = [d for d in findings.FINDINGS if name in d.reproducers
                       and backend in d.backends]
            if carried:
                self.assertIsNotNone(outcome, f"{carried[0].id} no longer "
                                     f"shows ({name}): fixed? update "
                                     "avocado_vhost/fuzz/findings.py")
                self.assertEqual(outcome.kind, header["outcome"], name)
                self.found.backend_defects.extend(d.id for d in carried)
            elif outcome is not None and outcome.kind in FINDINGS:
                # hanging up or exiting is fine; so is another known
                # defect of this back-end (a leak shows anywhere)
                last = next(s for s in reversed(steps)
                            if s.kind in ("msg", "hangup"))
                other = findings.match(backend, outcome.kind,
                                       request_name(last.request),
                                       outcome.detail)
                self.assertIsNotNone(other, f"{name} also breaks this "
                                     f"back-end: {outcome.detail}")
                self.found.backend_defects.append(other.id)


if __name__ == "__main__":
    main()
