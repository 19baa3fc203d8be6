"""Packaging shim: everything is declared in ``pyproject.toml`` (metadata,
dependencies, the Avocado plugin entry points).  ``qemu.machine`` is not a
dependency: it is not on PyPI and comes from QEMU's own source tree (see
``setup.sh``)."""
from setuptools import setup

setup()
