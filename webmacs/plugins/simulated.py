"""The bundled demo device: a drifting temperature, a noisy pressure and a toggling valve."""

from __future__ import annotations

import math
import random
import time
from typing import Any

from webmacs.plugins.base import Channel, Plugin


class SimulatedDriver:
    def __init__(self, config: dict[str, Any] | None = None, seed: int | None = None) -> None:
        config = config or {}
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.temperature = float(config.get("base_temperature", 21.0))
        self.valve = 0.0
        self.valve_period = float(config.get("valve_period_s", 30.0))
        self._next_toggle = self.t0 + self.valve_period

    def read(self) -> dict[str, float]:
        now = time.monotonic()
        # temperature: slow random walk around a daily-like sine
        self.temperature += self.rng.gauss(0.0, 0.02)
        drift = 2.0 * math.sin((now - self.t0) / 600.0)
        temperature = round(self.temperature + drift, 3)
        # pressure: around 1013.25 hPa with measurement noise
        pressure = round(1013.25 + self.rng.gauss(0.0, 0.8), 2)
        if now >= self._next_toggle:
            self.valve = 1.0 - self.valve
            self._next_toggle = now + self.valve_period
        return {"temperature": temperature, "pressure": pressure, "valve": self.valve}


class SimulatedPlugin(Plugin):
    id = "simulated"
    name = "Simulated Device"
    version = "0.1.0"
    vendor = "WebMACS"
    description = "Virtual sensors for demos and tests: drifting temperature, noisy pressure, toggling valve."

    @classmethod
    def channels(cls) -> list[Channel]:
        return [
            Channel("temperature", "Temperature", "input", "°C"),
            Channel("pressure", "Pressure", "input", "hPa"),
            Channel("valve", "Valve", "input", "state"),
        ]

    @classmethod
    def create_driver(cls, config: dict[str, Any] | None, demo_mode: bool) -> SimulatedDriver:
        return SimulatedDriver(config)
