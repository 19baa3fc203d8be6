"""
What judges a test's results beyond its own assertions: guest memory as
both sides see it (:mod:`.guestmem`), the ring handoff across a migration
(:mod:`.handoff`), the dirty-log messages of a migration
(:mod:`.migration_log`), the allow-list of a back-end's known deviations
(:mod:`.allowlist`), QEMU's known defects and what a failure means
(:mod:`.known_defects`, :mod:`.triage`), and what a test found beyond its
verdict (:mod:`.found`).
"""
