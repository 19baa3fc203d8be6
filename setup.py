"""Packaging for avocado-vhost.

``qemu.machine`` is deliberately not a dependency here: it is not on PyPI and
comes from QEMU's own source tree (see ``setup.sh``).
"""
from setuptools import find_packages, setup

setup(
    name="avocado-vhost",
    version="0.1.0",
    description="Avocado functional tests of QEMU's vhost-user front-end",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.9",
    packages=find_packages(include=["avocado_vhost", "avocado_vhost.*"]),
    install_requires=[
        "avocado-framework==113.0",
        "avocado-framework-plugin-varianter-yaml-to-mux==113.0",
        "qemu.qmp==0.0.6",
    ],
    license="GPL-2.0-or-later",
)
