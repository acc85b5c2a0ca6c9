"""Bundled plugins (simulated, system, revpi), channel mapping rules, plugin packages
(a real wheel built here, uploaded, listed, uninstalled) and the controller installing
an uploaded package and streaming the simulated channels with no mapping made by hand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import zipfile
from pathlib import Path

import pytest

from tests.conftest import make_settings, wait_for
from tests.test_controller import controller_env, count_rows, start_controller, stop_controller
from webmacs.plugins import available
from webmacs.plugins.revpi import RevPiDriver, RevPiPlugin
from webmacs.plugins.simulated import SimulatedDriver
from webmacs.plugins.system import SystemDriver, SystemPlugin

SIMULATED = {
    "temp_reactor": ("input", "°C", 20, 500), "temp_inlet": ("input", "°C", 15, 200),
    "temp_outlet": ("input", "°C", 15, 300), "pressure_chamber": ("input", "bar", 0, 6),
    "pressure_diff": ("input", "mbar", 0, 100), "volume_flow": ("input", "m³/h", 0, 40),
    "humidity": ("input", "%", 0, 100), "heater_power": ("output", "%", 0, 100),
    "valve_position": ("output", "%", 0, 100),
}
SYSTEM = ["cpu_percent", "memory_percent", "memory_used_gb", "disk_percent", "disk_used_gb", "load_avg_1m",
          "cpu_temp"]
MB = 1024 * 1024


@pytest.fixture
def server_settings(database_url, tmp_path):
    return make_settings(database_url, WEBMACS_PLUGIN_PACKAGES_DIR=str(tmp_path / "packages"),
                         WEBMACS_PLUGIN_MAX_UPLOAD_MB=1)


def res(resp) -> dict:
    """The resource a write answered with (at the top level, or apart under "data")."""
    body = resp.json
    return body["data"] if isinstance(body.get("data"), dict) else body


# --- a real wheel, written by the wheel spec (PEP 427) -------------------------------------

PLUGIN_SOURCE = '''
from webmacs.plugins import Channel, Plugin


class EchoDriver:
    def read(self):
        return {"level": 42.5}


class EchoPlugin(Plugin):
    id = "echo-sensor"
    name = "Echo Sensor"
    version = "1.0.0"
    vendor = "Tests"

    @classmethod
    def channels(cls):
        return [Channel("level", "Level", "input", "mm", 0.0, 100.0)]

    @classmethod
    def create_driver(cls, config, demo_mode):
        return EchoDriver()
'''


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(folder: Path, name: str = "webmacs-plugin-echo", version: str = "1.0.0",
                entry_points: str | None = "[webmacs.plugins]\necho-sensor = webmacs_plugin_echo:EchoPlugin\n",
                metadata: bool = True, padding: int = 0) -> Path:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {"webmacs_plugin_echo/__init__.py": PLUGIN_SOURCE.encode()}
    if padding:
        files["webmacs_plugin_echo/blob.bin"] = os.urandom(padding)
    if metadata:
        files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points is not None:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if padding else zipfile.ZIP_DEFLATED) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def multipart(file_name: str, data: bytes, field: str = "file") -> tuple[bytes, dict]:
    boundary = "----webmacs-test-" + hashlib.sha1(data).hexdigest()[:16]
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def upload(server, path: Path | None = None, *, name: str | None = None, data: bytes | None = None,
                 token: str | None = "admin"):
    data = path.read_bytes() if data is None else data
    body, headers = multipart(name or path.name, data)
    return await server.request("POST", "/api/v1/plugins/packages/upload", raw=body, headers=headers, token=token)


# --- the catalogue ---------------------------------------------------------------------------

async def test_available_lists_bundled_plugins_with_channels(server):
    resp = await server.request("GET", "/api/v1/plugins/available")
    assert resp.code == 200
    plugins = {p["id"]: p for p in resp.json}
    assert {"simulated", "system", "revpi"} <= set(plugins)
    assert (plugins["simulated"]["name"], plugins["system"]["name"], plugins["revpi"]["name"]) == (
        "Simulated Device", "System Monitor", "Revolution Pi")
    for p in plugins.values():
        assert {"id", "name", "version", "vendor", "description", "url"} <= set(p)
    sim = {c["channel_id"]: (c["direction"], c["unit"], c["min_value"], c["max_value"])
           for c in plugins["simulated"]["channels"]}
    assert sim == SIMULATED
    assert [c["channel_id"] for c in plugins["system"]["channels"]] == SYSTEM
    assert plugins["revpi"]["channels"] == [] and plugins["revpi"]["dynamic_channels"] is True
    assert (await server.request("GET", "/api/v1/plugins/available", token=None)).code == 401


def test_entry_points_register_the_bundled_plugins():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="webmacs.plugins")}
    assert names["simulated"] == "webmacs.plugins.simulated:SimulatedPlugin"
    assert names["system"] == "webmacs.plugins.system:SystemPlugin"
    assert names["revpi"] == "webmacs.plugins.revpi:RevPiPlugin"
    assert set(available()) >= {"simulated", "system", "revpi"}


# --- drivers ---------------------------------------------------------------------------------

def test_simulated_driver_drifts_inside_ranges_and_outputs_hold():
    driver = SimulatedDriver({"seed": 7})
    reads = [driver.read() for _ in range(300)]
    assert set(reads[0]) == set(SIMULATED)
    for channel, (_d, _u, lo, hi) in SIMULATED.items():
        values = [r[channel] for r in reads]
        assert all(lo <= v <= hi for v in values), channel
        if SIMULATED[channel][0] == "input":
            assert len(set(values)) > 10, channel  # noisy, not constant
    assert reads[-1]["heater_power"] == 0.0
    driver.write("heater_power", 62.5)
    driver.write("valve_position", 250)  # clamped to the range
    later = [driver.read() for _ in range(5)]
    assert all(r["heater_power"] == 62.5 and r["valve_position"] == 100.0 for r in later)
    with pytest.raises(KeyError):
        driver.write("temp_reactor", 1.0)


def test_system_driver_reads_the_host_and_never_fakes_a_temperature(monkeypatch):
    import psutil

    driver = SystemDriver({"disk_path": "/"})
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)  # a host without sensors
    values = driver.read()
    assert set(SYSTEM) - {"cpu_temp"} <= set(values) and "cpu_temp" not in values
    assert 0 <= values["cpu_percent"] <= 100 and 0 < values["memory_percent"] <= 100
    assert values["memory_used_gb"] > 0 and 0 < values["disk_percent"] <= 100
    assert values["load_avg_1m"] == pytest.approx(os.getloadavg()[0], abs=5)

    class Temp:
        def __init__(self, current):
            self.current = current

    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {"acpitz": [Temp(40.0)],
                                                                 "coretemp": [Temp(51.25)]}, raising=False)
    assert driver.read()["cpu_temp"] == 51.2  # coretemp preferred, rounded to 0.1
    demo = SystemPlugin.create_driver(None, demo_mode=True).read()
    assert set(demo) == set(SYSTEM)


def _pictory(tmp_path: Path) -> tuple[Path, Path]:
    """A piCtory configuration (a base module and a DIO at offset 11) and a process image file."""
    config = {
        "App": {"name": "PiCtory", "version": "2.0"},
        "Devices": [
            {"bmk": "RevPi Core", "type": "BASE", "offset": 0,
             "inp": {"0": ["RevPiStatus", "0", "8", "0", True, "0000", "", ""],
                     "1": ["Core_Temperature", "0", "8", "3", True, "0001", "", ""]},
             "out": {"0": ["RevPiLED", "0", "16", "6", True, "0002", "", ""]}},
            {"bmk": "DIO", "type": "LEFT_RIGHT", "offset": 11,
             "inp": {"0": ["I_1", "0", "1", "0", True, "0000", "", "0"],
                     "1": ["I_2", "0", "1", "0", True, "0001", "", "1"],
                     "2": ["AnalogIn", "0", "16", "2", True, "0002", "", ""]},
             "out": {"0": ["O_1", "0", "1", "4", True, "0003", "", "0"],
                     "1": ["O_3", "0", "1", "4", True, "0004", "", "2"],
                     "2": ["Pwm", "0", "8", "5", True, "0005", "", ""]}},
        ],
    }
    cfg = tmp_path / "config.rsc"
    cfg.write_text(json.dumps(config))
    image = bytearray(64)
    image[3] = 47                                 # Core_Temperature
    image[11] = 0b10                              # I_1 = 0, I_2 = 1
    image[13:15] = struct.pack("<H", 40000)       # AnalogIn
    img = tmp_path / "piControl0"
    img.write_bytes(bytes(image))
    return cfg, img


def test_revpi_driver_reads_and_writes_the_process_image(tmp_path):
    cfg, img = _pictory(tmp_path)
    driver = RevPiPlugin.create_driver({"config_path": str(cfg), "process_image": str(img)}, demo_mode=False)
    try:
        values = driver.read()
        assert values == {"RevPiStatus": 0.0, "Core_Temperature": 47.0, "RevPiLED": 0.0, "I_1": 0.0, "I_2": 1.0,
                          "AnalogIn": 40000.0, "O_1": 0.0, "O_3": 0.0, "Pwm": 0.0}
        assert {c.channel_id: c.direction for c in driver.channels()}["O_1"] == "output"
        driver.write("O_3", 1)
        driver.write("O_1", 1)
        driver.write("O_1", 0)
        driver.write("Pwm", 300)  # clamped to 8 bits
        driver.write("RevPiLED", 0x1234)
        raw = img.read_bytes()
        assert raw[15] == 0b100 and raw[16] == 255 and raw[6:8] == b"\x34\x12"
        assert driver.read()["O_3"] == 1.0
        with pytest.raises(KeyError):
            driver.write("I_1", 1)
    finally:
        driver.close()
    only_dio = RevPiDriver({"config_path": str(cfg), "process_image": str(img), "devices": ["DIO"]})
    try:
        assert set(only_dio.read()) == {"I_1", "I_2", "AnalogIn", "O_1", "O_3", "Pwm"}
    finally:
        only_dio.close()
    with pytest.raises(FileNotFoundError):
        RevPiDriver({"config_path": str(tmp_path / "missing.rsc"), "process_image": str(img)})


# --- instances and channel mappings -------------------------------------------------------------

async def test_channel_mapping_rules(server):
    sim = await server.request("POST", "/api/v1/plugins", {"plugin_id": "simulated", "instance_name": "Rig",
                                                           "auto_create_events": False})
    assert sim.code == 201, sim
    inst = res(sim)
    assert len(inst["channel_mappings"]) == 9
    assert all(m["event_public_id"] is None for m in inst["channel_mappings"])
    assert (await server.request("GET", "/api/v1/events")).json["total"] == 0
    pid = inst["public_id"]
    body = {"channel_id": "custom_sensor", "channel_name": "Custom", "direction": "input", "unit": "mV"}
    unknown = await server.request("POST", f"/api/v1/plugins/{pid}/channels", body)
    assert unknown.code == 422 and unknown.json["detail"].startswith("channel_id"), unknown
    dup = await server.request("POST", f"/api/v1/plugins/{pid}/channels",
                               {"channel_id": "humidity", "channel_name": "Hum", "direction": "input", "unit": "%"})
    assert dup.code == 409 and "humidity" in dup.json["detail"], dup
    humidity = next(m for m in inst["channel_mappings"] if m["channel_id"] == "humidity")
    assert (await server.request("DELETE", f"/api/v1/plugins/{pid}/channels/{humidity['public_id']}")).code == 200
    again = await server.request("POST", f"/api/v1/plugins/{pid}/channels",
                                 {"channel_id": "humidity", "channel_name": "Hum", "direction": "input", "unit": "%"})
    assert again.code == 201, again
    # a Revolution Pi maps its piCtory IO names, once each
    rev = res(await server.request("POST", "/api/v1/plugins", {"plugin_id": "revpi", "instance_name": "Cabinet"}))
    assert rev["channel_mappings"] == []
    io = {"channel_id": "I_1", "channel_name": "Door", "direction": "input", "unit": ""}
    empty = await server.request("POST", f"/api/v1/plugins/{rev['public_id']}/channels", io)
    assert empty.code == 422 and empty.json["detail"].startswith("unit:"), empty  # ChannelMappingCreate: 1-50
    io["unit"] = "u" * 51
    long = await server.request("POST", f"/api/v1/plugins/{rev['public_id']}/channels", io)
    assert long.code == 422 and long.json["detail"].startswith("unit:"), long
    io["unit"] = "state"
    assert (await server.request("POST", f"/api/v1/plugins/{rev['public_id']}/channels", io)).code == 201
    assert (await server.request("POST", f"/api/v1/plugins/{rev['public_id']}/channels", io)).code == 409
    viewer = await server.create_user("viewer")
    assert (await server.request("POST", f"/api/v1/plugins/{rev['public_id']}/channels",
                                 dict(io, channel_id="I_2"), token=viewer)).code == 403


async def test_auto_created_events_are_unique_per_instance(server):
    first = res(await server.request("POST", "/api/v1/plugins", {"plugin_id": "system", "instance_name": "Lab PC"}))
    second = res(await server.request("POST", "/api/v1/plugins", {"plugin_id": "system", "instance_name": "Lab PC"}))
    ids = [m["event_public_id"] for m in first["channel_mappings"] + second["channel_mappings"]]
    assert len(ids) == 14 and len(set(ids)) == 14 and all(ids)
    names = {e["name"] for e in (await server.request("GET", "/api/v1/events?page_size=100")).json["data"]}
    assert {"Lab PC CPU Usage", "Lab PC CPU Usage (2)"} <= names


# --- plugin packages ----------------------------------------------------------------------------

async def test_package_upload_list_and_uninstall(server, tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    operator = await server.create_user("operator")
    assert (await upload(server, wheel, token=operator)).code == 403
    assert (await upload(server, wheel, token=None)).code == 401

    resp = await upload(server, wheel)
    assert resp.code == 201, resp
    assert resp.json["status"] == "success"
    assert resp.json["message"] == (f"Plugin package 'webmacs-plugin-echo' v1.0.0 installed "
                                    f"({wheel.stat().st_size:,} bytes). Restart the controller to activate.")
    pkg = res(resp)
    assert (pkg["package_name"], pkg["version"], pkg["plugin_ids"], pkg["source"], pkg["removable"]) == (
        "webmacs-plugin-echo", "1.0.0", ["echo-sensor"], "uploaded", True)
    assert pkg["file_size_bytes"] == wheel.stat().st_size
    stored = Path(server.services.config.plugin_packages_dir) / wheel.name
    assert stored.read_bytes() == wheel.read_bytes()
    assert [p.name for p in stored.parent.iterdir()] == [wheel.name]  # no temporary file left

    listing = await server.request("GET", "/api/v1/plugins/packages", token=operator)
    assert listing.code == 200
    by_name = {p["package_name"]: p for p in listing.json}
    assert by_name["webmacs"]["source"] == "bundled" and by_name["webmacs"]["removable"] is False
    assert set(by_name["webmacs"]["plugin_ids"]) >= {"simulated", "system", "revpi"}
    assert by_name["webmacs-plugin-echo"]["public_id"] == pkg["public_id"]
    for p in listing.json:
        assert {"public_id", "package_name", "version", "source", "plugin_ids", "file_size_bytes",
                "installed_on", "removable"} <= set(p)
    avail = {p["id"] for p in (await server.request("GET", "/api/v1/plugins/available")).json}
    assert "echo-sensor" in avail

    # the same package again, or the same file under another name: 409
    assert (await upload(server, wheel)).code == 409
    # the download controllers use
    dl = await server.request("GET", f"/api/v1/plugins/packages/{pkg['public_id']}/download", token=operator)
    assert dl.code == 200 and dl.body == wheel.read_bytes()
    assert hashlib.sha256(dl.body).hexdigest() == pkg["sha256"]

    # uninstall: bundled refused, uploaded removed (row and file), then 404
    assert (await server.request("DELETE", f"/api/v1/plugins/packages/{by_name['webmacs']['public_id']}")).code == 400
    assert (await server.request("DELETE", f"/api/v1/plugins/packages/{pkg['public_id']}",
                                 token=operator)).code == 403
    gone = await server.request("DELETE", f"/api/v1/plugins/packages/{pkg['public_id']}")
    assert gone.code == 200, gone
    assert not stored.exists()
    assert (await server.request("DELETE", f"/api/v1/plugins/packages/{pkg['public_id']}")).code == 404
    names = {p["package_name"] for p in (await server.request("GET", "/api/v1/plugins/packages")).json}
    assert "webmacs-plugin-echo" not in names
    # /plugins/{id} did not swallow /plugins/packages
    assert (await server.request("GET", "/api/v1/plugins/packages")).json[0]["source"] == "bundled"


@pytest.mark.parametrize("case,status,detail", [
    ("not_whl", 400, ".whl"),
    ("not_zip", 422, "ZIP"),
    ("no_metadata", 422, "METADATA"),
    ("no_entry_points", 422, "webmacs.plugins"),
    ("other_group", 422, "webmacs.plugins"),
    ("bundled_id", 409, "simulated"),
    ("no_file_field", 400, "'file'"),
    ("not_multipart", 400, "multipart"),
])
async def test_package_upload_is_validated(server, tmp_path, case, status, detail):
    dist = tmp_path / "dist"
    if case == "not_whl":
        resp = await upload(server, name="plugin.zip", data=build_wheel(dist).read_bytes())
    elif case == "not_zip":
        resp = await upload(server, name="webmacs_plugin_echo-1.0.0-py3-none-any.whl", data=b"not a zip" * 100)
    elif case == "no_metadata":
        resp = await upload(server, build_wheel(dist, metadata=False))
    elif case == "no_entry_points":
        resp = await upload(server, build_wheel(dist, entry_points=None))
    elif case == "other_group":
        resp = await upload(server, build_wheel(dist, entry_points="[console_scripts]\necho = x:y\n"))
    elif case == "bundled_id":
        resp = await upload(server, build_wheel(dist, entry_points="[webmacs.plugins]\nsimulated = x:Y\n"))
    elif case == "no_file_field":
        body, headers = multipart("x.whl", build_wheel(dist).read_bytes(), field="upload")
        resp = await server.request("POST", "/api/v1/plugins/packages/upload", raw=body, headers=headers)
    else:
        resp = await server.request("POST", "/api/v1/plugins/packages/upload", raw=build_wheel(dist).read_bytes(),
                                    headers={"Content-Type": "application/octet-stream"})
    assert resp.code == status, resp
    assert detail in resp.json["detail"], resp
    assert (await server.request("GET", "/api/v1/plugins/packages")).json[-1]["source"] == "bundled"
    folder = Path(server.services.config.plugin_packages_dir)
    assert not folder.exists() or list(folder.iterdir()) == []  # nothing kept


async def test_package_upload_size_limit(server, tmp_path):
    # just over the 1 MB limit: streamed to the end, refused, nothing kept
    resp = await upload(server, build_wheel(tmp_path / "a", padding=MB + 10))
    assert resp.code == 413 and "1 MB" in resp.json["detail"], resp
    # far over: refused from Content-Length before the body is read
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, family=socket.AF_INET)
    try:
        writer.write((f"POST /api/v1/plugins/packages/upload HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {server.admin_token}\r\n"
                      "Content-Type: multipart/form-data; boundary=abc\r\n"
                      f"Content-Length: {50 * MB}\r\n\r\n").encode())
        await writer.drain()
        status = await reader.readline()
        assert status.split()[1] == b"413", status
    finally:
        writer.close()
    folder = Path(server.services.config.plugin_packages_dir)
    await wait_for(lambda: not folder.exists() or list(folder.iterdir()) == [], message="no partial upload left")


# --- the controller: fresh token, fresh database, no mapping by hand ------------------------------

@pytest.mark.timeout(180)
async def test_controller_streams_simulated_and_installs_uploaded_package(server, tmp_path):
    sim = res(await server.request("POST", "/api/v1/plugins", {"plugin_id": "simulated", "instance_name": "Rig"}))
    events = {m["channel_id"]: m["event_public_id"] for m in sim["channel_mappings"]}
    assert set(events) == set(SIMULATED) and all(events.values())

    wheel = build_wheel(tmp_path / "dist")
    assert (await upload(server, wheel)).code == 201
    echo = res(await server.request("POST", "/api/v1/plugins", {"plugin_id": "echo-sensor", "instance_name": "Tank"}))
    ev = await server.request("POST", "/api/v1/events", {"name": "Tank level", "type": "sensor", "unit": "mm",
                                                         "min_value": 0, "max_value": 100})
    level_event = res(ev)["public_id"]
    ch = await server.request("POST", f"/api/v1/plugins/{echo['public_id']}/channels", {
        "channel_id": "level", "channel_name": "Level", "direction": "input", "unit": "mm",
        "event_public_id": level_event})
    assert ch.code == 201, ch

    token = (await server.request("POST", "/api/v1/tokens", {"name": "controller"})).json["token"]
    log_path = tmp_path / "controller.log"
    plugin_dir = tmp_path / "controller-plugins"
    env = controller_env(WEBMACS_SERVER_URL=server.base_url, WEBMACS_API_TOKEN=token, WEBMACS_POLL_INTERVAL="0.2",
                         WEBMACS_SYNC_INTERVAL="1", WEBMACS_SPOOL_PATH=str(tmp_path / "spool.db"),
                         WEBMACS_PLUGIN_DIR=str(plugin_dir))
    proc = await start_controller(env, log_path)
    try:
        svc = server.services
        await wait_for(lambda: all(count_rows(svc, [e]) >= 2 for e in events.values()), timeout=60,
                       message="readings of every simulated channel")
        await wait_for(lambda: count_rows(svc, [level_event]) >= 2, timeout=30,
                       message="readings of the uploaded plugin")
    finally:
        rc, _took = await stop_controller(proc)
    log_text = log_path.read_text()
    assert rc == 0 and "Traceback" not in log_text, log_text
    assert "plugin package webmacs-plugin-echo 1.0.0 installed" in log_text, log_text
    resp = await server.request("GET", f"/api/v1/datapoints?event_public_id={level_event}&page_size=3")
    assert {dp["value"] for dp in resp.json["data"]} == {42.5}
    reactor = await server.request("GET", f"/api/v1/datapoints?event_public_id={events['temp_reactor']}&page_size=5")
    assert all(20 <= dp["value"] <= 500 for dp in reactor.json["data"])
    installed = [p.name for p in plugin_dir.iterdir() if p.name != "wheels"]
    assert len(installed) == 1 and installed[0].startswith("webmacs-plugin-echo-1.0.0-")

    # uninstalled on the server: the next start removes it
    pkg = next(p for p in (await server.request("GET", "/api/v1/plugins/packages")).json
               if p["source"] == "uploaded")
    assert (await server.request("DELETE", f"/api/v1/plugins/packages/{pkg['public_id']}")).code == 200
    proc = await start_controller(env, log_path)
    try:
        await wait_for(lambda: [p for p in plugin_dir.iterdir() if p.name != "wheels"] == [], timeout=30,
                       message="the uninstalled package removed")
    finally:
        rc, _took = await stop_controller(proc)
    assert rc == 0


@pytest.mark.parametrize("chunk", [1, 7, 70, 4096])
def test_multipart_reader_any_chunking(chunk, tmp_path):
    import io

    from webmacs.uploads import MultipartError, MultipartFile, boundary_of

    data = os.urandom(20000) + b"\r\n--almost-the-boundary\r\n" + os.urandom(100)
    body, headers = multipart("pkg.whl", data)
    sink = io.BytesIO()
    reader = MultipartFile(boundary_of(headers["Content-Type"]), "file", sink, max_bytes=len(data))
    for i in range(0, len(body), chunk):
        reader.feed(body[i:i + chunk])
    reader.finish()
    assert sink.getvalue() == data and reader.filename == "pkg.whl" and not reader.too_large
    assert reader.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    small = MultipartFile(boundary_of(headers["Content-Type"]), "file", io.BytesIO(), max_bytes=100)
    small.feed(body)
    small.finish()
    assert small.too_large and small.size == len(data)
    cut = MultipartFile(boundary_of(headers["Content-Type"]), "file", io.BytesIO(), max_bytes=len(data))
    cut.feed(body[:-10])
    with pytest.raises(MultipartError, match="final boundary"):
        cut.finish()
