"""
A conformance proxy between QEMU and a back-end, and its verdict asserted.

:func:`make_proxy` puts :class:`~avocado_vhost.vhost_user.proxy.Proxy`
in front of a back-end's socket for the test's life; :func:`check_proxy`
fails the test on a rule either side broke, unless the deviation is a
known defect of the QEMU under test or listed in the user's allow-list
(``-p backend_allow=FILE``, each entry with why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from avocado_vhost.checks import allowlist, triage
from avocado_vhost.peers.external import launch as external
from avocado_vhost.vhost_user.proxy import Proxy

if TYPE_CHECKING:
    from avocado_vhost.harness import Harness

__all__ = ["make_proxy", "check_proxy"]


def make_proxy(test: "Harness", name: str, backend_socket: str) -> Proxy:
    """A started proxy listening at ``<tmp>/<name>.sock`` in front of the
    back-end at ``backend_socket``; stopped, and its trace written beside
    the back-ends' (``<name>.trace.log``/``.json``, so the test's chart
    shows it), at tear-down."""
    proxy = Proxy(test.socket_path(name), backend_socket, name)
    proxy.start()
    test.proxies.append(proxy)

    def finish() -> None:
        proxy.stop()
        test.keep_trace(proxy.trace, proxy.describe())
    test.cleanup(finish)
    return proxy


def check_proxy(test: "Harness", proxy: Proxy) -> List[str]:
    """The proxy's verdict, asserted: fail on a problem of the proxy
    itself, and on any violation of either side that is neither a known
    defect of the QEMU under test (reported as found) nor listed in ``-p
    backend_allow=`` (logged with its reason).

    :return: the violations accepted, with why.
    """
    test.assertEqual(external.deaths(test), [],
                     "a back-end crashed during the scenario")
    test.assertEqual(proxy.errors, [], proxy.trace.tail(20))
    path = test.allow_list or test.param("backend_allow")
    entries = allowlist.load(path) if path else []  # AllowListError: ERROR
    accepted, broken = [], []
    for violation in proxy.violations:
        entry = allowlist.allowed(violation, entries)
        if entry is not None:
            accepted.append(f"{violation} (allowed: {entry.why})")
        elif triage.known_in_passing(test, violation):
            accepted.append(f"{violation} (a known QEMU defect)")
        else:
            broken.append(str(violation))
    for line in accepted:
        test.log.info("accepted deviation: %s", line)
    test.found.accepted_deviations.extend(accepted)
    test.assertEqual(broken, [], "rules broken through the proxy (list a "
                     "known deviation of the back-end with -p "
                     "backend_allow=FILE, with why)")
    return accepted
