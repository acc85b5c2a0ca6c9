"""The bundled demo device: a small reactor rig with the channel ids WebMACS installations use.

Inputs drift (a random walk around a slow sine) with measurement noise, always
inside their range; the two outputs hold the last value written to them.
``config_json`` may set ``seed`` (a reproducible run).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from webmacs.plugins.base import Channel, Plugin, clamp

# channel, name, unit, range, (base, sine amplitude, walk step, noise, period in s)
_INPUTS = (
    ("temp_reactor", "Reactor Temperature", "°C", 20.0, 500.0, (180.0, 25.0, 0.4, 0.8, 600.0)),
    ("temp_inlet", "Inlet Temperature", "°C", 15.0, 200.0, (60.0, 8.0, 0.15, 0.3, 480.0)),
    ("temp_outlet", "Outlet Temperature", "°C", 15.0, 300.0, (120.0, 15.0, 0.25, 0.5, 540.0)),
    ("pressure_chamber", "Chamber Pressure", "bar", 0.0, 6.0, (1.2, 0.3, 0.005, 0.02, 300.0)),
    ("pressure_diff", "Differential Pressure", "mbar", 0.0, 100.0, (25.0, 6.0, 0.2, 0.8, 240.0)),
    ("volume_flow", "Volume Flow", "m³/h", 0.0, 40.0, (12.0, 3.0, 0.05, 0.3, 360.0)),
    ("humidity", "Humidity", "%", 0.0, 100.0, (45.0, 8.0, 0.1, 0.6, 900.0)),
)
_OUTPUTS = (
    ("heater_power", "Heater Power", "%", 0.0, 100.0),
    ("valve_position", "Valve Position", "%", 0.0, 100.0),
)


class SimulatedDriver:
    def __init__(self, config: dict[str, Any] | None = None, seed: int | None = None) -> None:
        config = config or {}
        self.rng = random.Random(config.get("seed", seed))
        self.t0 = time.monotonic()
        self.walk = {cid: 0.0 for cid, *_ in _INPUTS}
        self.outputs = {cid: lo for cid, _n, _u, lo, _hi in _OUTPUTS}

    def read(self) -> dict[str, float]:
        t = time.monotonic() - self.t0
        values: dict[str, float] = {}
        for cid, _name, _unit, lo, hi, (base, amp, step, noise, period) in _INPUTS:
            # a bounded random walk (pulled back towards 0) on top of a slow sine
            self.walk[cid] = 0.98 * self.walk[cid] + self.rng.gauss(0.0, step)
            raw = base + amp * math.sin(2 * math.pi * t / period) + self.walk[cid] + self.rng.gauss(0.0, noise)
            values[cid] = round(clamp(raw, lo, hi), 3)
        values.update(self.outputs)
        return values

    def write(self, channel_id: str, value: float) -> None:
        for cid, _name, _unit, lo, hi in _OUTPUTS:
            if cid == channel_id:
                self.outputs[cid] = clamp(float(value), lo, hi)
                return
        raise KeyError(f"{channel_id!r} is not an output channel")


class SimulatedPlugin(Plugin):
    id = "simulated"
    name = "Simulated Device"
    version = "0.2.0"
    vendor = "WebMACS"
    description = ("Virtual sensors and actuators for demos and tests: reactor, inlet and outlet temperatures, "
                   "pressures, flow and humidity that drift with noise; heater and valve outputs.")

    @classmethod
    def channels(cls) -> list[Channel]:
        return [Channel(cid, name, "input", unit, lo, hi) for cid, name, unit, lo, hi, _ in _INPUTS] + \
               [Channel(cid, name, "output", unit, lo, hi) for cid, name, unit, lo, hi in _OUTPUTS]

    @classmethod
    def create_driver(cls, config: dict[str, Any] | None, demo_mode: bool) -> SimulatedDriver:
        return SimulatedDriver(config)
