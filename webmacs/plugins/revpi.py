"""Revolution Pi: the piCtory process image, read and written as a file.

On a Revolution Pi the kernel driver exposes the process image as
``/dev/piControl0``: a byte array where every IO configured in piCtory lives at
a fixed offset. The piCtory configuration (JSON, ``/etc/revpi/config.rsc`` or,
on older images, ``/var/www/pictory/projects/_config.rsc``) says where: each
device has an ``offset`` in the image, and its ``inp``/``out`` entries are lists
``[name, default, bitLength, byte offset in the device, exported, sort, comment,
bitPosition]``. This driver reads that JSON and then uses plain ``pread`` /
``pwrite`` on the image, so it needs no hardware library and runs against any
file laid out the same way (the tests use one).

Channels are the IO names of piCtory (unique on a device); the plugin therefore
has ``dynamic_channels``: the server accepts any IO name as a channel id.
Values: a 1-bit IO reads 0/1; 8/16/32-bit IOs read as unsigned little-endian
integers. Writing a bit rewrites its byte (read, change the bit, write).

``config_json``: ``process_image`` (default ``/dev/piControl0``), ``config_path``
(default: the first piCtory file that exists), ``devices`` (optional list of
device names, piCtory "bmk", to include). Demo mode simulates the mapped IOs.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from webmacs.plugins.base import Channel, DemoDriver, Plugin

PROCESS_IMAGE = "/dev/piControl0"
CONFIG_PATHS = ("/etc/revpi/config.rsc", "/var/www/revpi/pictory/projects/_config.rsc",
                "/var/www/pictory/projects/_config.rsc")


@dataclass(frozen=True)
class IO:
    name: str
    direction: str  # input | output
    offset: int     # absolute byte offset in the process image
    bits: int
    bit: int        # bit position for 1-bit IOs

    @property
    def size(self) -> int:
        return max(1, (self.bits + 7) // 8)


def parse_config(config: dict[str, Any], devices: list[str] | None = None) -> dict[str, IO]:
    """The IOs of a piCtory configuration, by name."""
    ios: dict[str, IO] = {}
    for dev in config.get("Devices") or []:
        if devices and dev.get("bmk") not in devices:
            continue
        base = int(dev.get("offset") or 0)
        for section, direction in (("inp", "input"), ("out", "output")):
            for entry in (dev.get(section) or {}).values():
                if not isinstance(entry, list) or len(entry) < 4 or not entry[0]:
                    continue
                bits = int(entry[2])
                bit = int(entry[7]) if len(entry) > 7 and str(entry[7]).strip() != "" else 0
                ios[str(entry[0])] = IO(str(entry[0]), direction, base + int(entry[3]), bits, bit)
    return ios


def find_config(path: str | None) -> str:
    if path:
        return path
    for candidate in CONFIG_PATHS:
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError("no piCtory configuration found (tried " + ", ".join(CONFIG_PATHS) + ")")


class RevPiDriver:
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = config or {}
        path = find_config(config.get("config_path"))
        with open(path, encoding="utf-8") as fh:
            self.ios = parse_config(json.load(fh), config.get("devices"))
        self.path = str(config.get("process_image") or PROCESS_IMAGE)
        self.fd = os.open(self.path, os.O_RDWR)
        self.lock = threading.Lock()
        self.span = max((io.offset + io.size for io in self.ios.values()), default=0)

    def channels(self) -> list[Channel]:
        return [Channel(io.name, io.name, io.direction, "", 0.0, 1.0 if io.bits == 1 else float(2 ** io.bits - 1))
                for io in self.ios.values()]

    def read(self) -> dict[str, float]:
        with self.lock:
            image = os.pread(self.fd, self.span, 0)
        values: dict[str, float] = {}
        for io in self.ios.values():
            raw = image[io.offset:io.offset + io.size]
            if len(raw) < io.size:
                continue  # beyond the end of the image: no reading
            if io.bits == 1:
                values[io.name] = float((raw[0] >> io.bit) & 1)
            else:
                values[io.name] = float(int.from_bytes(raw, "little"))
        return values

    def write(self, channel_id: str, value: float) -> None:
        io = self.ios.get(channel_id)
        if io is None or io.direction != "output":
            raise KeyError(f"{channel_id!r} is not an output of this Revolution Pi")
        number = int(round(float(value)))
        with self.lock:
            if io.bits == 1:
                byte = os.pread(self.fd, 1, io.offset)[0]
                byte = byte | (1 << io.bit) if number else byte & ~(1 << io.bit)
                os.pwrite(self.fd, bytes([byte & 0xFF]), io.offset)
            else:
                number = max(0, min(number, 2 ** io.bits - 1))
                os.pwrite(self.fd, number.to_bytes(io.size, "little"), io.offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RevPiPlugin(Plugin):
    id = "revpi"
    name = "Revolution Pi"
    version = "0.2.0"
    vendor = "WebMACS"
    description = ("Direct hardware I/O via the piCtory process image (/dev/piControl0); "
                   "channels are the IO names configured in piCtory.")
    url = "https://revolutionpi.com/"
    dynamic_channels = True

    @classmethod
    def channels(cls) -> list[Channel]:
        return []  # per device: the IOs of its piCtory configuration

    @classmethod
    def create_driver(cls, config: dict[str, Any] | None, demo_mode: bool):
        if demo_mode:
            names = (config or {}).get("demo_channels") or []
            return DemoDriver([Channel(str(n), str(n), "input", "", 0.0, 1.0) for n in names])
        return RevPiDriver(config)
