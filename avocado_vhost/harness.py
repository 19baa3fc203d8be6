"""
The suite's test harness, independent of the runner that drives it.

:class:`Harness` gives a test method what the seed test set up by hand: the
QEMU under test, an accelerator (qtest where the binary has it, otherwise
TCG; KVM only on request), a private short temp directory for sockets and
memory files, and factories for back-ends and VMs that are torn down
whatever happens.  Each VM's QEMU output (``<vm>.log``), its qtest traffic
(``<vm>-qtest.log``) and each back-end's decoded trace
(``<backend>.trace.log``) land in the test's log directory.  Every test
method ends with :meth:`Harness.check_backends`: an error, a stalled ring or
a conformance violation any back-end recorded fails the test, unless the
test declared it (:meth:`Harness.expect_violations`,
:meth:`Harness.expect_failure` for a negative control).  Stories several
tests share live in :mod:`avocado_vhost.scenarios`.

A runner flavour mixes it into its own test class and supplies four things
(see :mod:`avocado_vhost.test`): ``logdir``, ``log``, the runner's own
parameters (``_runner_param``, ``_runner_param_names``) and the way to end
a test early (``cancel`` for "cannot run here", ``error`` for a broken
configuration).  Parameters are read through :mod:`avocado_vhost.params`.

This module does not import Avocado.
"""

from __future__ import annotations

import functools
import glob
import os
import subprocess
import shutil
from contextlib import ExitStack
from typing import (TYPE_CHECKING, Any, Callable, Iterable, List, NoReturn,
                    Optional, Sequence, Tuple)

from . import allowlist, known_defects, params
from .chart import write_chart
from .kit import external
from .dpdk import TESTPMD_PACKAGE, Testpmd, find_testpmd
from .guest import assets as guest_assets
from .guest.assets import GuestAssets
from .guest.boot import (GuestOptions, backend_config, device_opts,
                         guest_spec_args)
from .guest.console import GuestConsole
from .guest.netstack import Responder
from .guest.run import GuestFailure, GuestRun
from .qemu.platform import Platform, platform_for
from .qemu.binary import Capabilities, QemuBinaryError, find_binary, probe
from .qemu.vm import (MEM_BACKENDS, VMSpec, VhostVM, default_tmpdir,
                      huge_pages_free, hugetlbfs_mounted, hugetlbfs_mounts)
from .phases import CLOCK, phase
from .tmpdirs import (make_private_tmpdir,
                      remove_all_orphans)
from .watchdog import start_watchdog
from .vhost_user import (BackendConfig, BackendFailure, Fault,
                         ProtocolFeature, VhostUserBackend)
from .vhost_user.offers import (DEFAULT_OFFER, OFFERS, asked_on_purpose,
                                names)
from .vhost_user.device import Device
from .vhost_user.net import NetDevice, Port
from .vhost_user.proxy import Proxy
from .vhost_user.records import Problem
from .vhost_user.trace import Trace

__all__ = ["Harness"]

if TYPE_CHECKING:  # the flavours are TestCases: their assert* methods
    import unittest
    _Base = unittest.TestCase
else:
    _Base = object


