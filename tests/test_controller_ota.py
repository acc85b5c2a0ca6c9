"""The real controller process against the real server: it reports its version, takes an
applied update, downloads and verifies it and hands it to the device's flash hook."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap

import pytest

from tests.conftest import make_settings, wait_for
from tests.test_controller import controller_env, start_controller, stop_controller

API = "/api/v1/ota"

HOOK = '''
import json, os, shutil

def flash(image):
    """Test device: 'flashes' by copying the image and noting what it got."""
    if os.environ.get("TEST_FLASH_FAIL"):
        raise RuntimeError("device refused the image")
    target = os.environ["TEST_FLASH_DIR"]
    shutil.copyfile(image.path, os.path.join(target, "flashed.bin"))
    with open(os.path.join(target, "flashed.json"), "w") as fh:
        json.dump({"version": image.version, "sha256": image.sha256, "size": image.size,
                   "update": image.update_public_id}, fh)
'''


@pytest.fixture
def server_settings(database_url, tmp_path):
    return make_settings(database_url, WEBMACS_OTA_STORAGE_DIR=str(tmp_path / "server-ota"))


async def new_update(server, version: str, data: bytes) -> dict:
    fw = (await server.request("POST", API, {"version": version})).json["data"]
    up = await server.request("POST", f"{API}/{fw['public_id']}/firmware", raw=data,
                              headers={"Content-Type": "application/octet-stream"})
    assert up.code == 201, up
    return up.json["data"]


async def status_of(server, fw: dict) -> str:
    return (await server.request("GET", f"{API}/{fw['public_id']}")).json["status"]


async def start(server, tmp_path, **extra):
    hook_dir = tmp_path / "hooks"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "test_device_hook.py").write_text(textwrap.dedent(HOOK))
    flash_dir = tmp_path / "device"
    flash_dir.mkdir(exist_ok=True)
    token = (await server.request("POST", "/api/v1/tokens", {"name": "controller"})).json["token"]
    env = controller_env(WEBMACS_SERVER_URL=server.base_url, WEBMACS_API_TOKEN=token, WEBMACS_SYNC_INTERVAL="1",
                         WEBMACS_SPOOL_PATH=str(tmp_path / "spool.db"), WEBMACS_OTA_HOOK="test_device_hook:flash",
                         PYTHONPATH=os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")]),
                         TEST_FLASH_DIR=str(flash_dir), **extra)
    return await start_controller(env, tmp_path / "controller.log"), flash_dir


@pytest.mark.timeout(120)
async def test_controller_applies_a_verified_update(server, tmp_path):
    proc, flash_dir = await start(server, tmp_path, WEBMACS_CONTROLLER_VERSION="1.0.0")
    try:
        # it reports its version
        async def reported():
            return (await server.request("GET", f"{API}/check")).json["current_version"] == "1.0.0"

        await wait_for(reported, timeout=30, message="controller reporting 1.0.0")
        data = os.urandom(200 * 1024)
        fw = await new_update(server, "1.1.0", data)
        check = (await server.request("GET", f"{API}/check")).json
        assert check["latest_version"] == "1.1.0" and check["update_available"] is True
        # nothing happens until an admin applies it
        assert (await server.request("POST", f"{API}/{fw['public_id']}/deploy")).code == 200

        async def completed():
            return await status_of(server, fw) == "completed"

        await wait_for(completed, timeout=30, message="update completed")
        assert (flash_dir / "flashed.bin").read_bytes() == data
        flashed = json.loads((flash_dir / "flashed.json").read_text())
        assert flashed == {"version": "1.1.0", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                           "update": fw["public_id"]}
        done = (await server.request("GET", f"{API}/{fw['public_id']}")).json
        assert done["completed_on"] and done["error_message"] is None

        # from now on it reports the new version
        async def on_new_version():
            check = (await server.request("GET", f"{API}/check")).json
            return check["current_version"] == "1.1.0" and check["update_available"] is False

        await wait_for(on_new_version, timeout=30, message="controller reporting 1.1.0")
    finally:
        rc, _ = await stop_controller(proc)
    assert rc == 0
    log = (tmp_path / "controller.log").read_text()
    for step in ("verifying", "applying", "completed"):
        assert f": {step}" in log, log
    assert "Traceback" not in log


@pytest.mark.timeout(120)
async def test_tampered_file_fails_verification(server, tmp_path):
    proc, flash_dir = await start(server, tmp_path, WEBMACS_CONTROLLER_VERSION="1.0.0")
    try:
        async def reported():
            return (await server.request("GET", f"{API}/check")).json["current_version"] == "1.0.0"

        await wait_for(reported, timeout=30, message="controller reporting 1.0.0")
        fw = await new_update(server, "1.2.0", b"good image" * 1000)
        # the stored file changes behind the record's back: the served bytes no longer match the hash
        with open(os.path.join(server.services.config.ota_storage_dir, f"{fw['public_id']}.bin"), "r+b") as fh:
            fh.write(b"EVIL")
        deployed = await server.request("POST", f"{API}/{fw['public_id']}/deploy")
        # the server verifies the stored file before it hands the update over
        assert deployed.code == 200 and deployed.json["data"]["status"] == "failed", deployed
        rec = (await server.request("GET", f"{API}/{fw['public_id']}")).json
        assert rec["status"] == "failed" and rec["error_message"] == "SHA-256 hash verification failed"
        assert (await server.request("GET", f"{API}/check")).json["active_update"] is None
        assert not (flash_dir / "flashed.bin").exists()  # never handed to the device
        assert (await server.request("GET", f"{API}/check")).json["current_version"] == "1.0.0"
    finally:
        rc, _ = await stop_controller(proc)
    assert rc == 0


@pytest.mark.timeout(120)
async def test_hook_failure_is_reported(server, tmp_path):
    proc, _ = await start(server, tmp_path, WEBMACS_CONTROLLER_VERSION="1.0.0", TEST_FLASH_FAIL="1")
    try:
        fw = await new_update(server, "1.3.0", b"image")
        assert (await server.request("POST", f"{API}/{fw['public_id']}/deploy")).code == 200

        async def failed():
            return await status_of(server, fw) == "failed"

        await wait_for(failed, timeout=30, message="update failed")
        rec = (await server.request("GET", f"{API}/{fw['public_id']}")).json
        assert rec["error_message"] == "flash hook failed: RuntimeError: device refused the image"
    finally:
        rc, _ = await stop_controller(proc)
    assert rc == 0


@pytest.mark.parametrize("variable,value,message", [
    ("WEBMACS_CONTROLLER_VERSION", "1.0", "WEBMACS_CONTROLLER_VERSION must be a semantic version"),
    ("WEBMACS_OTA_HOOK", "no_such_module:flash", "WEBMACS_OTA_HOOK 'no_such_module:flash' cannot be loaded"),
    ("WEBMACS_OTA_HOOK", "justaname", "WEBMACS_OTA_HOOK must be module:function"),
])
async def test_bad_ota_settings_exit_2(tmp_path, variable, value, message):
    import asyncio
    import sys

    env = controller_env(WEBMACS_SERVER_URL="http://127.0.0.1:9", WEBMACS_API_TOKEN="wm_x",
                         WEBMACS_SPOOL_PATH=str(tmp_path / "s.db"), **{variable: value})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "webmacs", "controller", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and message in err.decode() and "Traceback" not in err.decode(), err.decode()
