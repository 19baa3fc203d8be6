"""
avocado-vhost: Avocado functional tests of QEMU's vhost-user front-end.

``avocado_vhost.vhost_user`` is the in-process back-end (and the
conformance proxy); ``avocado_vhost.qemu`` builds, launches and drives QEMU;
``avocado_vhost.guest`` is the real Linux guest (assets, console, the host
on its wire); ``avocado_vhost.dpdk`` drives DPDK's testpmd as a peer;
``avocado_vhost.chart`` draws message-sequence charts; ``python -m
avocado_vhost`` (``cli``) serves, proxies and charts from the command line;
``avocado_vhost.harness`` is the test harness and ``avocado_vhost.test`` the
tests' base class for the runner at hand (Avocado, or unittest/TAP as QEMU
runs tests).  The latter is
deliberately not imported here: importing ``avocado.Test`` subclasses from a
package ``__init__`` causes a circular import when Avocado loads plugins
(and this package is an Avocado plugin).
"""

__version__ = "0.4.0"

__all__ = ["__version__"]
