"""
avocado-vhost: Avocado functional tests of QEMU's vhost-user front-end.

The layout is the architecture::

    test.py harness.py       the test's life: the base class for the runner
    params.py errors.py      at hand, parameters, how a test ends
    vhost_user/ virtio/      the vhost-user library (back-end, protocol core,
                             proxy) and virtio's numbers
    peers/                   what tests run against or beside: qemu/,
                             guest/, dpdk, external/ back-ends
    checks/                  what judges results: guest memory, ring
                             handoff, migration log, known QEMU defects
    scenarios/               stories several tests share
    fuzz/                    the hostile front-end, for back-end authors
    runner/                  Avocado and unittest/TAP glue, the plugins
    plumbing/                what every test process needs: temp dirs, a
                             watchdog, the clock of its phases
    tools/                   benchmarks' helper, charts, a standalone VM
    cli.py                   ``python -m avocado_vhost``: serve, proxy,
                             chart, fuzz

``avocado_vhost.test`` is deliberately not imported here: importing
``avocado.Test`` subclasses from a package ``__init__`` causes a circular
import when Avocado loads plugins (and this package is an Avocado plugin).
"""

__version__ = "0.4.0"

__all__ = ["__version__"]
