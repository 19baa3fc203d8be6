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

The harness keeps the test's life only.  The peers a test may add are
functions of the test beside it, each registering its own clean-up here:
the real guest (:mod:`.peers.guest.start`), testpmd
(:func:`.peers.dpdk.start_testpmd`), a conformance proxy
(:mod:`.scenarios.proxied`), QEMU as the socket's server
(:mod:`.scenarios.server_mode`), the back-end under test
(:func:`.peers.external.launch.start_backend`).  What a QEMU failure means (a
known defect's report, or a FAIL) is decided in :mod:`.checks.triage`; what a
test found beyond its verdict is :class:`.checks.found.Found`.

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
import shutil
from contextlib import ExitStack
from typing import (TYPE_CHECKING, Any, Callable, Iterable, List, NoReturn,
                    Optional, Tuple)

from avocado_vhost import params

from avocado_vhost.checks import triage
from avocado_vhost.tools.chart import write_chart
from avocado_vhost.errors import NotAvailable, Outcome, SetupError, outcome_of
from avocado_vhost.checks.found import Found
from avocado_vhost.peers.qemu.binary import Capabilities, find_binary, probe
from avocado_vhost.peers.qemu.membackend import memory_path
from avocado_vhost.peers.qemu.platform import Platform, platform_for
from avocado_vhost.peers.qemu.spec import VMOptions, VMSpec, default_tmpdir
from avocado_vhost.peers.qemu.vm import VhostVM
from avocado_vhost.plumbing.phases import CLOCK, phase
from avocado_vhost.plumbing.tmpdirs import (make_private_tmpdir,
                                            remove_all_orphans)
from avocado_vhost.plumbing.watchdog import start_watchdog
from avocado_vhost.vhost_user import (BackendConfig, ProtocolFeature,
                                      VhostUserBackend)
from avocado_vhost.vhost_user.offers import (DEFAULT_OFFER, OFFERS,
                                             asked_on_purpose, names)
from avocado_vhost.vhost_user.device import Device
from avocado_vhost.vhost_user.proxy import Proxy
from avocado_vhost.vhost_user.trace import Trace

__all__ = ["Harness"]

if TYPE_CHECKING:  # the flavours are TestCases: their assert* methods
    import unittest

    from typing_extensions import Unpack
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
        # What it raises ends it as errors.outcome_of says.
        name = getattr(self, "_testMethodName", "")
        method = getattr(self, name, None)
        if name.startswith("test") and callable(method):
            setattr(self, name, self._mapped(method, check=True))
        # the set-up too, the test class's own included (a require_*
        # there, or a helper that finds something missing)
        setattr(self, "setUp", self._mapped(self.setUp))
        self._violations_expected: List[str] = []
        self._failure_expected: List[str] = []
        #: what the test found beyond its verdict (the result plugin's)
        self.found = Found()
        #: an allow-list file of the test's own (else -p backend_allow=)
        self.allow_list: Optional[str] = None

    def _mapped(self, method: Callable[[], Any],
                check: bool = False) -> Callable[[], Any]:
        """``method``, then (``check``) the back-ends' check; whatever
        either raises ends the test through :meth:`_end_as`."""
        @functools.wraps(method)
        def mapped() -> Any:
            try:
                result = method()
                if check:
                    self.check_backends()
            except Exception as exc:
                self._end_as(exc)
            return result
        return mapped

    def _end_as(self, exc: Exception) -> NoReturn:
        """End the test as ``exc`` means (:func:`.errors.outcome_of`): the
        one place where an exception becomes CANCEL, ERROR or FAIL.  A
        failure that is a known QEMU defect of the QEMU under test becomes
        a CANCEL that names it (:mod:`.checks.triage`)."""
        outcome = outcome_of(exc)
        if outcome is Outcome.CANCEL:
            self.cancel(str(exc))
        if outcome is Outcome.FAIL:
            triage.report_if_known(self, str(exc))
            if isinstance(exc, AssertionError):
                raise exc
            raise self.failureException(str(exc)) from exc
        if isinstance(exc, SetupError):
            self.error(str(exc))
        raise exc  # a bug of the test or of the framework: its traceback

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
        return params.resolve(name, self._runner_param(name))

    def mem_mb(self) -> int:
        """The guest RAM in MiB (``-p mem_mb=``; its default and check are
        the parameter's, so it is always a positive number)."""
        return int(self.param("mem_mb") or 0)

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
        self.backends: List[VhostUserBackend] = []
        self.proxies: List[Proxy] = []
        self.vms: List[VhostVM] = []
        strange = params.unknown(self._runner_param_names())
        if strange:
            raise SetupError(f"unknown parameter(s) {', '.join(strange)}; "
                             "the suite's parameters are "
                             f"{', '.join(params.PARAMS)}")
        self.qemu_bin = find_binary(self.param("qemu_bin"))
        self.caps = probe(self.qemu_bin)
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
                **self.found.info(),
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
            raise NotAvailable(f"accelerator '{wanted}' does not start "
                               f"with {self.qemu_bin}: "
                               f"{self.caps.accel_error(wanted)}")
        return str(wanted)

    def require_arch(self, *arches: str) -> None:
        """Cancel unless the QEMU under test is a system emulator of one of
        ``arches``."""
        if self.caps.arch not in arches:
            raise NotAvailable(f"needs a {' or '.join(arches)} QEMU; "
                               f"{self.qemu_bin} is {self.caps.arch}")

    def require_device(self, name: str) -> None:
        """Cancel unless the QEMU under test has device ``name``."""
        if not self.caps.has_device(name):
            raise NotAvailable(f"{self.qemu_bin} has no device '{name}'")

    def require_membackend(self, backend: str) -> Optional[str]:
        """Cancel unless memory backend ``backend`` can be used here.

        :return: the memory path (hugetlbfs mount) when one is needed.
        """
        try:
            return memory_path(backend, self.caps, self.qemu_bin,
                               self.param("hugetlbfs_path"),
                               self.mem_mb())
        except KeyError as exc:
            raise SetupError(str(exc.args[0])) from None

    def require_qemu(self, version: Tuple[int, int, int], why: str) -> None:
        """Cancel when the QEMU under test is older than ``version``, for
        a behaviour QEMU only gained then (``why`` names the commit); never
        used to excuse a defect, which is a failure (see
        :mod:`.checks.known_defects`)."""
        if self.caps.version_tuple < version:
            raise NotAvailable(f"QEMU {self.caps.version} is older than "
                               f"{'.'.join(map(str, version))}: {why}")

    def require_protocol(self, wanted: int, why: str) -> None:
        """Cancel when the run's offer (``-p offer=``) takes away a protocol
        feature of ``wanted``; ``why`` says what the test needs it for."""
        lacking = self.offer.lacks(wanted)
        if lacking:
            raise NotAvailable(f"offer={self.offer.name} lacks "
                               f"{names(lacking)}: {why}")

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
            self.keep_trace(backend.trace, f"back-end {name}")
        self._stack.callback(_finish)
        return backend

    def keep_trace(self, trace: Trace, who: str) -> None:
        """``<name>.trace.log`` and ``.json`` in the log directory (the
        test's chart reads the JSON), and the end of the conversation in
        the test's own log, next to its last words."""
        self.log.debug("%s, last trace entries:\n%s", who, trace.tail(10))
        trace.write(os.path.join(self.logdir, f"{trace.name}.trace.log"))
        trace.write_json(os.path.join(self.logdir,
                                      f"{trace.name}.trace.json"))
        self.found.traces.append(f"{trace.name}.trace.log")

    def cleanup(self, function: Callable[..., object], *args: object) -> None:
        """Call ``function(*args)`` at tear-down, before the resources made
        earlier are released (last in, first out), whatever happens."""
        self._stack.callback(function, *args)

    def socket_path(self, name: str) -> str:
        return os.path.join(self.workdir_short, f"{name}.sock")

    def make_vm(self, name: str, vhost_socket: str,
                **options: Unpack[VMOptions]) -> VhostVM:
        """A VM (not launched yet) whose vhost-user chardev uses
        ``vhost_socket``; shut down at tear-down.

        Accelerator, memory backend and size default to the run's.
        """
        chosen: VMOptions = {
            "accel": self.accel,
            "mem_backend": str(self.param("membackend") or "memfd"),
            "mem_mb": self.mem_mb(), **options}
        mem_path = self.require_membackend(chosen["mem_backend"])
        vm_spec = VMSpec(name=name, binary=self.qemu_bin,
                         workdir=self.workdir_short,
                         vhost_socket=vhost_socket, mem_path=mem_path,
                         reconnect_ms=self.caps.reconnect_ms,
                         platform=self.platform, **chosen)
        # The firmware drives the device itself; qtest is for the test's
        # own driver.
        vm = VhostVM(vm_spec, self.logdir, qtest=not vm_spec.firmware)
        self.vms.append(vm)
        self._stack.callback(vm.shutdown)
        return vm

    def start_vm(self, vm: VhostVM, backend: VhostUserBackend,
                 rings: int = 2, features: int = 0,
                 queues: Optional[int] = None) -> None:
        """Launch ``vm``, drive its device to DRIVER_OK (asking
        ``features``, with ``queues`` queues, default ``rings``) and wait
        until the back-end has ``rings`` rings started."""
        vm.launch()
        vm.drive_device(features=features,
                        queues=rings if queues is None else queues)
        with phase("rings-start"):
            backend.wait_rings_started(rings, timeout=self.scaled(10))

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
                              known=functools.partial(
                                  triage.known_in_passing, self))
