"""Device plugins: classes registered under the ``webmacs.plugins`` entry-point group.

A plugin class describes its channels in code (``channels()``) and makes a
driver that reads them (``create_driver(config, demo_mode)``). The server uses
the descriptions to create channel mappings; the controller runs the drivers.
A driver has ``read() -> {channel_id: value}`` (a channel missing from the dict
has no reading this time) and, for plugins with outputs, ``write(channel_id,
value)``; ``close()`` is optional.

A plugin whose channel set depends on the installation (``dynamic_channels``,
e.g. the Revolution Pi: its IOs are whatever piCtory configured on the device)
lists no fixed channels; mappings for it are added by channel id.

The bundled plugins are ``simulated``, ``system`` and ``revpi``. A third-party
package adds its own with, in its setup.py::

    entry_points={"webmacs.plugins": ["my_device = my_pkg:MyDevicePlugin"]}
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from webmacs.plugins.base import Channel, DemoDriver, Driver, Plugin, clamp
from webmacs.plugins.revpi import RevPiPlugin
from webmacs.plugins.simulated import SimulatedPlugin
from webmacs.plugins.system import SystemPlugin

__all__ = ["BUNDLED", "Channel", "DemoDriver", "Driver", "Plugin", "available", "bundled", "clamp"]

log = logging.getLogger("webmacs.plugins")

BUNDLED = ("simulated", "system", "revpi")


def bundled() -> dict[str, type[Plugin]]:
    return {cls.id: cls for cls in (SimulatedPlugin, SystemPlugin, RevPiPlugin)}


def available() -> dict[str, type[Plugin]]:
    """Plugin classes by id: the bundled ones, plus the entry-point group."""
    found = bundled()
    for ep in entry_points(group="webmacs.plugins"):
        try:
            cls = ep.load()
        except Exception:  # noqa: BLE001 - a broken third-party plugin must not stop the server
            log.warning("cannot load plugin entry point %s", ep.name, exc_info=True)
            continue
        if isinstance(cls, type) and issubclass(cls, Plugin) and cls.id:
            found.setdefault(cls.id, cls)
    return found
