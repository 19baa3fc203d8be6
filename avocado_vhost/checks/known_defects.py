"""
QEMU vhost-user front-end defects that QEMU has fixed, and which releases
still carry them.

A test never asks the version whether to expect a bug: it provokes the
behaviour and fails when QEMU misbehaves, whatever the version.  Only then
is this registry asked whether the failure is a *known* one: its message
matches a defect's ``signature`` (the sentence the test writes when that
behaviour breaks) **and** the QEMU under test is a release known to carry
the defect.  Then the test ends as a known-defect report that names the
fix (CANCEL "KNOWN QEMU DEFECT", listed by the result plugin as found),
neither a pass nor a silent skip.  Any other failure -- the same symptom
on a QEMU that has the fix (a regression), or another symptom -- is a FAIL.

Which releases carry what was established from the sources: QEMU's history
(``github:pbo-linaro/qemu-ci``) for where a fix landed, and the source
packages this project builds and tests (Debian's 7.2+dfsg-7+deb12u18,
10.0.13, 10.2.2), because Debian and QEMU's stable branches backport fixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = ["Version", "QemuDefect", "DEFECTS", "OPEN", "match",
           "defects_for_test"]

Version = Tuple[int, int, int]

#: ``fixed_in`` of a defect QEMU has not fixed (as of the newest QEMU
#: history read here: master of January 2026, and 10.2.2): every release
#: since ``introduced_in`` carries it.  Found by this suite; ``commit`` is
#: the change that brought it in.
OPEN: Version = (999, 0, 0)


@dataclass(frozen=True)
class QemuDefect:
    """One fixed QEMU defect.

    :param id: a short name, used by tests and reports.
    :param commit: the fix in QEMU's tree.
    :param title: the fix's title.
    :param fixed_in: the first release with the fix.
    :param introduced_in: the first release with the defect ((0, 0, 0):
        before any release the suite runs on).
    :param backported_to: stable releases known to carry the fix although
        older than ``fixed_in`` (read in their source): a release of that
        series at or after it is fixed.
    :param signature: a regular expression over the failure message of the
        test that provokes it.
    :param tests: the tests written for it (``file:Class.method``).
    :param symptom: what a user of that QEMU sees.
    """

    id: str
    commit: str
    title: str
    fixed_in: Version
    signature: str
    tests: Tuple[str, ...]
    symptom: str
    introduced_in: Version = (0, 0, 0)
    backported_to: Tuple[Version, ...] = ()

    def carried_by(self, version: Version) -> bool:
        """Whether QEMU ``version`` is known to carry the defect."""
        if not self.introduced_in <= version < self.fixed_in:
            return False
        return not any(version[:2] == fixed[:2] and version >= fixed
                       for fixed in self.backported_to)

    def describe(self) -> str:
        return f"{self.commit} \"{self.title}\""

    @property
    def is_open(self) -> bool:
        return self.fixed_in == OPEN

    def fix_text(self) -> str:
        """Where it was fixed, for reports: "fixed by <commit> "<title>" in
        8.1.0", or, for an open defect, what brought it in."""
        if self.is_open:
            return (f"NOT FIXED in QEMU as of 10.2 and master (see "
                    f"{self.describe()})")
        return (f"fixed by {self.describe()} in "
                f"{'.'.join(map(str, self.fixed_in))}")