class Harness(_Base):
    """The runner-independent part of the suite's test class: QEMU,
    accelerator, temp dir, back-ends and VMs."""

    # --- supplied by the runner flavour ---------------------------------
    logdir: str
    log: Any  # a logging.Logger

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every test method ends with the back-end check, inside the test
        # (a problem is the test's FAIL, with its traceback, and is not
        # reported when the test failed already): a test cannot forget it.
        name = getattr(self, "_testMethodName", "")
        method = getattr(self, name, None)
        if name.startswith("test") and callable(method):
            setattr(self, name, self._then_check_backends(method))
        self._violations_expected: List[str] = []
        self._failure_expected: List[str] = []
        #: ids of the known QEMU defects this test ran into
        self.known_defects_found: List[str] = []
        #: the conformance kit's records: the external back-end under test
        #: (its kit name), the deviations accepted, its known defects found
        self.external_backend: Optional[str] = None
        self.external_procs: List[Tuple[str, "subprocess.Popen[bytes]"]] = []
        self.accepted_deviations: List[str] = []
        #: an allow-list file of the test's own (else -p backend_allow=)
        self.allow_list: Optional[str] = None
        self.backend_defects_found: List[str] = []

    def _then_check_backends(self, method: Callable[[], Any]
                             ) -> Callable[[], Any]:
        @functools.wraps(method)
        def checked() -> Any:
            try:
                result = method()
                self.check_backends()
            except (AssertionError, BackendFailure) as exc:
                self._known_defect(str(exc))
                raise
            return result
        return checked

    def _known_defect(self, failure: str) -> None:
        """A failure that is a known defect of the QEMU under test ends the
        test as that defect's report (CANCEL naming the fix), recorded for
        the result plugin; anything else stays a failure."""
        caps = getattr(self, "caps", None)
        if caps is None:
            return
        defect = known_defects.match(failure, caps.version_tuple)
        if defect is None:
            return
        self.known_defects_found.append(defect.id)
        self.log.error("known QEMU defect %s (%s): %s", defect.id,
                       defect.fix_text(), failure)
        self.cancel(f"KNOWN QEMU DEFECT {defect.id} (not a pass): QEMU "
                    f"{caps.version} carries it; {defect.fix_text()}. "
                    f"{failure}")

    def _runner_param(self, name: str) -> Optional[object]:
        raise NotImplementedError

    def _runner_param_names(self) -> Iterable[str]:
        raise NotImplementedError

    def _runner_result_fd(self) -> Optional[int]:
        """The fd through which the runner expects this test's result, for
        the watchdog to report a killed test process (None: not needed)."""
        return None

    if TYPE_CHECKING:  # the flavour's own methods, never shadowed here
        def cancel(self, message: Optional[str] = None) -> NoReturn: ...

        def error(self, message: Optional[str] = None) -> NoReturn: ...

    # --- failure messages ---------------------------------------------------
    def _formatMessage(self, msg: Optional[str], standardMsg: str) -> str:
        """Every assertion failure (unittest's expected-vs-seen text and the
        test's own words) also says where to look."""
        text = super()._formatMessage(msg, standardMsg)
        logdir = getattr(self, "logdir", None)
        if logdir:
            text += (f" [logs: {logdir} -- the test log, <vm>.log, "
                     "<vm>-qtest.log, <backend>.trace.log]")
        return str(text)

    # --- parameters -------------------------------------------------------
    def param(self, name: str) -> Optional[str]:
        """Parameter ``name`` (see :mod:`avocado_vhost.params`); a broken
        value ends the test as a configuration error."""
        try:
            return params.resolve(name, self._runner_param(name))
        except params.ParamError as exc:
            self.error(str(exc))

    qemu_bin: str
    caps: Capabilities
    accel: str
    workdir_short: str

    def setUp(self) -> None:
        CLOCK.reset()
        with phase("setup"):
            self._set_up()

    def _set_up(self) -> None:
        self._stack = ExitStack()
        # Runs last: every back-end has written its trace by then.
        self._stack.callback(self._write_chart)
        self.traces_written: List[str] = []
        self.backends: List[VhostUserBackend] = []
        self.proxies: List[Proxy] = []
        self.vms: List[VhostVM] = []
        strange = params.unknown(self._runner_param_names())
        if strange:
            self.error(f"unknown parameter(s) {', '.join(strange)}; the "
                       f"suite's parameters are {', '.join(params.PARAMS)}")
        try:
            self.qemu_bin = find_binary(self.param("qemu_bin"))
            self.caps = probe(self.qemu_bin)
        except QemuBinaryError as exc:
            self.error(str(exc))
        self.platform: Platform = platform_for(self.caps.arch)
        self.accel = self._choose_accel()
        self.log.info("QEMU under test: %s (version %s, %s, accel %s)",
                      self.qemu_bin, self.caps.version, self.caps.arch,
                      self.accel)
        self.timeout_scale = float(self.param("timeout_scale") or 1.0)
        self.offer = OFFERS[self.param("offer") or DEFAULT_OFFER]
        self.log.info("back-ends offer '%s': %s", self.offer.name,
                      self.offer.summary)
        # What a killed test process left behind is removed by the next
        # test (only dirs whose owner process is gone).
        for path in remove_all_orphans(default_tmpdir()):
            self.log.info("removed %s, left by a test process that died", path)
        self.workdir_short = make_private_tmpdir(default_tmpdir())
        # Closed last: a watchdog that cleans up if this process is killed.
        self._stack.callback(start_watchdog(default_tmpdir(),
                                            self._runner_result_fd()))
        self._stack.callback(shutil.rmtree, self.workdir_short,
                             ignore_errors=True)

    def _write_chart(self) -> None:
        """``chart.html`` beside the traces: the conversation as a
        message-sequence chart (a broken chart is logged, never a test
        failure)."""
        traces = glob.glob(os.path.join(self.logdir, "*.trace.json"))
        if not traces:
            return
        try:
            write_chart(traces, os.path.join(self.logdir, "chart.html"),
                        self.id())
        except (OSError, ValueError, KeyError) as exc:
            self.log.warning("no chart.html: %s", exc)

    def tearDown(self) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            with phase("teardown"):
                stack.close()
        try:
            CLOCK.write(os.path.join(self.logdir, "phases.json"))
        except OSError as exc:
            self.log.warning("no phases.json: %s", exc)

    def run_info(self) -> dict:  # type: ignore[type-arg]
        """What this test ran, for result files: QEMU, target, accelerator
        and the traces in its log directory."""
        caps = getattr(self, "caps", None)
        return {"qemu": getattr(self, "qemu_bin", None),
                "qemu_version": caps.version if caps else None,
                "arch": caps.arch if caps else None,
                "accel": getattr(self, "accel", None),
                "traces": list(getattr(self, "traces_written", [])),
                "known_defects": [
                    {"id": d, "commit": known_defects.DEFECTS[d].commit,
                     "title": known_defects.DEFECTS[d].title}
                    for d in self.known_defects_found],
                "external_backend": self.external_backend,
                "accepted_deviations": self.accepted_deviations,
                "backend_defects": self.backend_defects_found,
                # every spec rule a peer broke, allowed by the test or not
                "violations": [
                    f"{peer.name}: {problem}"
                    for peer in [*getattr(self, "backends", []),
                                 *getattr(self, "proxies", [])]
                    for problem in peer.violations]}

    # --- requirements -----------------------------------------------------
    def _choose_accel(self) -> str:
        """qtest where the binary has it (as upstream runs its own
        vhost-user tests), else TCG; KVM only on request.  Availability was
        probed by starting QEMU with each accelerator."""
        wanted = self.param("accel")
        if wanted is None:
            return "qtest" if self.caps.has_accel("qtest") else "tcg"
        if not self.caps.has_accel(wanted):
            self.cancel(f"accelerator '{wanted}' does not start with "
                        f"{self.qemu_bin}: {self.caps.accel_error(wanted)}")
        return str(wanted)

    def require_arch(self, *arches: str) -> None:
        """Cancel unless the QEMU under test is a system emulator of one of
        ``arches``."""
        if self.caps.arch not in arches:
            self.cancel(f"needs a {' or '.join(arches)} QEMU; "
                        f"{self.qemu_bin} is {self.caps.arch}")

    def require_device(self, name: str) -> None:
        """Cancel unless the QEMU under test has device ``name``."""
        if not self.caps.has_device(name):
            self.cancel(f"{self.qemu_bin} has no device '{name}'")

    def require_membackend(self, backend: str) -> Optional[str]:
        """Cancel unless memory backend ``backend`` can be used here.

        :return: the memory path (hugetlbfs mount) when one is needed.
        """
        if backend not in MEM_BACKENDS:
            self.error(f"unknown membackend '{backend}' (valid: "
                       f"{', '.join(MEM_BACKENDS)})")
        qom = MEM_BACKENDS[backend]
        if not self.caps.has_object(qom):
            self.cancel(f"{self.qemu_bin} has no '{qom}' (membackend="
                        f"{backend})")
        if backend == "hugetlbfs":
            path = self.param("hugetlbfs_path")
            if not path:
                mounts = hugetlbfs_mounts()
                if not mounts:
                    self.cancel("membackend=hugetlbfs: no hugetlbfs mount "
                                "here (./setup.sh run as root mounts one "
                                "and reserves huge pages), and no -p "
                                "hugetlbfs_path=")
                path = mounts[0]
            if not os.path.isdir(path) or not hugetlbfs_mounted(path):
                self.cancel(f"hugetlbfs_path={path} is not a hugetlbfs mount")
            need = int(self.param("mem_mb") or 256) << 20
            free = huge_pages_free()
            if free < need:
                self.cancel(f"membackend=hugetlbfs: {free >> 20} MiB of "
                            f"free huge pages, the guest needs {need >> 20} "
                            "MiB (./setup.sh run as root reserves them)")
            return path
        return None

    def require_qemu(self, version: Tuple[int, int, int], why: str) -> None:
        """Cancel when the QEMU under test is older than ``version``, for
        a behaviour QEMU only gained then (``why`` names the commit); never
        used to excuse a defect, which is a failure (see
        :mod:`.known_defects`)."""
        if self.caps.version_tuple < version:
            self.cancel(f"QEMU {self.caps.version} is older than "
                        f"{'.'.join(map(str, version))}: {why}")

    def require_protocol(self, wanted: int, why: str) -> None:
        """Cancel when the run's offer (``-p offer=``) takes away a protocol
        feature of ``wanted``; ``why`` says what the test needs it for."""
        lacking = self.offer.lacks(wanted)
        if lacking:
            self.cancel(f"offer={self.offer.name} lacks {names(lacking)}: {why}")

    def scaled(self, seconds: float) -> float:
        """A wait bound, scaled by ``-p timeout_scale=``."""
        return seconds * self.timeout_scale

    # --- factories ----------------------------------------------------------
    def make_backend(self, name: str, config: Optional[BackendConfig] = None,
                     listen: bool = True,
                     device: Optional[Device] = None) -> VhostUserBackend:
        """A started back-end thread; listens at ``<tmp>/<name>.sock``.

        Stopped, and its trace written to ``<logdir>/<name>.trace``, at
        tear-down.  What it offers is ``config`` (default: virtio-net's)
        as the run's offer (``-p offer=``) changes it; CANCEL when the
        offer lacks what ``config`` cannot work without (MQ for several
        queue pairs, CONFIG for a config space, a protocol feature the
        test added on purpose).
        """
        config = config or BackendConfig()
        if config.queue_num > 1:
            self.require_protocol(ProtocolFeature.MQ, f"{config.queue_num} "
                                  "queue pairs on one socket")
        if config.config:
            self.require_protocol(ProtocolFeature.CONFIG, "the device's "
                                  "configuration comes from the back-end")
        self.require_protocol(asked_on_purpose(config),
                              "the test's back-end offers it on purpose")
        config = self.offer.apply(config)
        backend = VhostUserBackend(name, config, device)
        if listen:
            backend.listen(self.socket_path(name))
        backend.start()
        self.backends.append(backend)

        def _finish() -> None:
            backend.stop()
            self._keep_trace(backend.trace, f"back-end {name}")
        self._stack.callback(_finish)
        return backend

    def _keep_trace(self, trace: Trace, who: str) -> None:
        """``<name>.trace.log`` and ``.json`` in the log directory (the
        test's chart reads the JSON), and the end of the conversation in
        the test's own log, next to its last words."""
        self.log.debug("%s, last trace entries:\n%s", who, trace.tail(10))
        trace.write(os.path.join(self.logdir, f"{trace.name}.trace.log"))
        trace.write_json(os.path.join(self.logdir,
                                      f"{trace.name}.trace.json"))
        self.traces_written.append(f"{trace.name}.trace.log")

    def make_testpmd(self, name: str, vdev: str,
                     app_args: Sequence[str] = (),
                     until: Optional[str] = None) -> Testpmd:
        """A started dpdk-testpmd (its output in ``<logdir>/<name>.log``),
        closed at tear-down; CANCEL where there is none.

        :param until: return once its output matches this (default: its
            first prompt).
        """
        binary = find_testpmd(self.param("testpmd"))
        if binary is None:
            self.cancel(f"no dpdk-testpmd (Debian package {TESTPMD_PACKAGE}"
                        ", which ./setup.sh installs; or -p testpmd=PATH)")
        prefix = f"{os.path.basename(self.workdir_short)}-{name}"
        testpmd = Testpmd(binary, prefix, vdev,
                          os.path.join(self.logdir, f"{name}.log"), app_args)
        self._stack.callback(testpmd.close)
        with phase("testpmd-start"):
            testpmd.start(self.scaled(30), until)
        return testpmd

    def qemu_ended(self, vm: VhostVM, when: str, context: str = ""
                   ) -> NoReturn:
        """QEMU is ending or ended on its own: FAIL with how (its exit
        signal or status, version, output).  A crash that is a known QEMU
        defect of this version becomes its report (see
        :mod:`avocado_vhost.known_defects`), never a pass."""
        code = vm.wait_exit(self.scaled(5))
        how = ("still running" if code is None else
               f"signal {-code}" if code < 0 else f"status {code}")
        evidence = (f"QEMU {self.caps.version} ({self.qemu_bin}) exited with "
                    f"{how} {when}" + (f" ({context})" if context else "")
                    + f"; its output: {self.qemu_output(vm) or '(none)'}")
        self.log.error("%s", evidence)
        self.fail(evidence)

    def qemu_died(self, vm: VhostVM, msix: bool, when: str) -> NoReturn:
        """:meth:`qemu_ended` for a device started with MSI-X on or off."""
        self.qemu_ended(vm, when, f"MSI-X {'on' if msix else 'off'}, accel "
                        f"{vm.spec.accel}")

    @staticmethod
    def qemu_output(vm: VhostVM, lines: int = 3) -> str:
        """The last ``lines`` lines QEMU wrote, on one line."""
        try:
            with open(vm.log_path, encoding="utf-8", errors="replace") as log:
                return " | ".join(log.read().strip().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def require_guest(self) -> GuestAssets:
        """The real guest's kernel and initramfs for the QEMU's target
        (x86_64 or aarch64, under TCG); CANCEL with the reason where they
        are missing or cannot run."""
        self.require_arch(*guest_assets.ARCHES)
        if not self.caps.has_accel("tcg"):
            self.cancel(f"the real guest needs TCG: "
                        f"{self.caps.accel_error('tcg')}")
        try:
            assets = guest_assets.load(self.caps.arch)
        except guest_assets.AssetsMissing as exc:
            self.cancel(str(exc))
        self.log.info("guest made of %s", guest_assets.describe(assets))
        return assets

    def start_guest(self, options: GuestOptions, name: str = "guest",
                    backend_name: str = "backend",
                    port: Optional[Port] = None, **spec: object
                    ) -> GuestRun:
        """Boot the real guest on a vhost-user virtio-net served by a new
        back-end with a responder on its wire (``port``: shared with other
        back-ends, e.g. a migration destination); returns once eth0 is up.
        The console goes to ``console.log`` (``<name>-console.log`` for
        other VM names)."""
        port = port or Port()
        backend = self.make_backend(backend_name, backend_config(options),
                                    device=NetDevice(port))
        responder = Responder(port, backend.poke)
        vm, console = self.launch_guest_vm(name, backend, options, **spec)
        run = GuestRun(vm, console, backend, port, responder, options)
        try:
            run.wait_ready(self.scaled(90))
        except GuestFailure:
            # QEMU died under the guest?  (Its console closes just before
            # the process is reaped: give it a moment.)
            if vm.wait_exit(self.scaled(2)) is not None:
                self.qemu_died(vm, options.msix,
                               "while the guest's driver started the device")
            raise
        return run

    def launch_guest_vm(self, name: str, backend: VhostUserBackend,
                        options: GuestOptions, **spec: object
                        ) -> Tuple[VhostVM, GuestConsole]:
        """Launch a VM that boots the real guest (or, with ``incoming=``,
        waits for one), with its console connected; ``extra`` arguments
        (more devices) come after the guest's own."""
        assets = self.require_guest()
        console_sock = os.path.join(self.workdir_short, f"{name}.con")
        extra = list(spec.pop("extra", []))  # type: ignore[call-overload]
        vm = self.make_vm(name, backend.listener_path, firmware=True,
                          accel="tcg", queues=options.queues,
                          device_opts=device_opts(options),
                          extra=guest_spec_args(assets, options,
                                                console_sock) + extra,
                          **spec)
        vm.launch()
        log = "console.log" if name == "guest" else f"{name}-console.log"
        console = GuestConsole(console_sock, os.path.join(self.logdir, log))
        self._stack.callback(console.close)
        return vm, console

    def make_proxy(self, name: str, backend_socket: str) -> Proxy:
        """A started conformance proxy listening at ``<tmp>/<name>.sock``
        in front of the back-end at ``backend_socket``; stopped, and its
        trace written beside the back-ends' (``<name>.trace.log``/``.json``,
        so the test's chart shows it), at tear-down."""
        proxy = Proxy(self.socket_path(name), backend_socket, name)
        proxy.start()
        self.proxies.append(proxy)

        def _finish() -> None:
            proxy.stop()
            self._keep_trace(proxy.trace, proxy.describe())
        self._stack.callback(_finish)
        return proxy

    def start_external_backend(self, name: str, queues: int = 1,
                               device: str = "net",
                               backend: Optional[external.ExternalBackend]
                               = None
                               ) -> Tuple["subprocess.Popen[bytes]", str]:
        """Start the back-end under test (``-p backend=`` or ``-p
        backend_cmd=``, :mod:`.kit.external`; or ``backend``, for a
        test's own) listening at ``<tmp>/<name>.sock``; CANCEL when there
        is none or it serves another device.  Its output goes to
        ``<logdir>/<name>.log``."""
        if backend is None:
            backend = external.choose(self, device)
        log = open(os.path.join(self.logdir, f"{name}.log"), "ab")
        self._stack.callback(log.close)
        proc = external.start(self, backend, name, queues, log,
                              self.cleanup)
        return proc, self.socket_path(name)

    def cleanup(self, function: Callable[..., object], *args: object) -> None:
        """Call ``function(*args)`` at tear-down, before the resources made
        earlier are released (last in, first out), whatever happens."""
        self._stack.callback(function, *args)

    def socket_path(self, name: str) -> str:
        return os.path.join(self.workdir_short, f"{name}.sock")

    def make_vm(self, name: str, vhost_socket: str, **spec: object
                ) -> VhostVM:
        """A VM (not launched yet) whose vhost-user chardev uses
        ``vhost_socket``; shut down at tear-down.

        Memory backend and size default to the test parameters.
        """
        membackend = str(spec.pop("mem_backend", self.param("membackend")))
        mem_path = self.require_membackend(membackend)
        spec.setdefault("mem_mb", int(self.param("mem_mb") or 256))
        spec.setdefault("accel", self.accel)
        vm_spec = VMSpec(name=name, binary=self.qemu_bin,
                         workdir=self.workdir_short,
                         vhost_socket=vhost_socket,
                         mem_backend=membackend, mem_path=mem_path,
                         reconnect_ms=self.caps.reconnect_ms,
                         platform=self.platform,
                         **spec)  # type: ignore[arg-type]
        # The firmware drives the device itself; qtest is for the test's
        # own driver.
        vm = VhostVM(vm_spec, self.logdir, qtest=not vm_spec.firmware)
        self.vms.append(vm)
        self._stack.callback(vm.shutdown)
        return vm

    def start_vm(self, vm: VhostVM, backend: VhostUserBackend,
                 rings: int = 2, **drive: object) -> None:
        """Launch ``vm``, drive its device to DRIVER_OK and wait until the
        back-end has ``rings`` rings started."""
        vm.launch()
        queues = drive.pop("queues", rings)
        vm.drive_device(queues=queues, **drive)  # type: ignore[arg-type]
        with phase("rings-start"):
            backend.wait_rings_started(rings, timeout=self.scaled(10))

    def launch_server_mode(self, name: str = "vm", backend_name: str = "backend",
                           faults: Sequence[Fault] = (),
                           on_connect: Optional[Callable[..., None]] = None,
                           config: Optional[BackendConfig] = None,
                           device: Optional[Device] = None,
                           **spec: object) -> Tuple[VhostVM, VhostUserBackend]:
        """QEMU's chardev listens (``server=on``); the back-end connects as
        soon as QEMU waits for it, and reconnects whenever a connection
        ends.  Faults and the per-connection hook are in place before
        QEMU's first message."""
        backend = self.make_backend(backend_name, config, listen=False,
                                    device=device)
        backend.faults.extend(faults)
        backend.on_connect = on_connect
        path = self.socket_path(f"{name}-vhost")
        vm = self.make_vm(name, path, vhost_server=True, **spec)
        backend.reconnect_path = path
        vm.launch(connect=backend.connect, timeout=self.scaled(30))
        return vm, backend

    def expect_violations(self, backend: VhostUserBackend) -> None:
        """Declare that ``backend`` will see the front-end break rules and
        that the test judges those violations itself; the check after the
        test still fails on its errors and stalled rings."""
        self._violations_expected.append(backend.name)

    def expect_failure(self, backend: VhostUserBackend) -> None:
        """Declare ``backend`` broken on purpose (a negative control): what
        it records is the point of the test, which asserts it itself."""
        self._failure_expected.append(backend.name)

    def check_backends(self, *backends: VhostUserBackend) -> None:
        """Fail on any error, stall or (unless expected) conformance
        violation a back-end recorded.  Runs after every test method; a
        test calls it earlier to fail at the step that went wrong."""
        for backend in backends or tuple(self.backends):
            if backend.name not in self._failure_expected:
                backend.check(allow_violations=backend.name
                              in self._violations_expected,
                              known=self._known_in_passing)

    def check_proxy(self, proxy: Proxy) -> List[str]:
        """The proxy's verdict, asserted: fail on a problem of the proxy
        itself, and on any violation of either side that is neither a known
        defect of the QEMU under test (reported as found) nor listed in
        ``-p backend_allow=`` (logged with its reason).

        :return: the violations accepted, with why.
        """
        self.assertEqual(external.deaths(self), [],
                         "a back-end crashed during the scenario")
        self.assertEqual(proxy.errors, [], proxy.trace.tail(20))
        path = self.allow_list or self.param("backend_allow")
        try:
            entries = allowlist.load(path) if path else []
        except allowlist.AllowListError as exc:
            self.error(str(exc))
        accepted, broken = [], []
        for violation in proxy.violations:
            entry = allowlist.allowed(violation.text, entries)
            if entry is not None:
                accepted.append(f"{violation} (allowed: {entry.why})")
            elif self._known_in_passing(violation):
                accepted.append(f"{violation} (a known QEMU defect)")
            else:
                broken.append(str(violation))
        for line in accepted:
            self.log.info("accepted deviation: %s", line)
        self.accepted_deviations.extend(accepted)
        self.assertEqual(broken, [], "rules broken through the proxy (list "
                         "a known deviation of the back-end with -p "
                         "backend_allow=FILE, with why)")
        return accepted

    def _known_in_passing(self, violation: Problem) -> bool:
        """Whether ``violation`` is a known defect of the QEMU under test
        that this test only ran into on its way (it was written for
        something else).  It is reported -- in the log and as a found
        defect in the results -- and does not fail the test, so that a
        QEMU that carries one defect is still tested for everything else;
        the tests written for the defect fail on it (and end as its known
        defect report)."""
        caps = getattr(self, "caps", None)
        if caps is None:
            return False
        defect = known_defects.match(str(violation), caps.version_tuple)
        if defect is None or defect in known_defects.defects_for_test(
                self.id()):
            return False
        if defect.id not in self.known_defects_found:
            self.known_defects_found.append(defect.id)
            self.log.error("known QEMU defect %s seen in passing (%s; its "
                           "own test fails on it): %s", defect.id,
                           defect.fix_text(), violation)
        return True
