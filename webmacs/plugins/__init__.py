"""Device plugins: classes registered under the ``webmacs.plugins`` entry-point group.

A plugin class describes its channels in code (``channels()``) and makes a
driver that reads them (``create_driver(config, demo_mode)``). The server uses
the descriptions to create channel mappings; the controller runs the drivers.
A third-party package adds its own with, in its setup.py::

    entry_points={"webmacs.plugins": ["my_device = my_pkg:MyDevicePlugin"]}
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from webmacs.plugins.base import Channel, Driver, Plugin
from webmacs.plugins.simulated import SimulatedPlugin

__all__ = ["Channel", "Driver", "Plugin", "available"]

log = logging.getLogger("webmacs.plugins")


def available() -> dict[str, type[Plugin]]:
    """Plugin classes by id: the entry-point group, plus the bundled ones."""
    found: dict[str, type[Plugin]] = {SimulatedPlugin.id: SimulatedPlugin}
    for ep in entry_points(group="webmacs.plugins"):
        try:
            cls = ep.load()
        except Exception:  # noqa: BLE001 - a broken third-party plugin must not stop the server
            log.warning("cannot load plugin entry point %s", ep.name, exc_info=True)
            continue
        if isinstance(cls, type) and issubclass(cls, Plugin) and cls.id:
            found[cls.id] = cls
    return found
