"""
Migration under traffic: no frame lost, none duplicated, rings resumed
where they stopped, and frames written during migration intact.

One claim per test over one story
(:func:`.scenarios.traffic.migrate_under_traffic`): frames flow both ways
before, during and after a live migration; the source leaves transmit work
in the ring, and writes received frames into guest buffers while QEMU
waits for its GET_VRING_BASE answer.  Negative controls run the same story
with a broken source back-end -- one that answers GET_VRING_BASE with 0,
one that does not log its writes -- and assert which finding each must
produce.
"""

from avocado_vhost.scenarios.traffic import (Finding, TrafficOptions,
                                             migrate_under_traffic)
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user.virtq import packed_base

#: transmitted by the source before the handoff: 20 + 5 of 12 + 2 of 3
TAKEN_BY_SOURCE = 20 + 5 + 2


class MigrateUnderTraffic(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,migration,datapath
    """

    def test_every_frame_crosses_exactly_once(self):
        """Every frame the guest sent came out once, every frame sent to
        the guest arrived intact, and the handoff broke no rule.

        :avocado: tags=quick
        """
        report = migrate_under_traffic(self)
        self.assertEqual(report.problems, [])

    def test_the_destination_resumes_mid_ring(self):
        """The source left transmit work behind; the destination resumed
        at the base the source reported and sent the rest."""
        report = migrate_under_traffic(self)
        self.assertEqual(report.resumed_tx_base, TAKEN_BY_SOURCE)
        self.assertEqual((report.tx_by_source, report.tx_by_destination),
                         (TAKEN_BY_SOURCE, 12 - 5 + 3 - 2 + 10))

    def test_frames_written_during_the_hold_arrive(self):
        """The source wrote 6 frames while QEMU waited for its answer;
        the guest has them on the destination (the dirty log carried
        them), and the destination delivered its own 6."""
        report = migrate_under_traffic(self)
        self.assertNotIn(Finding.RX_LOST, report.findings(), report.problems)
        self.assertEqual((report.rx_by_source, report.rx_by_destination),
                         (20 + 4 + 6, 6))

    def test_packed_rings_cross_exactly_once(self):
        """The same with packed virtqueues: the base carries positions and
        wrap counters."""
        report = migrate_under_traffic(self, TrafficOptions(packed=True))
        self.assertEqual(report.problems, [])
        self.assertEqual(report.resumed_tx_base,
                         packed_base(27, True, 27, True))

    def test_negative_control_base_zero(self):
        """A source that answers GET_VRING_BASE with 0: the destination
        replays the transmit ring, and the checks must say so."""
        report = migrate_under_traffic(
            self, TrafficOptions(src_base_override=0))
        self.log.info("negative control found: %s", report.problems)
        # QEMU itself refuses such a state on the destination ("VQ 0 size
        # 0x40 < last_avail_idx 0x0 - used_idx 0x1e"); a QEMU that took it
        # would replay the ring, and the duplicate check would fire.
        self.assertTrue(report.findings() & {Finding.MIGRATION_FAILED,
                                             Finding.TX_NOT_ONCE},
                        f"a replayed ring went unnoticed: {report.problems}")

    def test_negative_control_no_logging(self):
        """A source that does not log its writes: frames it wrote after
        their pages were sent are lost, and the checks must say so.

        :avocado: tags=quick
        """
        report = migrate_under_traffic(
            self, TrafficOptions(src_skips_logging=True))
        self.log.info("negative control found: %s", report.problems)
        self.assertIn(Finding.RX_LOST, report.findings(),
                      f"lost writes went unnoticed: {report.problems}")


if __name__ == "__main__":
    main()
