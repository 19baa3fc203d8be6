"""
Process hygiene: nothing of the suite outlives a test.

QEMUMachine has no kill-on-exit, and an Avocado test runs in a process of
its own that a timeout may kill.  These tests kill and fail tests on purpose
and look for what they leave behind.
"""

import os
import select
import signal
import subprocess
import sys
import textwrap

from avocado_vhost.peers.dpdk import find_testpmd
from avocado_vhost.test import UNDER_AVOCADO, VhostUserTest, main
from avocado_vhost.plumbing.tmpdirs import dpdk_runtime_base, remove_orphans

CHILD = textwrap.dedent("""
    import sys
    from avocado_vhost.tools.standalone import standalone_vm
    from avocado_vhost.vhost_user import VhostUserBackend
    with standalone_vm(VhostUserBackend("child"), sys.argv[1]) as vm:
        print(vm.pid, flush=True)
        sys.stdin.read()  # until killed
""")

TESTPMD_CHILD = textwrap.dedent("""
    import os, sys
    from avocado_vhost.peers.dpdk import Testpmd, find_testpmd
    from avocado_vhost.peers.qemu.spec import default_tmpdir
    from avocado_vhost.plumbing.tmpdirs import make_private_tmpdir
    d = make_private_tmpdir(default_tmpdir())
    t = Testpmd(find_testpmd(), os.path.basename(d) + "-testpmd",
                f"net_vhost0,iface={d}/vhost.sock", os.path.join(d, "t.log"))
    t.start()
    print(t._proc.pid, os.path.basename(d) + "-testpmd", flush=True)
    sys.stdin.read()  # until killed
""")

FAILING_TEST = textwrap.dedent('''
    from avocado_vhost.test import VhostUserTest, main

    class Failing(VhostUserTest):
        """:avocado: enable"""

        def test_fails_with_a_vm_running(self):
            backend = self.make_backend("backend")
            vm = self.make_vm("vm", backend.listener_path)
            self.start_vm(vm, backend)
            self.fail("deliberate failure with a VM running")

    if __name__ == "__main__":
        main()
''')


def _pids_with(text):
    out = subprocess.run(["pgrep", "-f", text], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


class Hygiene(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,hygiene
    """

    def test_qemu_dies_with_a_killed_test_process(self):
        """SIGKILL the process that launched QEMU: QEMU must go too."""
        # The child's temp dir goes below ours: a killed process cannot
        # clean up, our tear-down does.
        env = dict(os.environ, AVOCADO_VHOST_TMPDIR=self.workdir_short)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, self.qemu_bin], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._stack.callback(child.kill)
        ready, _, _ = select.select([child.stdout], [], [], self.scaled(20))
        self.assertTrue(ready, "the child never reported QEMU's pid")
        qemu_pid = int(child.stdout.readline())
        pidfd = os.pidfd_open(qemu_pid)
        self._stack.callback(os.close, pidfd)
        child.send_signal(signal.SIGKILL)
        child.wait(self.scaled(10))
        # The pidfd polls readable when QEMU has exited: no sleep loop.
        ready, _, _ = select.select([pidfd], [], [], self.scaled(10))
        if not ready:
            os.kill(qemu_pid, signal.SIGKILL)
            self.fail(f"QEMU (pid {qemu_pid}) outlived the killed test "
                      "process")

    def test_testpmd_dies_with_a_killed_test_process(self):
        """SIGKILL a process running dpdk-testpmd: testpmd goes too, and
        the next clean-up of orphans removes both the dead process's temp
        dir and DPDK's runtime files for it."""
        if find_testpmd(self.param("testpmd")) is None:
            self.cancel("no dpdk-testpmd (Debian package dpdk-dev)")
        env = dict(os.environ, AVOCADO_VHOST_TMPDIR=self.workdir_short)
        child = subprocess.Popen(
            [sys.executable, "-c", TESTPMD_CHILD], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._stack.callback(child.kill)
        ready, _, _ = select.select([child.stdout], [], [], self.scaled(30))
        self.assertTrue(ready, "the child never reported testpmd's pid")
        pid_text, prefix = child.stdout.readline().split()
        pidfd = os.pidfd_open(int(pid_text))
        self._stack.callback(os.close, pidfd)
        runtime = os.path.join(dpdk_runtime_base(), prefix)
        self.assertTrue(os.path.isdir(runtime), runtime)
        child.send_signal(signal.SIGKILL)
        child.wait(self.scaled(10))
        ready, _, _ = select.select([pidfd], [], [], self.scaled(10))
        if not ready:
            os.kill(int(pid_text), signal.SIGKILL)
            self.fail(f"testpmd (pid {pid_text}) outlived the killed "
                      "process")
        removed = remove_orphans(self.workdir_short)
        self.assertIn(runtime, removed)
        self.assertFalse(os.path.exists(runtime))

    def test_failing_test_leaves_nothing(self):
        """A test that fails with a VM running: its tear-down cleans up."""
        inner = os.path.join(self.workdir_short, "inner")
        os.mkdir(inner)
        test_file = os.path.join(inner, "test_failing.py")
        with open(test_file, "w", encoding="utf-8") as out:
            out.write(FAILING_TEST)
        env = dict(os.environ, AVOCADO_VHOST_TMPDIR=inner,
                   QEMU_TEST_QEMU_BINARY=self.qemu_bin,
                   QEMU_BUILD_ROOT=os.path.join(self.logdir, "inner-job"))
        if UNDER_AVOCADO:  # the inner test runs under the same runner
            avocado = os.path.join(os.path.dirname(sys.executable), "avocado")
            command = [avocado, "run", "--job-results-dir",
                       os.path.join(self.logdir, "inner-job"), test_file]
        else:
            command = [sys.executable, test_file]
        result = subprocess.run(command, env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        self.log.info("inner job:\n%s\n%s", result.stdout, result.stderr)
        self.assertNotEqual(result.returncode, 0, "the inner test passed")
        self.assertIn("deliberate failure", result.stdout + result.stderr)
        self.assertEqual(_pids_with(f"qemu-system.*{inner}"), [],
                         "QEMU left running by a failed test")
        leftovers = [name for name in os.listdir(inner)
                     if name != "test_failing.py"
                     and name != "__pycache__"]
        self.assertEqual(leftovers, [], "files left by a failed test")


if __name__ == "__main__":
    main()
