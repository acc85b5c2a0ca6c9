"""System Monitor: CPU, memory, disk, load and CPU temperature of the controller's host (psutil).

``config_json`` may set ``disk_path`` (default ``/``). A reading that the host
cannot give (no temperature sensor, no load average) is left out of ``read()``:
no value is made up. In demo mode the channels are simulated instead.
"""

from __future__ import annotations

import os
from typing import Any

from webmacs.plugins.base import Channel, DemoDriver, Plugin

GB = 1024 ** 3
# preferred psutil.sensors_temperatures() keys for the CPU, in order
TEMP_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal", "acpitz")


class SystemDriver:
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        import psutil

        self.psutil = psutil
        self.disk_path = str((config or {}).get("disk_path") or "/")
        psutil.cpu_percent(interval=None)  # prime: the first call compares against nothing

    def cpu_temp(self) -> float | None:
        read = getattr(self.psutil, "sensors_temperatures", None)
        if read is None:
            return None
        try:
            sensors = read() or {}
        except (OSError, RuntimeError):
            return None
        names = [n for n in TEMP_SENSORS if sensors.get(n)] or [n for n, entries in sensors.items() if entries]
        for name in names:
            for entry in sensors[name]:
                if entry.current is not None and entry.current > 0:
                    return round(float(entry.current), 1)
        return None

    def read(self) -> dict[str, float]:
        ps = self.psutil
        mem = ps.virtual_memory()
        values = {
            "cpu_percent": float(ps.cpu_percent(interval=None)),
            "memory_percent": float(mem.percent),
            "memory_used_gb": round(mem.used / GB, 3),
        }
        try:
            disk = ps.disk_usage(self.disk_path)
            values["disk_percent"] = float(disk.percent)
            values["disk_used_gb"] = round(disk.used / GB, 3)
        except OSError:
            pass
        try:
            values["load_avg_1m"] = round(float(os.getloadavg()[0]), 3)
        except (AttributeError, OSError):
            pass
        temp = self.cpu_temp()
        if temp is not None:
            values["cpu_temp"] = temp
        return values


class SystemPlugin(Plugin):
    id = "system"
    name = "System Monitor"
    version = "0.2.0"
    vendor = "WebMACS"
    description = "CPU, memory, disk and temperature monitoring."

    @classmethod
    def channels(cls) -> list[Channel]:
        return [
            Channel("cpu_percent", "CPU Usage", "input", "%", 0.0, 100.0),
            Channel("memory_percent", "Memory Usage", "input", "%", 0.0, 100.0),
            Channel("memory_used_gb", "Memory Used", "input", "GB", 0.0, 1024.0),
            Channel("disk_percent", "Disk Usage", "input", "%", 0.0, 100.0),
            Channel("disk_used_gb", "Disk Used", "input", "GB", 0.0, 100000.0),
            Channel("load_avg_1m", "Load Average (1 min)", "input", "", 0.0, 256.0),
            Channel("cpu_temp", "CPU Temperature", "input", "°C", 0.0, 120.0),
        ]

    @classmethod
    def create_driver(cls, config: dict[str, Any] | None, demo_mode: bool):
        if demo_mode:
            return DemoDriver(cls.channels())
        return SystemDriver(config)
