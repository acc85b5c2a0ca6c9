"""Device plugins: classes registered under the ``webmacs.plugins`` entry-point group.

A plugin class describes its channels in code (``channels()``) and makes a
driver that reads them (``create_driver(config, demo_mode)``). The server uses
the descriptions to create channel mappings; the controller runs the drivers.
A third-party package adds its own with, in its setup.py::

    entry_points={"webmacs.plugins": ["my_device = my_pkg:MyDevicePlugin"]}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

log = logging.getLogger("webmacs.plugins")


@dataclass(frozen=True)
class Channel:
    channel_id: str
    channel_name: str
    direction: str  # input | output | bidirectional
    unit: str


class Driver(Protocol):
    def read(self) -> dict[str, float]:
        """Current value of every input channel, by channel_id."""


class Plugin:
    id: str = ""
    name: str = ""
    version: str = "0.1.0"
    vendor: str = "WebMACS"
    description: str = ""
    url: str | None = None

    @classmethod
    def channels(cls) -> list[Channel]:
        raise NotImplementedError

    @classmethod
    def create_driver(cls, config: dict[str, Any] | None, demo_mode: bool) -> Driver:
        raise NotImplementedError

    @classmethod
    def meta(cls) -> dict[str, Any]:
        return {"id": cls.id, "name": cls.name, "version": cls.version, "vendor": cls.vendor,
                "description": cls.description, "url": cls.url}


def available() -> dict[str, type[Plugin]]:
    """Plugin classes by id: the entry-point group, plus the bundled ones."""
    from webmacs.plugins.simulated import SimulatedPlugin

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
