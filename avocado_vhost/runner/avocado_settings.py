"""
The suite's Avocado settings plugin (``avocado.plugins.settings``): reads
``<venv>/etc/avocado-vhost.conf`` when it exists, the settings
``./setup.sh`` chose for this machine -- twice as many parallel tasks as
CPUs, because the suite's tests mostly wait (on QEMU, on a guest under
TCG) and Avocado spends about half a second starting each one.

The file comes after the system's configuration and before the user's
(``~/.config/avocado/avocado.conf``), which wins, as the command line
does; another environment (QEMU's own venv) has no such file.

A module of its own: Avocado loads settings plugins while it builds its
settings object, before :mod:`avocado.core.settings` can be imported (the
other plugins, :mod:`.avocado_plugin`, import it).
"""

from __future__ import annotations

import os
import sys
from typing import List

from avocado.core.plugin_interfaces import Settings

__all__ = ["VhostSettings", "machine_config"]


def machine_config() -> str:
    """Where ``./setup.sh`` writes the settings it chose for this machine:
    inside the environment the suite runs from."""
    return os.path.join(sys.prefix, "etc", "avocado-vhost.conf")


class VhostSettings(Settings):
    """Add the machine's settings written by ``./setup.sh``."""

    name = "vhost"
    description = "avocado-vhost: the settings ./setup.sh chose (parallel tasks)"

    def adjust_settings_paths(self, paths: List[str]) -> None:
        path = machine_config()
        if os.path.exists(path):
            paths.append(path)
