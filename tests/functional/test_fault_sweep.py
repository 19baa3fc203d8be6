"""
Fault sweep: the back-end drops the connection at every request of QEMU's
start-up sequence in turn, and QEMU must cope every time.

connect-fail and flags-mismatch each drop at one chosen request; this test
generalises them.  A clean run first records the sequence QEMU sends until
all rings run; then, for each position k in it, a fresh VM whose back-end
drops connection 1 at message k (and reconnects at once).  Each run must
end in one of two ways:

* the device is fully started again, on a later connection; or
* a clean, reported failure: QEMU still answers QMP and has said why in its
  log, or it exited on its own with an error message.

A QEMU that stops answering QMP (hung), dies of a signal (crashed), or gives
up on the device without a word fails the test.  A step where QEMU sent an
event before its ``qmp_capabilities`` reply (QEMU 10, see
``avocado_vhost.peers.qemu.machine``) says so in its row.  The table of outcomes is
logged and written to ``fault_sweep.txt`` in the test's log directory.
"""

import os

from avocado_vhost.scenarios.server_mode import launch_server_mode
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import Fault, FaultAction, WaitTimeout

RINGS = 2


class FaultSweep(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,reconnect,fault-sweep
    """

    timeout = 240  # 33 VMs, one after another

    def startup_sequence(self):
        vm, backend = launch_server_mode(self, name="ref",
                                         backend_name="ref")
        vm.drive_device(queues=RINGS)
        backend.wait_rings_started(RINGS, timeout=self.scaled(10))
        sequence = backend.trace.received(conn=1)
        self.check_backends(backend)
        vm.shutdown()
        return sequence

    def run_step(self, k, request):
        name = f"k{k}"
        vm, backend = launch_server_mode(
            self, name=name, backend_name=name,
            faults=[Fault(FaultAction.DISCONNECT, nth=k, connection=1)])
        vm.drive_device(queues=RINGS)
        try:
            backend.wait_for(
                lambda: backend.connections >= 2
                and len(backend.state.started_rings()) >= RINGS,
                "the device restarted on a later connection",
                timeout=self.scaled(10))
            outcome = (f"restarted on connection {backend.connections}", True)
        except WaitTimeout:
            outcome = self.judge_failure(vm, backend)
        early = [e["event"] for e in vm.early_events()]
        if early:  # QEMU 10's QMP race, tolerated: say where it happened
            outcome = (f"{outcome[0]} (QMP: {', '.join(early)} arrived "
                       "before the qmp_capabilities reply)", outcome[1])
        # Front-end conduct is still judged on every connection.
        backend.check()
        vm.shutdown()
        return outcome

    def judge_failure(self, vm, backend):
        with open(vm.log_path, encoding="utf-8", errors="replace") as log:
            errors = [line.strip() for line in log
                      if line.startswith("qemu-system") and "info:" not in line]
        said = errors[-1] if errors else None
        if not vm.is_running():
            code = vm.exitcode
            if code is not None and code < 0:
                return f"CRASHED: QEMU killed by signal {-code}", False
            if said:
                return f"failed, QEMU exited ({code}): {said}", True
            return f"QEMU exited ({code}) without a word", False
        try:
            vm.qmp("query-status")
        except Exception as exc:  # any QMP failure means it is stuck
            return f"HUNG: QEMU does not answer QMP ({exc})", False
        if said:
            return f"failed, reported: {said}", True
        return (f"not restarted and nothing reported ({backend.describe()})",
                False)

    def test_fault_sweep(self):
        sequence = self.startup_sequence()
        self.log.info("start-up sequence (%d messages): %s", len(sequence),
                      " ".join(r.name for r in sequence))
        rows, bad = [], []
        for k, request in enumerate(sequence, 1):
            text, ok = self.run_step(k, request)
            rows.append(f"{k:3d}  {request.name:24s} {text}")
            if not ok:
                bad.append(rows[-1])
        table = "\n".join(rows)
        self.log.info("fault sweep:\n%s", table)
        with open(os.path.join(self.logdir, "fault_sweep.txt"), "w",
                  encoding="utf-8") as out:
            out.write(table + "\n")
        self.assertFalse(bad, "steps that did not end cleanly:\n"
                         + "\n".join(bad))


if __name__ == "__main__":
    main()
