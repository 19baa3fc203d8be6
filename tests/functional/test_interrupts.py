"""
Interrupts: a call the back-end signals reaches the guest.

SET_VRING_CALL arriving proves only that QEMU handed over an eventfd.  What
the spec's call file descriptor is for is the guest's interrupt: here the
back-end signals a ring's call eventfd and the test, playing the guest
driver, sees the interrupt -- as an MSI-X message (the device default, with
one vector per queue, as Linux sets it up) and as INTx through the ISR
status register (``vectors`` unused, MSI-X left disabled).

Negative controls: before any signal no vector has fired and the ISR reads
0; a signal on one ring fires that ring's vector and no other.

**Known QEMU defects** (``avocado_vhost/checks/known_defects.py``).  QEMU 7.2
dies of SIGSEGV when a vhost-user virtio-net device starts with MSI-X
enabled and no KVM irqfd (TCG): ``virtio_pci_set_guest_notifiers``
installs MSI-X vector notifiers whenever the device class has
``guest_notifier_mask``, but vhost-user net clears
``use_guest_notifier_mask``, so ``virtio_pci_one_vector_unmask`` takes
``kvm_virtio_pci_irqfd_use``, which reads the NULL
``proxy->vector_irqfd``; 8.0 fixed it (1680542862).  Before 10.2 QEMU
sent SET_VRING_CALL without asking for an ack, so on an unmask it looked
for interrupts left on the masked fd before the back-end used the new one
(1ba9a52203).  On a QEMU known to carry either, the test that hits it
ends as that defect's report; anywhere else it FAILs.
"""

import threading
import time

from avocado_vhost.vhost_user.device_offers import (FS_OPTIONS, FS_QUEUES,
                                                    device_config)
from avocado_vhost.peers.qemu.qtest import QtestError
from avocado_vhost.checks import triage
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (BackendConfig, Fault, FaultAction,
                                      ProtocolFeature, Request, RingEvent,
                                      WaitTimeout)
from avocado_vhost.vhost_user.message import FLAG_NEED_REPLY

RINGS = 2


