"""What a plugin is: its channels, its driver, its catalogue entry; and the demo driver
the hardware plugins share. Plugin modules import from here, never from the package,
so the package can import them without a circle."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Channel:
    channel_id: str
    channel_name: str
    direction: str  # input | output | bidirectional
    unit: str
    min_value: float = 0.0
    max_value: float = 100.0

    def as_dict(self) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "channel_name": self.channel_name, "direction": self.direction,
                "unit": self.unit, "min_value": self.min_value, "max_value": self.max_value}


class Driver(Protocol):
    def read(self) -> dict[str, float]:
        """Current value of every readable channel, by channel_id."""


class Plugin:
    id: str = ""
    name: str = ""
    version: str = "0.1.0"
    vendor: str = "WebMACS"
    description: str = ""
    url: str | None = None
    # True: the channel set is per installation; any channel id may be mapped.
    dynamic_channels: bool = False

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

    @classmethod
    def has_channel(cls, channel_id: str) -> bool:
        return cls.dynamic_channels or any(ch.channel_id == channel_id for ch in cls.channels())


def clamp(value: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, value))


class DemoDriver:
    """Demo mode for any channel list: each input a slow sine plus noise inside its
    range, each output holds the last value written (its minimum at start)."""

    def __init__(self, channels: list[Channel], seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.channels = {ch.channel_id: ch for ch in channels}
        self.outputs = {ch.channel_id: ch.min_value for ch in channels if ch.direction != "input"}

    def read(self) -> dict[str, float]:
        t = time.monotonic() - self.t0
        values: dict[str, float] = {}
        for i, ch in enumerate(self.channels.values()):
            if ch.channel_id in self.outputs:
                values[ch.channel_id] = self.outputs[ch.channel_id]
                continue
            mid, half = (ch.min_value + ch.max_value) / 2, (ch.max_value - ch.min_value) / 2
            raw = mid + 0.4 * half * math.sin(t / (60.0 + 17 * i)) + self.rng.gauss(0.0, 0.02 * half)
            values[ch.channel_id] = round(clamp(raw, ch.min_value, ch.max_value), 3)
        return values

    def write(self, channel_id: str, value: float) -> None:
        ch = self.channels.get(channel_id)
        if ch is None or channel_id not in self.outputs:
            raise KeyError(f"{channel_id!r} is not an output channel")
        self.outputs[channel_id] = clamp(float(value), ch.min_value, ch.max_value)
