"""
A back-end that fails during a live migration: the migration must fail
cleanly, reported, with the VM still running on the source -- never abort
QEMU, never report success.

vhost-user gives QEMU two moments where a back-end can let a migration
down.  When the migration starts, QEMU turns dirty logging on (SET_LOG_BASE,
then SET_FEATURES with VHOST_F_LOG_ALL, which it waits to see acknowledged:
"wait for a reply if logging is enabled to make sure backend is actually
logging changes", hw/virtio/vhost-user.c).  When it ends, QEMU stops the
VM and each ring (GET_VRING_BASE), and the ring positions it gets are what
the destination resumes from.
"""

from avocado_vhost.vhost_user.device_offers import BLK_QUEUES, device_config
from avocado_vhost.scenarios import migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (Fault, FaultAction, ProtocolFeature,
                                      Request, VirtioFeature)


def starts_logging(request, payload):
    """SET_FEATURES that turns VHOST_F_LOG_ALL on."""
    return bool(payload.value & VirtioFeature.LOG_ALL)


class MigrateFaults(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration,faults
    """

    def migrate_with_fault(self, fault, **pair):
        pair = migration.start_pair(self, **pair)
        pair.src_backend.faults.append(fault)
        migration.migrate(self, pair.src, pair.dst, pair.uri)
        outcome = migration.wait_outcome(self, pair.src, pair.dst)
        self.log.info("outcome: %s", outcome)
        return pair, outcome

    def test_refused_logging_fails_the_migration(self):
        """A back-end that refuses to start logging (a failed REPLY_ACK to
        SET_FEATURES with VHOST_F_LOG_ALL) fails the migration; the source
        VM keeps running (QEMU fix c1997099dc: before it, QEMU aborted).

        :avocado: tags=quick
        """
        self.require_protocol(ProtocolFeature.REPLY_ACK, "a back-end "
                              "refuses SET_FEATURES only in a REPLY_ACK")
        pair, outcome = self.migrate_with_fault(
            Fault(FaultAction.FAIL, request=Request.SET_FEATURES,
                  match=starts_logging))
        self.assert_failed_cleanly(outcome, "refused to start logging")

    def test_backend_gone_at_log_start_fails_the_migration(self):
        """A back-end that dies when QEMU turns logging on (at SET_FEATURES
        with VHOST_F_LOG_ALL) fails the migration; the source VM keeps
        running (QEMU fix c1997099dc: before it, QEMU aborted)."""
        pair, outcome = self.migrate_with_fault(
            Fault(FaultAction.DISCONNECT, request=Request.SET_FEATURES,
                  match=starts_logging))
        self.assert_failed_cleanly(outcome, "died as logging started")

    def test_backend_gone_while_rings_stop_fails_the_migration(self):
        """A vhost-user-blk back-end that dies while QEMU stops the rings
        (at GET_VRING_BASE, after the VM stopped) fails the migration: the
        destination must not resume from ring positions that were never
        reported (QEMU fix bc85aae420: before it, the migration completed).
        """
        self.require_device("vhost-user-blk-pci")
        config = device_config("blk")
        config.features |= VirtioFeature.LOG_ALL
        pair, outcome = self.migrate_with_fault(
            Fault(FaultAction.DISCONNECT, request=Request.GET_VRING_BASE),
            rings=1, config=config, device="vhost-user-blk-pci",
            device_opts=[f"num-queues={BLK_QUEUES}"])
        self.assert_failed_cleanly(outcome, "died while QEMU stopped the "
                                   "rings")

    def assert_failed_cleanly(self, outcome, what):
        if not outcome.failed_cleanly:
            self.fail(f"the back-end {what}: expected the migration to fail "
                      f"with the source VM running; {outcome}")


if __name__ == "__main__":
    main()
