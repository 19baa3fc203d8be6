"""
The back-end's own state across live migration (DEVICE_STATE).

Since QEMU 10.0 (60f543ad91, "virtio-net: vhost-user: Implement internal
migration"), a vhost-user net back-end that offers DEVICE_STATE has its
internal state carried by the migration: the source back-end writes it to
a pipe QEMU gives it (SET_DEVICE_STATE_FD, save), QEMU puts it in the
migration stream, the destination back-end reads it from another pipe
(load), and each side confirms with CHECK_DEVICE_STATE.  The state here is
256 KiB of random bytes (more than a pipe holds: the transfer must stream),
framed with its length and CRC-32 so that the destination tells a whole
state from a damaged one.

The claims: the bytes arrive intact while both devices are stopped; a
back-end that reports a failed save fails the migration, with the VM still
running on the source; a destination that receives garbage or a truncated
state refuses it, the destination fails the load, and (with QEMU's
return path) the source learns it and runs the VM on.
"""

import random

from avocado_vhost.scenarios import migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (BackendConfig, Fault, FaultAction,
                                      ProtocolFeature, Request)
from avocado_vhost.vhost_user.message import FLAG_REPLY, U64, VERSION, encode

STATE_SIZE = 256 * 1024


class DeviceState(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration,device-state
    """

    def setUp(self):
        super().setUp()
        self.require_qemu((10, 0, 0), "virtio-net migrates a vhost-user "
                          "back-end's state since 60f543ad91")

    def migrate(self, wire=None, capabilities=()):
        """Migrate a device whose source back-end holds a random state;
        ``wire`` is what the source writes instead (a fault)."""
        self.state = random.Random(7).randbytes(STATE_SIZE)
        config = BackendConfig(device_state=self.state)
        config.protocol_features |= int(ProtocolFeature.DEVICE_STATE)
        config.device_state_wire = wire
        pair = migration.start_pair(self, config=config)
        migration.migrate(self, pair.src, pair.dst, pair.uri,
                          capabilities=capabilities)
        return pair

    def test_the_state_arrives_intact(self):
        """The destination back-end loads exactly the source's state; each
        side saw one SET_DEVICE_STATE_FD (save, load) and one successful
        CHECK_DEVICE_STATE, while its rings were stopped.

        :avocado: tags=quick
        """
        pair = self.migrate()
        failure = migration.wait_migration(self, pair.src, pair.dst)
        self.assertIsNone(failure, failure)
        loaded = pair.dst_backend.state.loaded_device_state
        self.assertIsNotNone(loaded, "the destination back-end loaded no "
                             "state (no SET_DEVICE_STATE_FD or no check)")
        self.assertEqual(len(loaded), len(self.state))
        self.assertTrue(loaded == self.state, "the state arrived changed")
        for backend, direction in ((pair.src_backend, 0),
                                   (pair.dst_backend, 1)):
            self.assertEqual([p.direction for p in backend.trace.payloads(
                Request.SET_DEVICE_STATE_FD)], [direction], backend.name)
            self.assertEqual(len(backend.trace.select(
                "rx", Request.CHECK_DEVICE_STATE)), 1, backend.name)

    def test_a_failed_save_fails_the_migration(self):
        """The source back-end answers CHECK_DEVICE_STATE with a failure:
        the migration fails, the source runs the VM on, the destination
        never resumes."""
        failed = Fault(FaultAction.REPLY, request=Request.CHECK_DEVICE_STATE,
                       reply_bytes=lambda req, payload: encode(
                           req, U64(1), VERSION | FLAG_REPLY))
        config = BackendConfig(device_state=b"x" * 100)
        config.protocol_features |= int(ProtocolFeature.DEVICE_STATE)
        pair = migration.start_pair(self, config=config)
        pair.src_backend.faults.append(failed)
        migration.migrate(self, pair.src, pair.dst, pair.uri)
        outcome = migration.wait_outcome(self, pair.src, pair.dst)
        self.log.info("outcome: %s", outcome)
        self.assertIn(Request.CHECK_DEVICE_STATE,
                      pair.src_backend.trace.received(),
                      "QEMU never asked CHECK_DEVICE_STATE")
        self.assertTrue(outcome.failed_cleanly, f"a failed save: {outcome}")

    def damaged(self, wire, what):
        """The source writes ``wire(state)``: the destination refuses it,
        and QEMU's return path fails the migration on the source too."""
        pair = self.migrate(wire, capabilities=("return-path",))
        self.expect_failure(pair.dst_backend)
        outcome = migration.wait_outcome(self, pair.src, pair.dst)
        self.log.info("outcome: %s", outcome)
        errors = [str(e) for e in pair.dst_backend.errors]
        self.assertTrue(any("device state load failed" in e
                            for e in errors),
                        f"the destination back-end took {what}: {errors}")
        self.assertIsNone(pair.dst_backend.state.loaded_device_state)
        self.assertTrue(outcome.failed_cleanly,
                        f"{what} reached the destination: {outcome}")
        pair.dst.wait_exit(self.scaled(10))
        self.assertIn("back-end state", pair.dst.log_text(),
                      "the destination did not say why it failed")

    def test_garbage_is_refused(self):
        """A source that writes garbage: the destination refuses the
        state, and the migration fails cleanly.

        :avocado: tags=quick
        """
        self.damaged(lambda framed: bytes(len(framed)), "garbage")

    def test_a_truncated_state_is_refused(self):
        """A source that closes the pipe half-way: the destination sees a
        short state, refuses it, and the migration fails cleanly."""
        self.damaged(lambda framed: framed[:len(framed) // 2],
                     "a truncated state")


if __name__ == "__main__":
    main()
