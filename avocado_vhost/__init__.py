"""
avocado-vhost: Avocado functional tests of QEMU's vhost-user front-end.

``avocado_vhost.vhost_user`` is the in-process back-end; ``avocado_vhost.qemu``
builds, launches and drives QEMU; ``avocado_vhost.test`` holds the Avocado
base classes.  The latter is deliberately not imported here: importing
``avocado.Test`` subclasses from a package ``__init__`` causes a circular
import when Avocado loads plugins.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
