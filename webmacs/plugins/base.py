"""What a plugin is: its channels, its driver, its catalogue entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


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