DEFECTS: Dict[str, QemuDefect] = {d.id: d for d in (
    QemuDefect(
        "msix-tcg-irqfd", "1680542862",
        "virtio-pci: add support for configure interrupt", (8, 0, 0),
        r"exited with signal 11 .*MSI-X on",
        ("test_interrupts.py:Interrupts.test_msix",
         "test_guest.py:Guest.test_msix_on"),
        "SIGSEGV when a vhost-user net device starts with MSI-X and no KVM "
        "irqfd (TCG): virtio_pci_set_guest_notifiers installs vector "
        "notifiers because the class has guest_notifier_mask, though vhost-"
        "user net clears use_guest_notifier_mask, and "
        "kvm_virtio_pci_irqfd_use reads the NULL proxy->vector_irqfd"),
    QemuDefect(
        "vring-file-async", "1ba9a52203",
        "vhost-user: make vhost_set_vring_file() synchronous", (10, 2, 0),
        r"interrupt the back-end signalled while QEMU switched the call "
        r"fd.*REPLY_ACK negotiated: yes",
        ("test_interrupts.py:Interrupts."
         "test_interrupt_while_the_call_fd_changes",),
        "SET_VRING_KICK/CALL/ERR sent without NEED_REPLY although REPLY_ACK "
        "is negotiated: on unmask QEMU looks for pending interrupts before "
        "the back-end uses the new call fd, and loses the guest's "
        "interrupt (virtiofs mounts hang)"),
    QemuDefect(
        "log-base-per-pair", "c98ac64cfb",
        "vhost-user: send set log base message only once", (8, 0, 0),
        r"SET_LOG_BASE sent \d+ times on one socket",
        ("test_multiqueue.py:Multiqueue."
         "test_migration_hands_over_the_log_once",),
        "with several queue pairs SET_LOG_BASE is sent once per pair on the "
        "same socket; a back-end that unmaps the old log (DPDK) crashes "
        "during migration.  7c211eb078 (\"vhost-user: Skip unnecessary "
        "duplicated VHOST_USER_SET_LOG_BASE requests\", 9.1) guards "
        "vhost_user_write against it a second time"),
    QemuDefect(
        "lost-reconnect", "6eaf0e612b", "vhost-user: fix lost reconnect "
        "again", (9, 1, 0),
        r"never spoke on the new connection",
        ("test_reconnect.py:Reconnect."
         "test_reconnect_after_a_failed_reconnect",),
        "a reconnect that fails at GET_FEATURES (vhost_dev_init) leaves the "
        "chardev without its event handler: vhost-user-blk, -scsi and the "
        "vhost-user-base devices never reconnect"),
    QemuDefect(
        "abort-on-log-start", "c1997099dc",
        "vhost: Do not abort on log-start error", (10, 1, 0),
        r"(refused to start logging|as logging started).*source QEMU "
        r"killed by signal 6",
        ("test_migrate_faults.py:MigrateFaults."
         "test_refused_logging_fails_the_migration",
         "test_migrate_faults.py:MigrateFaults."
         "test_backend_gone_at_log_start_fails_the_migration",
         "test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_migration_message_ends_cleanly"),
        "a back-end that fails or dies when logging starts (SET_LOG_BASE, "
        "SET_FEATURES with LOG_ALL, SET_VRING_ADDR with the log flag) "
        "makes QEMU abort() instead of failing the migration",
        backported_to=((10, 0, 13),)),
    QemuDefect(
        "migration-ignores-backend-crash", "bc85aae420",
        "vhost-user: return failure if backend crash when live migration",
        (10, 1, 0),
        r"died while QEMU stopped the rings.*migration completed",
        ("test_migrate_faults.py:MigrateFaults."
         "test_backend_gone_while_rings_stop_fails_the_migration",
         "test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_migration_message_ends_cleanly"),
        "a back-end that crashes while QEMU stops the rings: the migration "
        "is reported as successful and the destination resumes from ring "
        "positions nobody reported"),
    QemuDefect(
        "unplug-notifier-abort", "963b027645",
        "virtio/vhost-user: fix qemu abort when hotunplug vhost-user-net "
        "device", (9, 2, 0),
        r"signal 6 .*after the unplug of a vhost-user-net device",
        ("test_hotplug.py:Hotplug.test_unplug_after_a_host_notifier",),
        "device_del of a vhost-user-net device whose back-end sent "
        "host-notifier messages queues the notifier for RCU freeing twice; "
        "QEMU aborts"),
    QemuDefect(
        "unplug-skips-vhost-stop", "d72479b117",
        "hw/virtio: Fix the de-initialization of vhost-user devices",
        (9, 1, 0),
        r"the vhost device was never stopped",
        ("test_hotplug.py:Hotplug."
         "test_gpio_unplug_stops_the_device_and_it_plugs_again",),
        "virtio_device_should_start(vdev, 0) is true once a device started: "
        "the unrealize of vhost-user-base, -fs, -scmi, -vsock devices, "
        "which call their own set_status(0), skips vhost clean-up, and "
        "plugging the device again fails", introduced_in=(8, 0, 0)),
    QemuDefect(
        "status-reset-before-vring-base", "6f8be29ec1",
        "vhost-user: send SET_STATUS 0 after GET_VRING_BASE", (8, 1, 0),
        r"GET_VRING_BASE after SET_STATUS 0",
        ("test_status.py:Status.test_rings_stop_before_the_status_reset",),
        "with the STATUS protocol feature, stopping the device sends "
        "SET_STATUS 0 (a virtio reset) before GET_VRING_BASE: a back-end "
        "that resets as the status says loses the ring positions QEMU then "
        "asks for, and the migrated or restarted device resumes from the "
        "wrong place", introduced_in=(7, 2, 0)),
    QemuDefect(
        "blk-config-change-capacity-only", "f67d296b6e",
        "vhost-user-blk: simplify and fix "
        "vhost_user_blk_handle_config_change", (9, 0, 0),
        r"configuration change reached the guest without its geometry",
        ("test_backend_channel.py:BackendChannel."
         "test_every_field_of_a_change_reaches_the_guest",),
        "a back-end's CONFIG_CHANGE_MSG updates only the capacity the guest "
        "sees (\"valid for resize only\"): a resize that changes the "
        "geometry leaves the guest with the old geometry"),
    QemuDefect(
        "gpio-abort-without-config", "5ba587580d",
        "hw/virtio: derive vhost-user-gpio from vhost-user-base", (9, 0, 0),
        r"exited with signal 6 on a gpio back-end without CONFIG",
        ("test_devices.py:Devices.test_gpio_backend_without_config",),
        "a vhost-user-gpio back-end that does not offer CONFIG makes QEMU "
        "abort at start-up (vhost_dev_get_config: Assertion "
        "'hdev->vhost_ops' failed): the realize retry finds the device "
        "'connected' after vhost_dev_init failed and cleaned it up.  Fixed "
        "at the latest by the rewrite onto vhost-user-base (9.0), perhaps "
        "by daae36c13a (8.0); no 8.x build was run here to tell",
        introduced_in=(7, 2, 0)),
    QemuDefect(
        "vring-file-async-without-reply-ack", "1ba9a52203",
        "vhost-user: make vhost_set_vring_file() synchronous", OPEN,
        r"interrupt the back-end signalled while QEMU switched the call "
        r"fd.*REPLY_ACK negotiated: no",
        ("test_interrupts.py:Interrupts."
         "test_interrupt_while_the_call_fd_changes",),
        "the fix for lost interrupts (1ba9a52203, 10.2) waits for the "
        "back-end only when it offers REPLY_ACK: with a back-end that does "
        "not, SET_VRING_CALL stays asynchronous -- vhost_set_vring_file "
        "does not fall back on the GET_FEATURES barrier that "
        "vhost_user_write_sync uses for such back-ends -- and the guest's "
        "interrupt is still lost on unmask"),
    QemuDefect(
        "log-base-failure-ignored", "162bba7fa8",
        "vhost: do not assert() on vhost_ops failure", OPEN,
        r"as logging started \(SET_LOG_BASE\): migration completed",
        ("test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_migration_message_ends_cleanly",),
        "a back-end that does not accept the dirty log (its answer to "
        "SET_LOG_BASE is not SET_LOG_BASE's) does not stop the migration: "
        "vhost_dev_log_resize only logs 'vhost_set_log_base failed' and "
        "QEMU migrates as though the back-end marked the pages it writes -- "
        "pages it dirties may reach the destination stale",
        introduced_in=(2, 7, 0)),
    QemuDefect(
        "net-vring-base-failure-ignored", "bc85aae420",
        "vhost-user: return failure if backend crash when live migration",
        OPEN,
        r"(died|answered another request) while QEMU stopped the rings: "
        r"migration completed",
        ("test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_migration_message_ends_cleanly",),
        "the fix that fails a migration whose back-end cannot report the "
        "ring positions (bc85aae420, 10.1) does not reach virtio-net: "
        "vhost_net_stop_one ignores vhost_dev_stop's result, so a back-end "
        "that answers GET_VRING_BASE wrongly (or dies there, without "
        "DEVICE_STATE) lets the migration complete, and the destination "
        "resumes from the used index instead of the back-end's position"),
    QemuDefect(
        "interrupt-at-ring-start-discarded", "vhost_virtqueue_start",
        "/* Clear and discard previous events if any. */", OPEN,
        r"signalled as ring 0 started, before QEMU's SET_VRING_CALL: QEMU "
        r"discarded it",
        ("test_interrupts.py:Interrupts."
         "test_an_interrupt_as_the_ring_starts_reaches_the_guest",),
        "QEMU starts a ring with SET_VRING_KICK and only then hands over "
        "the guest's call fd (SET_VRING_CALL); what the back-end signalled "
        "in between, on the fd it had, is thrown away (and after "
        "RESET_DEVICE, which resets the rings, it has none).  A back-end that "
        "uses buffers at once -- the destination of a migration resuming a "
        "filled receive ring -- loses that interrupt, and with EVENT_IDX "
        "the queue stalls for good (seen as a guest that stops receiving "
        "after a migration).  libvhost-user works around it by signalling "
        "every new call fd", introduced_in=(2, 1, 0)),
    QemuDefect(
        "net-start-without-protocol-features", "bfc6cf31ce",
        "vhost-net: save & restore vring enable state", OPEN,
        r"could not start a back-end without protocol features",
        ("test_smoke.py:StartUp.test_backend_without_protocol_features",),
        "a vhost-user net back-end that does not offer "
        "VHOST_USER_F_PROTOCOL_FEATURES (legal: its rings start enabled) "
        "never starts: virtio-net's peer_attach records the rings as "
        "enabled, vhost_net_start then restores that with "
        "vhost_user_set_vring_enable, which returns -EINVAL without the "
        "bit, and QEMU says 'unable to start vhost net: 22: falling back "
        "on userspace virtio' (no data path at all)",
        introduced_in=(2, 7, 0)),
    QemuDefect(
        "postcopy-end-races-device-start", "468a7effde",
        "migration: Refactor all incoming cleanup info "
        "migration_incoming_destroy()", (10, 2, 0),
        r"(stalled as the postcopy memory table came|(died|answered another "
        r"request) as postcopy ended \(POSTCOPY_END\)): (HUNG|CRASHED)",
        ("test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_postcopy_message_ends_cleanly",),
        "a destination back-end slow to answer the postcopy memory table "
        "(a 1 s stall) wedges the migration for good: the postcopy listen "
        "thread sends POSTCOPY_END on the vhost-user socket while the main "
        "thread waits there for its ADD_MEM_REG answer, each reads the "
        "other's reply (\"send_add_regions: Received unexpected msg type. "
        "Expected 37 received 30\"), the device falls back to userspace "
        "and the destination never resumes; and a back-end that dies at "
        "POSTCOPY_END (sent from that thread), or answers it with another "
        "request's reply, leaves the source in postcopy-active for good, "
        "depending on timing (which step wedges moves with the machine's "
        "load and the guest's RAM size); on 10.0.13 the "
        "same steps end with the destination QEMU dying of SIGSEGV, or the "
        "source of SIGABRT (get_vhost_net: Assertion `vhost_net' failed), "
        "on quit -- taken for the same cause (the listen thread using the "
        "vhost-user device the main thread cleans up), not proven.  Since "
        "468a7effde the postcopy clean-up, POSTCOPY_END included, runs in "
        "the main thread, and none of it happens on 10.2.2"),
    QemuDefect(
        "get-shared-object-without-uuid", "1609476662",
        "vhost-user: add shared_object msg", OPEN,
        r"GET_SHARED_OBJECT carries no UUID",
        ("test_shared_objects.py:SharedObjects."
         "test_qemu_asks_the_exporter_for_the_object_by_its_uuid",),
        "vhost_user_get_shared_object copies the UUID into the message but "
        "never sets its size: only the 12-byte header goes out, and the "
        "exporting back-end cannot tell which object is asked for (a strict "
        "one refuses it and the lookup fails; libvhost-user reads whatever "
        "its buffer held)",
        introduced_in=(8, 2, 0)),
    QemuDefect(
        "shared-object-lookup-fd-lost", "1609476662",
        "vhost-user: add shared_object msg", OPEN,
        r"answered SHARED_OBJECT_LOOKUP without the object's fd",
        ("test_shared_objects.py:SharedObjects."
         "test_a_lookup_brings_the_exporters_object",),
        "the answer to SHARED_OBJECT_LOOKUP never carries the object: "
        "vhost_user_backend_handle_shared_object_lookup attaches the fd to "
        "the importer's main socket (qemu_chr_fe_set_msgfds) and answers "
        "on the back-end channel without it; the next write on the main "
        "socket replaces the pending fd, so the importer never gets the "
        "dma-buf and QEMU keeps one fd per lookup",
        introduced_in=(8, 2, 0)),
    QemuDefect(
        "postcopy-device-waits-forever", "7b842fe354",
        "migration: Introduce POSTCOPY_DEVICE state",
        OPEN,
        r"\(POSTCOPY_LISTEN\)[^:]*: HUNG: migration timed out \(Sibling "
        r"indicated error \d+\); source QEMU runs, finish-migrate",
        ("test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_postcopy_message_ends_cleanly",),
        "with a return path the source enters POSTCOPY_DEVICE and, once it "
        "has nothing left to send, waits in qemu_event_wait() for the "
        "destination's PONG that says the postcopy package loaded; a "
        "destination that fails loading it (its vhost-user back-end "
        "refuses POSTCOPY_LISTEN) sends SHUT with an error instead, which "
        "the return-path thread records without setting the event: the "
        "source's migration thread waits forever, the VM stopped "
        "(finish-migrate) on both sides.  Timing decides: the source must "
        "have sent everything before the destination fails (seen once, "
        "10.2.2 under TCG)",
        introduced_in=(10, 2, 0)),
    QemuDefect(
        "postcopy-return-path-pause-blocks-completion", "ef796ee93b",
        "migration: Replace the return path retry logic", (8, 2, 0),
        r"\(POSTCOPY_LISTEN\)[^:]*: HUNG: migration timed out; source QEMU "
        r"runs, finish-migrate",
        ("test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_postcopy_message_ends_cleanly",),
        "a destination back-end that breaks POSTCOPY_LISTEN (answers another "
        "request, seen on 7.2.22 under qtest) makes the destination fail "
        "loading the postcopy package and exit; the source's return-path "
        "thread reads the end of its channel and, the migration being in "
        "postcopy, pauses for a recovery (postcopy_pause_return_path_thread"
        ", waiting on a semaphore) instead of ending; a source that has "
        "already sent everything is in migration_completion, which joins "
        "that thread (await_return_path_close_on_source): the migration "
        "stays postcopy-active, the VM stopped (finish-migrate), for good.  "
        "Timing decides (the source must be done sending first).  Read in "
        "7.2's source; it fits what the test saw (postcopy-active, never "
        "postcopy-paused, after the destination exited), not proven with a "
        "stack.  Since ef796ee93b the thread ends on the error"),
    QemuDefect(
        "tcg-migration-loses-guest-writes", "03bfc2188f",
        "physmem: Fix migration dirty bitmap coherency with TCG memory "
        "access", (9, 0, 0),
        r"^(?!.*the source back-end wrote and logged it).*the destination's "
        r"RAM is not the source's after the migration",
        ("test_guest.py:GuestMigration.test_migrate_while_pinging",),
        "a live migration from a TCG guest loses some of the guest's own "
        "stores: the fast path of cpu_physical_memory_sync_dirty_bitmap() "
        "clears dirty bits of whole aligned ranges without resetting the "
        "TCG TLB's not-dirty entries, so a store through an entry still "
        "writable sets no dirty bit and its page is never sent again.  The "
        "suite's real guest, migrated while it pings, arrives with pages of "
        "the source's RAM missing -- pages the back-end never wrote (their "
        "comparison says so) -- and then loses a reply, sends a stale "
        "frame or oopses (list corruption); on 7.2.22 in about one run in "
        "four with four parallel tasks on two CPUs, never on 10.2.2 in 48"),
    QemuDefect(
        "backend-channel-half-message-blocks", "57dc02173c",
        "vhost-user: Convert slave channel to QIOChannelSocket",
        OPEN,
        r"QEMU's main loop stopped answering while a back-end request was "
        r"half sent",
        ("test_backend_channel.py:MalformedBackendRequests."
         "test_half_a_request_does_not_stop_qemu",),
        "backend_read() is a main-loop handler, yet it reads the rest of a "
        "back-end request with qio_channel_read_all() on a blocking socket: "
        "a back-end that sends a header and not the payload it announces "
        "stops QEMU's main loop -- QMP, the monitor, device emulation done "
        "there -- until it sends the rest, for as long as it likes (before "
        "57dc02173c a short read was an error)",
        introduced_in=(6, 0, 0)),
    QemuDefect(
        "ring-reset-not-forwarded", "562a7d23bf",
        "vhost: mask VIRTIO_F_RING_RESET for vhost and vhost-user devices",
        OPEN,
        r"reset queue 1 without telling the back-end",
        ("test_net_features.py:NetFeatures."
         "test_a_reset_queue_restarts_alone",),
        "a vhost-user net back-end that offers VIRTIO_F_RING_RESET has it "
        "negotiated with the guest (it is in vhost_net's user feature bits "
        "since 562a7d23bf), but virtio_net_queue_reset and "
        "virtio_net_queue_enable act for vhost-net (TAP) only: a queue the "
        "driver resets -- Linux does to resize a ring -- is never stopped "
        "in the back-end (no GET_VRING_BASE), which goes on with the old "
        "ring's addresses and position",
        introduced_in=(7, 2, 0)),
    QemuDefect(
        "postcopy-advise-failure-stops-source", "(not identified)",
        "gone by 10.0.13; the fix was not looked for", (10, 0, 0),
        r"as postcopy was advised \(POSTCOPY_ADVISE\): CRASHED: .*"
        r"did not quit",
        ("test_migration_fault_sweep.py:MigrationFaultSweep."
         "test_a_fault_at_each_postcopy_message_ends_cleanly",),
        "on 7.2 a destination back-end that fails POSTCOPY_ADVISE, when the "
        "source has already begun the switch-over (\"postcopy_start: "
        "Migration stream errored (pre package)\"), fails the migration "
        "but leaves the source VM stopped (postmigrate) and QEMU deaf to "
        "\"quit\" (killed after 10 s); timing decides; 10.0.13 and 10.2.2 "
        "fail such a migration with the source running"),
    QemuDefect(
        "crypto-session-leaks-qemu-address", "efbfeb8180",
        "cryptodev-vhost-user: add crypto session handler", OPEN,
        r"CREATE_CRYPTO_SESSION hands the back-end addresses of QEMU's own",
        ("test_crypto.py:CryptoSessions."
         "test_no_qemu_address_reaches_the_back_end",),
        "CREATE_CRYPTO_SESSION carries QEMU's own CryptoDevBackendSym"
        "SessionInfo, copied whole, pointers included: the back-end gets "
        "the address of QEMU's heap copy of the guest's key (offset 40 of "
        "the payload), which address-space randomisation is meant to hide "
        "from another process",
        introduced_in=(2, 12, 0)),
)}


def match(message: str, version: Version) -> Optional[QemuDefect]:
    """The known defect that ``message`` (a test's failure) shows on QEMU
    ``version``, if ``version`` is known to carry it."""
    for defect in DEFECTS.values():
        if defect.carried_by(version) and re.search(defect.signature,
                                                    message, re.S):
            return defect
    return None


def defects_for_test(test: str) -> List[QemuDefect]:
    """The defects a test (``file:Class.method``, or a longer id that ends
    so) was written for (one test may provoke several: the same symptom
    fixed for some back-ends and still open for others)."""
    return [defect for defect in DEFECTS.values()
            if any(test.endswith(t) or t in test for t in defect.tests)]
