"""
Fault sweep across a live migration: at each message QEMU sends the
source back-end because of the migration, the back-end misbehaves in each
way a real one can, and the migration must end cleanly.

The points: SET_LOG_BASE (the dirty log), SET_FEATURES with VHOST_F_LOG_ALL
(logging on), SET_VRING_ADDR with the log flag (the used ring logged),
GET_VRING_BASE (the rings stop), and, where the QEMU under test moves the
back-end's state (DEVICE_STATE, 10.0+), SET_DEVICE_STATE_FD and
CHECK_DEVICE_STATE.  The ways: the back-end disconnects; it answers with an
error where the answer can say one (a non-zero REPLY_ACK or status); it
answers another request (a well-formed reply with the wrong request
number); it stalls for a second and then answers.

Each step is a fresh pair of VMs.  A fault must fail the migration with
the reason and the VM running on the source; a stall must delay it, not
fail it.  A crash, a hang, or a migration that completes although the
back-end failed is a finding; where the QEMU under test is a release known
to carry the defect (``avocado_vhost.known_defects``), the row says so, and
a sweep whose only findings are known defects ends as their report
(CANCEL "KNOWN QEMU DEFECT"), never as a pass.  The table is logged and written to
``migration_fault_sweep.txt`` in the test's log directory.
"""

import os

from avocado_vhost import known_defects
from avocado_vhost.scenarios import migration
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (BackendConfig, Fault, FaultAction,
                                      ProtocolFeature, Request, VirtioFeature)
from avocado_vhost.vhost_user.message import FLAG_REPLY, U64, VERSION, encode

#: VHOST_VRING_F_LOG in SET_VRING_ADDR's flags
VRING_F_LOG = 1


def anything(request, payload):
    return True


#: point -> (request, the message of it that belongs to the migration, what
#: the back-end is doing there -- in the words of the defects' signatures)
POINTS = {
    "SET_LOG_BASE": (Request.SET_LOG_BASE, anything,
                     "as logging started (SET_LOG_BASE)"),
    "SET_FEATURES+LOG_ALL": (
        Request.SET_FEATURES,
        lambda r, p: bool(p.value & VirtioFeature.LOG_ALL),
        "as logging started"),
    "SET_VRING_ADDR+LOG": (
        Request.SET_VRING_ADDR,
        lambda r, p: bool(p.flags & VRING_F_LOG),
        "as logging started (the used ring)"),
    "GET_VRING_BASE": (Request.GET_VRING_BASE, anything,
                       "while QEMU stopped the rings"),
    "SET_DEVICE_STATE_FD": (Request.SET_DEVICE_STATE_FD, anything,
                            "as the state transfer started"),
    "CHECK_DEVICE_STATE": (Request.CHECK_DEVICE_STATE, anything,
                           "as QEMU checked the state transfer"),
}

#: the points whose reply is a status (u64, non-zero: failed)
STATUS_REPLY = {"SET_DEVICE_STATE_FD", "CHECK_DEVICE_STATE"}
#: the points QEMU waits on with a REPLY_ACK (NEED_REPLY)
ACKED = {"SET_FEATURES+LOG_ALL", "SET_VRING_ADDR+LOG"}


def status_reply(value):
    return lambda request, payload: encode(request, U64(value),
                                           VERSION | FLAG_REPLY)


def wrong_reply(request, payload):
    """A well-formed reply, to another request."""
    return encode(Request.GET_QUEUE_NUM, U64(1), VERSION | FLAG_REPLY)