class Interrupts(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,interrupts
    """

    def start(self, msix):
        backend = self.make_backend("backend")
        vm = self.make_vm("vm", backend.listener_path)
        vm.launch()
        try:
            device = vm.drive_device(queues=RINGS, msix=msix)
        except QtestError:
            # QEMU died while handling the guest's write (DRIVER_OK starts
            # vhost synchronously): the qtest answer never came.
            if vm.wait_exit(self.scaled(5)) is not None:
                triage.qemu_died(self, vm, msix, "when the guest set DRIVER_OK")
            raise
        try:
            backend.wait_for(
                lambda: len(backend.state.started_rings()) >= RINGS
                or not vm.is_running(),
                f"{RINGS} rings started (or QEMU gone)",
                timeout=self.scaled(10))
        except WaitTimeout:
            pass  # judged below, with what QEMU said
        if not vm.is_running():
            triage.qemu_died(self, vm, msix, "when the guest set DRIVER_OK")
        # A ring starts at SET_VRING_KICK; QEMU hands over the call eventfd
        # it watches for the guest only after that (SET_VRING_CALL follows
        # the kick).  Until then the back-end holds the fd QEMU gave at
        # initialisation, whose signals QEMU does not turn into interrupts.
        backend.wait_for(lambda: all(self.call_after_kick(backend, r)
                                     for r in range(RINGS)),
                         "SET_VRING_CALL after each ring's SET_VRING_KICK",
                         timeout=self.scaled(10))
        return vm, backend, device

    @staticmethod
    def call_after_kick(backend, ring):
        seen_kick = False
        for entry in backend.trace.select("rx"):
            payload = entry.payload
            index = getattr(payload, "value", -1) & 0xFF
            if entry.request == "SET_VRING_KICK" and index == ring:
                seen_kick = True
            elif entry.request == "SET_VRING_CALL" and index == ring:
                if seen_kick:
                    return True
        return False

    def wait_until(self, probe, what, bound=5.0):
        """Poll the guest side over qtest until ``probe()`` holds: each try
        is a round trip through QEMU's main loop, which is where QEMU turns
        the call eventfd into an interrupt; bounded, no sleep."""
        deadline = time.monotonic() + self.scaled(bound)
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            if probe():
                return
        self.fail(f"waited {self.scaled(bound)}s ({tries} reads) for "
                  f"{what}; it never came")

    def test_msix(self):
        """A call signalled on ring r arrives as MSI-X vector 1 + r, alone.

        :avocado: tags=quick
        """
        _, backend, device = self.start(msix=True)
        vectors = device.vectors
        self.log.info("MSI-X: %d vectors; queue vectors %s", len(vectors),
                      [device.queue_vector(r).index for r in range(RINGS)])
        for vector in vectors:  # negative control: nothing fired yet
            self.assertFalse(device.msix_fired(vector),
                             f"vector {vector.index} fired before any call "
                             "was signalled")
        for ring in range(RINGS):
            mine = device.queue_vector(ring)
            backend.signal_call(ring)
            self.wait_until(lambda: device.msix_fired(mine),
                            f"MSI-X vector {mine.index} after the back-end "
                            f"signalled ring {ring}'s call eventfd")
            others = [v.index for v in vectors if v != mine
                      and device.msix_fired(v)]
            self.assertEqual(others, [], f"a call on ring {ring} also fired "
                             f"vectors {others}")

    def test_intx(self):
        """Without MSI-X, a signalled call sets the ISR's queue bit, which
        reading clears.

        :avocado: tags=quick
        """
        _, backend, device = self.start(msix=False)
        self.assertEqual(device.vectors, [])
        self.assertEqual(device.isr_status(), 0,
                         "negative control: the ISR showed an interrupt "
                         "before any call was signalled")
        for ring in range(RINGS):
            backend.signal_call(ring)
            self.wait_until(lambda: device.isr_status() & 1,
                            f"the ISR queue bit after the back-end signalled "
                            f"ring {ring}'s call eventfd")
            self.assertEqual(device.isr_status(), 0,
                             "reading the ISR did not clear it")

    def test_an_interrupt_as_the_ring_starts_reaches_the_guest(self):
        """A ring is started by SET_VRING_KICK (spec, "Ring states"); a
        back-end that uses buffers at once -- the destination of a
        migration, resuming a receive ring the guest had filled -- signals
        the call fd it has then, before QEMU sends the guest's own
        (SET_VRING_CALL comes after the kick).  That interrupt must reach
        the guest: with EVENT_IDX, a lost one stalls the queue for good (the
        guest never moves used_event again).  QEMU 10.2 discards it
        (vhost_virtqueue_start: "Clear and discard previous events").
        The back-end's own remedy is off here: QEMU alone is judged."""
        self.signal_as_ring_0_starts(resignal=False)

    def test_a_back_end_that_signals_again_loses_no_interrupt(self):
        """The same, with the remedy libvhost-user uses: on SET_VRING_CALL,
        a ring signalled since its last call fd is signalled again on the
        new one -- the guest gets its interrupt whatever QEMU discarded
        (the suite's back-end does it by default)."""
        self.signal_as_ring_0_starts(resignal=True)

    def signal_as_ring_0_starts(self, resignal):
        backend = self.make_backend(
            "backend", BackendConfig(resignal_on_call_switch=resignal))

        had_fd = []

        def signal_at_start(be, ring, event):
            if event is RingEvent.STARTED and ring.index == 0:
                had_fd.append(ring.call_fd is not None)
                be.signal(ring)  # on the call fd it has now, if any
        backend.ring_listeners.append(signal_at_start)
        vm = self.make_vm("vm", backend.listener_path)
        vm.launch()
        device = vm.drive_device(queues=RINGS, msix=False)
        backend.wait_for(lambda: self.call_after_kick(backend, 0),
                         "SET_VRING_CALL after ring 0's SET_VRING_KICK",
                         timeout=self.scaled(10))
        how = ("on the fd it had, which QEMU discards" if had_fd[0] else
               "while it had no call fd (RESET_DEVICE reset the rings)")
        self.wait_until(lambda: device.isr_status() & 1,
                        "the interrupt the back-end signalled as ring 0 "
                        "started, before QEMU's SET_VRING_CALL: QEMU "
                        f"discarded it ({how})", bound=1.0)

    def test_interrupt_while_the_call_fd_changes(self):
        """vhost-user-fs (virtiofs), MSI-X: the guest masks a queue's
        vector and unmasks it.  QEMU hands the back-end a new call fd each
        time (SET_VRING_CALL); a back-end applies it a little late and, in
        between, signals the fd it still has.  That interrupt must reach
        the guest: QEMU may look for interrupts left on the masked fd only
        once the back-end uses the new one -- which it knows only from the
        back-end's REPLY_ACK (QEMU fix 1ba9a52203: before it, QEMU did not
        ask for one, looked too early, and the interrupt was lost; virtiofs
        mounts hung)."""
        self.require_device("vhost-user-fs-pci")
        ring = 1  # the request queue
        config = device_config("fs")
        config.resignal_on_call_switch = False  # QEMU alone is judged
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path,
                          device="vhost-user-fs-pci", device_opts=FS_OPTIONS)
        vm.launch()
        device = vm.drive_device(queues=FS_QUEUES, msix=True)
        backend.wait_rings_started(FS_QUEUES, timeout=self.scaled(10))
        backend.wait_for(lambda: self.call_after_kick(backend, ring),
                         "SET_VRING_CALL after the ring's SET_VRING_KICK",
                         timeout=self.scaled(10))
        vector = device.queue_vector(ring)
        calls = len(backend.trace.payloads(Request.SET_VRING_CALL))

        device.msix_mask(vector, True)
        backend.wait_request(Request.SET_VRING_CALL, calls + 1,
                             timeout=self.scaled(10))
        late = Fault(FaultAction.HOLD, request=Request.SET_VRING_CALL,
                     hold_timeout=self.scaled(10))
        backend.faults.append(late)
        self.cleanup(late.release.set)
        unmask = threading.Thread(target=device.msix_mask,
                                  args=(vector, False))
        unmask.start()
        self.assertTrue(late.reached.wait(self.scaled(10)),
                        "QEMU sent no SET_VRING_CALL when the guest "
                        "unmasked the vector")
        held = backend.trace.select("rx", Request.SET_VRING_CALL)[-1]
        acked = backend.state.protocol_negotiated(ProtocolFeature.REPLY_ACK)
        if not held.flags & FLAG_NEED_REPLY:
            # QEMU does not wait for the back-end: the guest's unmask, and
            # with it QEMU's look for interrupts on the masked fd, is done
            # (the qtest write returns once QEMU handled it).
            unmask.join(self.scaled(10))
        backend.signal_call(ring)  # on the fd the back-end still has
        late.release.set()  # ... and now it applies the new one
        unmask.join(self.scaled(10))
        self.assertFalse(unmask.is_alive(), "the guest's unmask never "
                         "completed")
        self.wait_until(lambda: device.msix_fired(vector),
                        f"MSI-X vector {vector.index}: the interrupt the "
                        "back-end signalled while QEMU switched the call "
                        f"fd was lost (SET_VRING_CALL flags "
                        f"0x{held.flags:x}; REPLY_ACK negotiated: "
                        f"{'yes' if acked else 'no'}: without NEED_REPLY, "
                        "or without QEMU waiting otherwise, QEMU looks for "
                        "it before the back-end applies the new fd)",
                        bound=1.0)


if __name__ == "__main__":
    main()
