"""Every exception the framework raises means one outcome: CANCEL (not
available here), ERROR (the set-up is broken) or FAIL (the thing under
test misbehaved), decided by errors.outcome_of alone."""

import unittest

from avocado_vhost.checks.allowlist import AllowListError
from avocado_vhost.peers.dpdk import NoTestpmd, TestpmdError
from avocado_vhost.errors import Outcome, outcome_of
from avocado_vhost.fuzz.target import TargetError
from avocado_vhost.peers.guest.assets import AssetsMissing
from avocado_vhost.peers.guest.console import ConsoleTimeout
from avocado_vhost.peers.guest.run import GuestFailure
from avocado_vhost.peers.external.launch import (ExternalBackendError,
                                                 NoExternalBackend)
from avocado_vhost.params import ParamError
from avocado_vhost.peers.qemu.binary import QemuBinaryError
from avocado_vhost.peers.qemu.hotplug import HotplugError
from avocado_vhost.peers.qemu.membackend import Unavailable
from avocado_vhost.peers.qemu.qtest import QtestError
from avocado_vhost.peers.qemu.virtio_pci import VirtioPciError
from avocado_vhost.vhost_user import BackendFailure, WaitTimeout

MEANING = {
    Outcome.CANCEL: (Unavailable, AssetsMissing, NoTestpmd,
                     NoExternalBackend),
    Outcome.ERROR: (ParamError, QemuBinaryError, AllowListError,
                    TargetError, ExternalBackendError, KeyError, TypeError),
    Outcome.FAIL: (QtestError, VirtioPciError, HotplugError, ConsoleTimeout,
                   GuestFailure, TestpmdError, BackendFailure, WaitTimeout,
                   AssertionError, TimeoutError),
}


class Outcomes(unittest.TestCase):

    def test_each_exception_means_one_outcome(self):
        for outcome, kinds in MEANING.items():
            for kind in kinds:
                with self.subTest(kind=kind.__name__):
                    self.assertIs(outcome_of(kind("why")), outcome)

    def test_a_failure_is_an_assertion_error(self):
        """What means FAIL is an AssertionError, so unittest and Avocado
        report it as a failure even where the harness does not map it."""
        for kind in MEANING[Outcome.FAIL]:
            if kind is not TimeoutError and kind is not WaitTimeout:
                self.assertTrue(issubclass(kind, AssertionError), kind)


if __name__ == "__main__":
    unittest.main()