class MigrationFaultSweep(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration,fault-sweep
    """

    timeout = 300  # up to 24 migrations, one after another

    def faults(self, point):
        """The ways to misbehave at ``point``: name -> (Fault, whether the
        migration must still succeed, the defect signatures' verb)."""
        request, match, _ = POINTS[point]
        ways = {
            "disconnect": (Fault(FaultAction.DISCONNECT, request=request,
                                 match=match), False, "died"),
            "wrong reply": (Fault(FaultAction.REPLY, request=request,
                                  match=match, reply_bytes=wrong_reply),
                            False, "answered another request"),
            "stall 1 s": (Fault(FaultAction.HOLD, request=request,
                                match=match, hold_timeout=self.scaled(1)),
                          True, "stalled"),
        }
        if point in STATUS_REPLY:
            ways["error"] = (Fault(FaultAction.REPLY, request=request,
                                   match=match,
                                   reply_bytes=status_reply(1)),
                             False, "failed")
        elif point in ACKED:
            ways["error"] = (Fault(FaultAction.FAIL, request=request,
                                   match=match),
                             False, "refused to start logging"
                             if point == "SET_FEATURES+LOG_ALL"
                             else "refused")
        return ways

    def step(self, n, fault, succeeds, config, capabilities):
        pair = migration.start_pair(self, config=config, prefix=f"s{n}")
        pair.src_backend.faults.append(fault)
        self.cleanup(fault.release.set)
        self.expect_failure(pair.src_backend)  # misbehaves on purpose
        migration.migrate(self, pair.src, pair.dst, pair.uri,
                          capabilities=capabilities)
        outcome = migration.wait_outcome(self, pair.src, pair.dst)
        reached = any(e.request == "FAULT"
                      for e in pair.src_backend.trace.select("event"))
        for vm in (pair.src, pair.dst):
            vm.shutdown()
        if not reached:
            return "QEMU never sent it", True
        if outcome.source_exit is not None and outcome.source_exit < 0:
            return f"CRASHED: {outcome}", False
        if outcome.status == "timed out":
            return f"HUNG: {outcome}", False
        if succeeds:
            ok = outcome.status == "completed" and outcome.destination_resumed
        else:
            ok = outcome.failed_cleanly
        return str(outcome), ok

    def test_a_fault_at_each_migration_message_ends_cleanly(self):
        config = BackendConfig(device_state=b"state" * 100)
        points = list(POINTS)
        if self.caps.version_tuple >= (10, 0, 0) and not self.offer.lacks(
                ProtocolFeature.DEVICE_STATE):
            config.protocol_features |= int(ProtocolFeature.DEVICE_STATE)
        else:  # virtio-net moves a back-end's state since 10.0
            points = [p for p in points if "DEVICE_STATE" not in p]
        self.require_protocol(
            ProtocolFeature.LOG_SHMFD | ProtocolFeature.REPLY_ACK,
            "a migration, and faults answered in acks")
        version = self.caps.version_tuple
        rows, bad = [], []
        for point in points:
            doing = POINTS[point][2]
            for way, (fault, succeeds, verb) in self.faults(point).items():
                text, ok = self.step(len(rows), fault, succeeds, config,
                                     ("return-path",))
                row = f"{point:22s} {way:12s} {text}"
                if not ok:
                    # in the words the known defects' signatures use
                    said = f"the back-end {verb} {doing}: {text}"
                    defect = known_defects.match(said, version)
                    if defect is not None:
                        row += f"  [KNOWN QEMU DEFECT {defect.id}]"
                        if defect.id not in self.known_defects_found:
                            self.known_defects_found.append(defect.id)
                    else:
                        row += "  <-- FINDING"
                        bad.append(row)
                rows.append(row)
        table = "\n".join(rows)
        self.log.info("migration fault sweep (QEMU %s):\n%s",
                      self.caps.version, table)
        with open(os.path.join(self.logdir, "migration_fault_sweep.txt"),
                  "w", encoding="utf-8") as out:
            out.write(table + "\n")
        self.assertFalse(bad, "faults during a migration that did not end "
                         "cleanly:\n" + "\n".join(bad))
        if self.known_defects_found:  # every other row ended cleanly
            first, *others = self.known_defects_found
            self.cancel(f"KNOWN QEMU DEFECT {first} (not a pass)"
                        + (f", and {', '.join(others)}" if others else "")
                        + f": QEMU {self.caps.version} carries them; the "
                        "other steps ended cleanly (table in "
                        "migration_fault_sweep.txt)")


if __name__ == "__main__":
    main()
