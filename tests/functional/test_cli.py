"""
``python -m avocado_vhost``: the back-end standing alone against a QEMU the
test starts the way a user would by hand, and the chart of what was said.
"""

import os
import select
import shutil
import signal
import subprocess
import sys
import time

from avocado_vhost.test import VhostUserTest, main


class Cli(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,cli
    """

    def tool(self, *args):
        """``python -m avocado_vhost ARGS`` in a process of its own (it
        dies with this one)."""
        proc = subprocess.Popen(
            [shutil.which("setpriv") or "setpriv", "--pdeathsig", "KILL",
             "--", sys.executable, "-m", "avocado_vhost", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stack.callback(proc.kill)
        return proc

    def serve(self, sock, *args):
        return self.tool("serve", sock, *args)

    def interrupt(self, proc, name):
        """Ctrl-C: it must end with status 0 and no violation or error
        (what it said is logged); returns what it said."""
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=self.scaled(20))
        err = err.decode()
        self.log.info("%s said: %s", name, err)
        self.assertEqual(proc.returncode, 0, err)
        return err

    def read_until(self, proc, text, timeout):
        """serve's output until a line holds ``text`` (bounded; raw reads:
        a buffered readline would hide lines from select)."""
        out = ""
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.scaled(timeout)
        while text not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [],
                                        max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 65536).decode()
            if not chunk:
                break
            out += chunk
        if text not in out:
            self.fail(f"serve never printed '{text}'; it printed:\n"
                      + out[-3000:])
        return out.splitlines()

    def test_serve_a_qemu_started_by_hand(self):
        """The back-end serves QEMU alone: the trace shows the start-up
        sequence live, Ctrl-C ends it with exit status 0 (no violation),
        its JSON trace becomes a chart."""
        sock = os.path.join(self.workdir_short, "vu.sock")
        json_path = os.path.join(self.logdir, "serve.trace.json")
        proc = self.serve(sock, "--json", json_path)
        self.read_until_listening(proc, sock)
        vm = self.make_vm("vm", sock)
        vm.launch()
        vm.drive_device(queues=2)
        lines = self.read_until(proc, "RING-STARTED ring 1", 20)
        self.log.info("serve printed:\n%s", "\n".join(lines))
        self.assertTrue(any("SET_MEM_TABLE" in line for line in lines))
        err = self.interrupt(proc, "serve")
        self.assertIn("0 violations, 0 errors", err)
        out = subprocess.run(
            [sys.executable, "-m", "avocado_vhost", "chart", json_path,
             "-o", os.path.join(self.logdir, "serve-chart.html")],
            capture_output=True, text=True, timeout=self.scaled(30),
            check=True).stdout
        with open(out.strip(), encoding="utf-8") as page:
            self.assertIn("no violation, error or refusal", page.read())

    def read_until_listening(self, proc, sock):
        """The tool says on stderr when it listens (bounded)."""
        ready, _, _ = select.select([proc.stderr], [], [], self.scaled(20))
        self.assertTrue(ready, "the tool said nothing")
        line = os.read(proc.stderr.fileno(), 4096).decode()
        self.assertIn(sock, line)

    def test_proxy_between_qemu_and_serve(self):
        """QEMU -> ``proxy`` -> ``serve``, all from the command line: the
        device starts through the proxy, which prints both directions
        decoded and ends with no violation on either side."""
        backend_sock = os.path.join(self.workdir_short, "be.sock")
        front_sock = os.path.join(self.workdir_short, "fe.sock")
        serve = self.serve(backend_sock, "--quiet")
        self.read_until_listening(serve, backend_sock)
        proxy = self.tool("proxy", front_sock, backend_sock, "--json",
                          os.path.join(self.logdir, "cli-proxy.trace.json"))
        self.read_until_listening(proxy, front_sock)
        vm = self.make_vm("vm", front_sock)
        vm.launch()
        vm.drive_device(queues=2)
        lines = self.read_until(proxy, "SET_VRING_KICK", 20)
        self.log.info("proxy printed:\n%s", "\n".join(lines))
        self.assertTrue(any("-> GET_FEATURES" in line for line in lines),
                        "no reply decoded")
        vm.shutdown()
        err = self.interrupt(proxy, "proxy")
        self.assertIn("0 violation(s), 0 error(s)", err)
        self.interrupt(serve, "serve")


if __name__ == "__main__":
    main()
