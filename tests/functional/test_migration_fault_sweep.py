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
to carry the defect (``avocado_vhost.checks.known_defects``), the row says so, and
a sweep whose only findings are known defects ends as their report
(CANCEL "KNOWN QEMU DEFECT"), never as a pass.  The table is logged and written to
``migration_fault_sweep.txt`` in the test's log directory.
"""

import os
import signal

from qemu.machine.machine import AbnormalShutdown

from avocado_vhost.checks import known_defects
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

#: a postcopy migration's messages, at the destination back-end
POSTCOPY = {
    "POSTCOPY_ADVISE": (Request.POSTCOPY_ADVISE, anything,
                        "as postcopy was advised (POSTCOPY_ADVISE)"),
    "POSTCOPY_LISTEN": (Request.POSTCOPY_LISTEN, anything,
                        "at the postcopy switch-over (POSTCOPY_LISTEN)"),
    "memory after LISTEN": (
        None, lambda r, p: r in (Request.ADD_MEM_REG, Request.SET_MEM_TABLE),
        "as the postcopy memory table came"),
    "POSTCOPY_END": (Request.POSTCOPY_END, anything,
                     "as postcopy ended (POSTCOPY_END)"),
}
POINTS.update(POSTCOPY)
POSTCOPY_POINTS = list(POSTCOPY)
#: past the switch-over the VM runs on the destination and cannot go back:
#: a failure there may let the migration complete, but QEMU must say so
PAST_SWITCHOVER = {"memory after LISTEN", "POSTCOPY_END"}
#: what QEMU prints on every vhost-user net migration, failing or not
BENIGN = "Vhost user backend fails to broadcast fake RARP"

#: the points whose reply is a status (u64, non-zero: failed)
STATUS_REPLY = {"SET_DEVICE_STATE_FD", "CHECK_DEVICE_STATE", "POSTCOPY_END"}
#: the points QEMU waits on with a REPLY_ACK (NEED_REPLY)
ACKED = {"SET_FEATURES+LOG_ALL", "SET_VRING_ADDR+LOG", "POSTCOPY_LISTEN"}


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

    def quit_all(self, *vms):
        """Shut the VMs down, in this order (the destination first, as a
        management layer drops a failed one: a source may be blocked
        writing to a destination that no longer reads); what went wrong:
        a QEMU that never answered "quit" (killed), one that died of a
        signal on the way out."""
        problems = []
        for vm in vms:
            try:
                vm.shutdown()
            except AbnormalShutdown:
                problems.append(f"{vm.name} QEMU did not quit: killed")
                continue
            code = vm.exitcode
            if code is not None and code < 0 and code != -signal.SIGKILL:
                problems.append(f"{vm.name} QEMU killed by signal {-code} "
                                f"on quit: {vm.log_tail(1)}")
        return problems

    @staticmethod
    def judged_alike(outcome, reached, quit_problems):
        """The row every step judges the same way -- a fault QEMU never
        reached, a crash (also on the way out), a hang -- or None."""
        notes = "".join(f"; {q}" for q in quit_problems)
        if not reached:
            return "QEMU never sent it" + notes, True
        if outcome.source_exit is not None and outcome.source_exit < 0:
            return f"CRASHED: {outcome}{notes}", False
        if outcome.status == "timed out":
            return f"HUNG: {outcome}{notes}", False
        if quit_problems:
            return f"CRASHED: {outcome}{notes}", False
        return None

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
        judged = self.judged_alike(outcome, reached,
                                   self.quit_all(pair.dst, pair.src))
        if judged is not None:
            return judged
        if succeeds:
            ok = outcome.status == "completed" and outcome.destination_resumed
        else:
            ok = outcome.failed_cleanly
        return str(outcome), ok

    def test_a_fault_at_each_migration_message_ends_cleanly(self):
        config = BackendConfig(device_state=b"state" * 100)
        points = [p for p in POINTS if p not in POSTCOPY]
        if self.caps.version_tuple >= (10, 0, 0) and not self.offer.lacks(
                ProtocolFeature.DEVICE_STATE):
            config.protocol_features |= int(ProtocolFeature.DEVICE_STATE)
        else:  # virtio-net moves a back-end's state since 10.0
            points = [p for p in points if "DEVICE_STATE" not in p]
        self.require_protocol(
            ProtocolFeature.LOG_SHMFD | ProtocolFeature.REPLY_ACK,
            "a migration, and faults answered in acks")
        self.sweep(points, lambda n, fault, succeeds, point: self.step(
            n, fault, succeeds, config, ("return-path",)),
            "migration_fault_sweep")

    def sweep(self, points, step, name):
        """Run ``step(n, fault, succeeds, point)`` for each way at each point;
        log and write the table (``<name>.txt``); fail on a finding that
        is no known defect of this QEMU, and report the known ones."""
        version = self.caps.version_tuple
        rows, bad = [], []
        for point in points:
            doing = POINTS[point][2]
            for way, (fault, succeeds, verb) in self.faults(point).items():
                text, ok = step(len(rows), fault, succeeds, point)
                row = f"{point:22s} {way:12s} {text}"
                if not ok:
                    # in the words the known defects' signatures use
                    said = f"the back-end {verb} {doing}: {text}"
                    defect = known_defects.match(said, version)
                    if defect is not None:
                        row += f"  [KNOWN QEMU DEFECT {defect.id}]"
                        if defect.id not in self.found.known_defects:
                            self.found.known_defects.append(defect.id)
                    else:
                        row += "  <-- FINDING"
                        bad.append(row)
                rows.append(row)
        table = "\n".join(rows)
        self.log.info("%s (QEMU %s):\n%s", name.replace("_", " "),
                      self.caps.version, table)
        with open(os.path.join(self.logdir, f"{name}.txt"), "w",
                  encoding="utf-8") as out:
            out.write(table + "\n")
        self.assertFalse(bad, "faults during a migration that did not end "
                         "cleanly:\n" + "\n".join(bad))
        if self.found.known_defects:  # every other row ended cleanly
            first, *others = self.found.known_defects
            self.cancel(f"KNOWN QEMU DEFECT {first} (not a pass)"
                        + (f", and {', '.join(others)}" if others else "")
                        + f": QEMU {self.caps.version} carries them; the "
                        f"other steps ended cleanly (table in {name}.txt)")

    def postcopy_step(self, n, fault, succeeds, config, point):
        """One postcopy migration with ``fault`` in the destination
        back-end.  Before the switch-over a fault must fail the migration
        (or pause it for a recovery) with the reason; past it the VM
        cannot go back to the source, and the migration may complete, but
        never silently: the destination QEMU must report the back-end's
        failure."""
        pair = migration.start_pair(self, config=config, prefix=f"p{n}")
        pair.dst_backend.faults.append(fault)
        self.cleanup(fault.release.set)
        self.expect_failure(pair.dst_backend)  # misbehaves on purpose
        migration.migrate(self, pair.src, pair.dst, pair.uri,
                          capabilities=("postcopy-ram",))
        pair.src.qmp("migrate-start-postcopy")
        # these migrations take a second or two: ten is a hang, even with
        # the machine busy (five was not, once)
        outcome = migration.wait_outcome(
            self, pair.src, pair.dst, timeout=10,
            ends=("completed", "failed", "cancelled", "postcopy-paused"))
        reached = any(e.request == "FAULT"
                      for e in pair.dst_backend.trace.select("event"))
        said = [line for line in pair.dst.log_tail(6).split(" | ")
                if line.strip() and BENIGN not in line]
        judged = self.judged_alike(outcome, reached,
                                   self.quit_all(pair.dst, pair.src))
        if judged is not None:
            return judged
        if succeeds:
            return str(outcome), (outcome.status == "completed"
                                  and outcome.destination_resumed)
        if point in PAST_SWITCHOVER and outcome.status == "completed":
            if not said:
                return f"SILENT: {outcome}, nothing reported", False
            return f"{outcome}; QEMU reported: {said[-1].strip()}", True
        return str(outcome), outcome.status in ("failed", "postcopy-paused")

    def test_a_fault_at_each_postcopy_message_ends_cleanly(self):
        """The same sweep over a postcopy migration, at the destination
        back-end: POSTCOPY_ADVISE (still precopy), POSTCOPY_LISTEN (the
        switch-over), the memory table after it, POSTCOPY_END."""
        self.require_protocol(
            ProtocolFeature.LOG_SHMFD | ProtocolFeature.REPLY_ACK,
            "a migration, and QEMU waits for answers to POSTCOPY_LISTEN "
            "and POSTCOPY_END")
        config = BackendConfig()
        config.protocol_features |= int(ProtocolFeature.PAGEFAULT)
        self.sweep(POSTCOPY_POINTS, lambda n, fault, succeeds, point:
                   self.postcopy_step(n, fault, succeeds, config, point),
                   "postcopy_fault_sweep")

if __name__ == "__main__":
    main()
