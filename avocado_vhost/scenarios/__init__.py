"""
Scenarios: what several tests do the same way, kept apart from the
assertions they make.

A scenario drives QEMU and the back-ends through one story and returns a
typed report; each test method then checks one claim of that report, so
that a test reads like the spec sentence it checks and a negative control
asserts on the same report the positive test does.

* :mod:`.memory` -- the back-end maps exactly the guest RAM QEMU has;
* :mod:`.migration` -- two VMs, two back-ends, a live migration, the dirty
  log and the ring handoff;
* :mod:`.traffic` -- frames both ways across a live migration, counted
  exactly once.
* :mod:`.proxied` -- a conformance proxy in front of a back-end, and its
  verdict asserted;
* :mod:`.server_mode` -- QEMU listens on the socket, the back-end connects
  and reconnects.

A scenario takes the test (:class:`avocado_vhost.harness.Harness`) for its
factories, waits and log; the harness does not import scenarios.
"""
