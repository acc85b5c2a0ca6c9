"""Prometheus metrics at /metrics: a real server, real sockets, a real webhook receiver.

Counters are process-wide (every server a test process starts shares them), so the
traffic test compares a scrape before with a scrape after. Multi-process mode is
checked with real separate processes sharing a PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings, wait_for
from tests.webhook_receiver import receiver  # noqa: F401 - fixture
from webmacs import metrics
from webmacs.config import ConfigError, Settings
from webmacs.ratelimit import LoginFailures

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-0123456789abcdef"


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample: (sample name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(server, token: str | None = TOKEN) -> dict:
    resp = await server.request("GET", "/metrics", token=token)
    assert resp.code == 200, resp
    assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers
    return parse(resp.body.decode())


@pytest.fixture
def server_settings(database_url):
    return make_settings(database_url, WEBMACS_METRICS_TOKEN=TOKEN, WEBMACS_WEBHOOK_RETRY_BASE="0.05",
                         WEBMACS_SENSOR_READING_THROTTLE="0")


async def test_counters_move_with_real_traffic(server, receiver):  # noqa: F811 - fixture
    first, second = await server.linked_events(2, prefix="Metrics")
    for path in ("/ok/metrics", "/fail/metrics"):
        resp = await server.request("POST", "/api/v1/webhooks", {"url": receiver.url(path),
                                                                "events": ["sensor.reading"]})
        assert resp.code == 201, resp
    resp = await server.request("POST", "/api/v1/rules", {"name": "hot", "event_public_id": first,
                                                         "operator": "gt", "threshold": 10, "action_type": "log"})
    assert resp.code == 201, resp
    before = await scrape(server)
    assert value(before, "webmacs_subscribers_connected") == 0
    assert value(before, "webmacs_controllers_connected") == 0

    dashboard = await server.ws("/ws/datapoints/stream")
    controller = await server.ws("/ws/controller/telemetry")
    batch = {"type": "telemetry", "batch_id": "metrics-1", "datapoints": [
        {"value": 20.5, "event_public_id": first}, {"value": 21.5, "event_public_id": first},
        {"value": 1.0, "event_public_id": second}, {"value": "hot", "event_public_id": first},
        {"value": 2.0, "event_public_id": "no-such-event"}]}
    await controller.send(batch)
    ack = await controller.recv_type("ack")
    assert (ack["accepted"], ack["rejected"]) == (3, 2), ack
    await controller.send(batch)  # resent: answered from the first time, nothing written
    assert (await controller.recv_type("ack")).get("duplicate") is True
    frame = await dashboard.recv_type("datapoints_batch")
    assert {p["event_public_id"] for p in frame["datapoints"]} <= {first, second}
    resp = await server.request("POST", "/api/v1/auth/login", {"email": "admin@example.com",
                                                              "password": "wrong-password"}, token=None)
    assert resp.code == 401, resp

    def outcome(samples, name):
        return value(samples, "webmacs_webhook_deliveries_total", outcome=name) - value(
            before, "webmacs_webhook_deliveries_total", outcome=name)

    async def webhooks_done():
        now = await scrape(server)
        rules = value(now, "webmacs_rule_triggers_total") - value(before, "webmacs_rule_triggers_total")
        return now if outcome(now, "delivered") >= 2 and outcome(now, "dead_letter") >= 2 and rules else None

    await server.settled()  # the ingest queue's writer has committed the batch
    after = await wait_for(webhooks_done, timeout=15, interval=0.1, message="webhook outcomes in /metrics")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("webmacs_datapoints_accepted_total") == 6  # the batch and its resend
    assert delta("webmacs_datapoints_persisted_total") == 3  # the resend wrote nothing
    assert delta("webmacs_datapoints_rejected_total") == 4
    assert delta("webmacs_duplicate_batches_total") == 1
    assert delta("webmacs_batch_duration_seconds_count") == 2
    assert delta("webmacs_commit_duration_seconds_count") == 1  # one writer transaction; the resend is answered from memory
    assert delta("webmacs_batch_duration_seconds_sum") > 0
    assert delta("webmacs_broadcast_frames_sent_total") >= 1
    assert delta("webmacs_broadcast_flush_duration_seconds_count") >= 1
    assert delta("webmacs_login_failures_total") == 1
    assert delta("webmacs_rule_triggers_total") == 1  # 20.5 and 21.5 > 10, one cooldown
    # two sensor.reading deliveries per receiver (two events); each /fail one: 2 retries, then dead_letter
    assert outcome(after, "delivered") == 2 and outcome(after, "dead_letter") == 2
    assert outcome(after, "retried") == 4
    assert len(receiver.hits_for("/ok/metrics")) == 2
    assert value(after, "webmacs_subscribers_connected") == 1
    assert value(after, "webmacs_controllers_connected") == 1
    assert value(after, "webmacs_ingest_queue_datapoints") == 0
    assert value(after, "webmacs_db_pool_connections_in_use") >= 0
    assert ("webmacs_login_rate_limited_total", frozenset()) in after

    dashboard.close()
    controller.close()
    await wait_for(lambda: server.services.hub.count("frontend") == 0 and server.services.hub.count("controller") == 0,
                   message="sockets gone")
    gone = await scrape(server)
    assert value(gone, "webmacs_subscribers_connected") == 0
    assert value(gone, "webmacs_controllers_connected") == 0


async def test_frames_skipped_for_a_behind_subscriber(server):
    hub = server.services.hub
    server.services.stop_callbacks()  # flushes when the test says
    [event] = await server.linked_events(1, prefix="Behind")
    dashboard = await server.ws("/ws/datapoints/stream")
    conn = next(iter(hub.groups["frontend"]))
    conn.pending_bytes = hub.max_pending_bytes  # as if its socket were full (tests/test_ws.py does the same)
    before = await scrape(server)
    telemetry = await server.ws("/ws/controller/telemetry")
    for i in range(3):
        await telemetry.send({"datapoints": [{"value": float(i), "event_public_id": event}], "batch_id": f"s{i}"})
        await telemetry.recv_type("ack")
        hub.flush()
    behind = await scrape(server)
    assert value(behind, "webmacs_broadcast_frames_skipped_total") - value(
        before, "webmacs_broadcast_frames_skipped_total") == 3
    assert value(behind, "webmacs_broadcast_frames_sent_total") == value(before, "webmacs_broadcast_frames_sent_total")
    assert value(behind, "webmacs_broadcast_flush_duration_seconds_count") - value(
        before, "webmacs_broadcast_flush_duration_seconds_count") == 3
    conn.pending_bytes = 0  # drained: the next completed write sends the catch-up frame
    hub.broadcast("frontend", {"type": "noop"})
    await wait_for(lambda: conn.behind_since is None and conn.pending_bytes == 0, message="catch-up sent")
    frames = [await dashboard.recv(), await dashboard.recv()]  # read, so the socket can close cleanly
    assert {"type": "datapoints_batch", "datapoints": [hub.latest[event]]} in frames, frames
    caught_up = await scrape(server)
    assert value(caught_up, "webmacs_broadcast_frames_sent_total") - value(
        behind, "webmacs_broadcast_frames_sent_total") == 1


async def test_token_required(server):
    for token in (None, "wrong-token-0123456789", TOKEN + "x", "admin"):
        resp = await server.request("GET", "/metrics", token=token)
        assert resp.code == 401, (token, resp)
        assert resp.json == {"detail": "Metrics require Authorization: Bearer <WEBMACS_METRICS_TOKEN>."}
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in resp.body.decode()
    assert (await server.request("GET", "/metrics", token=TOKEN)).code == 200


@pytest.mark.parametrize("overrides, status", [({}, 404), ({"WEBMACS_METRICS_PUBLIC": "false"}, 404),
                                               ({"WEBMACS_METRICS_PUBLIC": "true"}, 200)])
async def test_disabled_by_default_or_public(database_url, overrides, status):
    from tests.conftest import start_server, stop_server

    srv, http_server = await start_server(make_settings(database_url, **overrides))
    try:
        resp = await srv.request("GET", "/metrics", token=None)
        assert resp.code == status, resp
        if status == 404:
            assert resp.json == {"detail": "Not Found"}
        else:
            assert "webmacs_datapoints_accepted_total" in resp.body.decode()
    finally:
        await stop_server(srv, http_server)


def test_settings():
    assert Settings.from_env({"WEBMACS_SECRET_KEY": "k"}).metrics_token == ""
    assert Settings.from_env({"WEBMACS_SECRET_KEY": "k"}).metrics_public is False
    with pytest.raises(ConfigError, match="WEBMACS_METRICS_TOKEN"):
        Settings.from_env({"WEBMACS_SECRET_KEY": "k", "WEBMACS_METRICS_TOKEN": "short"})
    with pytest.raises(ConfigError, match="WEBMACS_METRICS_PUBLIC"):
        Settings.from_env({"WEBMACS_SECRET_KEY": "k", "WEBMACS_METRICS_PUBLIC": "maybe"})
    assert TOKEN not in repr(Settings.from_env({"WEBMACS_SECRET_KEY": "k", "WEBMACS_METRICS_TOKEN": TOKEN}))


WORKER = """
import sys
from webmacs import metrics
metrics.DATAPOINTS_ACCEPTED.inc(int(sys.argv[1]))
metrics.BATCH_DURATION.observe(0.01)
metrics.SUBSCRIBERS.set(int(sys.argv[2]))
if sys.argv[3] == "exit":
    metrics.process_exit()
"""
SCRAPE = "import sys\nfrom webmacs import metrics\nsys.stdout.write(metrics.exposition()[0].decode())\n"


def test_multiprocess_mode_sums_workers(tmp_path):
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}

    def run(code: str, *args: str) -> str:
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run(WORKER, "3", "2", "exit")  # a worker that stopped: its gauge is gone, its counts stay
    run(WORKER, "4", "5", "stay")
    samples = parse(run(SCRAPE))
    assert value(samples, "webmacs_datapoints_accepted_total") == 7
    assert value(samples, "webmacs_batch_duration_seconds_count") == 2
    assert value(samples, "webmacs_subscribers_connected") == 5


async def test_two_server_processes_answer_the_sum(database_url, tmp_path):
    """Two real `webmacs serve` processes on one database and one PROMETHEUS_MULTIPROC_DIR:
    either one's /metrics shows both processes' counts and sockets; a worker that stops
    takes its gauges with it and leaves its counts."""
    from tests.test_shutdown import ServeProcess, client_for

    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {metrics.MULTIPROC_ENV: str(shared), "WEBMACS_METRICS_TOKEN": TOKEN}
    first = ServeProcess(database_url, tmp_path / "first.log", **env)
    second = ServeProcess(database_url, tmp_path / "second.log", **env)
    clients = []
    try:
        await first.start()
        clients.append(await client_for(first.port))
        [event] = await clients[0].linked_events(1, prefix="Workers")
        await second.start()  # after the mapping exists, so its linkage view has it
        clients.append(await client_for(second.port))
        for client, n in zip(clients, (1, 2)):
            resp = await client.request("POST", "/api/v1/datapoints/batch", {"datapoints": [
                {"value": float(i), "event_public_id": event} for i in range(n)]})
            assert resp.code == 201, resp
        dashboard = await clients[1].ws("/ws/datapoints/stream")

        async def both_counted():
            now = await scrape(clients[0])
            return now if value(now, "webmacs_subscribers_connected") == 1 else None

        samples = await wait_for(both_counted, timeout=20, interval=0.2, message="the second worker's gauge")
        assert value(samples, "webmacs_datapoints_persisted_total") == 3
        assert value(samples, "webmacs_commit_duration_seconds_count") == 2
        assert value(await scrape(clients[1]), "webmacs_datapoints_persisted_total") == 3
        assert not any(name.startswith("process_") for name, _ in samples)  # one worker's would mislead
        assert len(list(shared.glob("*.db"))) >= 2

        dashboard.close()
        second.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.proc.wait(), 20) == 0, second.log()
        after = await scrape(clients[0])
        assert value(after, "webmacs_subscribers_connected") == 0
        assert value(after, "webmacs_datapoints_persisted_total") == 3
    finally:
        for client in clients:
            await client.close()
        await first.kill()
        await second.kill()


def metric_names() -> set[str]:
    from prometheus_client.metrics import MetricWrapperBase

    return {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


def test_metric_names_follow_conventions():
    names = metric_names()
    assert len(names) >= 18
    for name in names:
        assert re.fullmatch(r"webmacs_[a-z_]+", name), name
    assert all(name.endswith("_seconds") for name in names if "duration" in name)


def test_grafana_dashboard_uses_existing_metrics():
    dashboard = json.loads((ROOT / "conf" / "grafana-webmacs.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    known = set()
    for name in metric_names():
        known |= {name, name + "_total", name + "_bucket", name + "_sum", name + "_count"}
    used = {word for expr in exprs for word in re.findall(r"\bwebmacs_[a-z_]+", expr)}
    assert used <= known, used - known
    unused = {name for name in metric_names() if not any(u.startswith(name) for u in used)}
    assert not unused, f"metrics without a panel: {unused}"


async def test_rate_limit_refusals_are_counted(server):
    """The per-account failed-login limit (loopback included) answers 429 and counts it."""
    server.services.guards.logins = LoginFailures(2, 900)
    before = value(await scrape(server), "webmacs_login_rate_limited_total")
    answers = []
    for _ in range(4):
        resp = await server.request("POST", "/api/v1/auth/login", {"email": "admin@example.com", "password": "wrong"},
                                    token=None)
        answers.append(resp.code)
    assert answers[:2] == [401, 401] and 429 in answers[2:], answers
    after = value(await scrape(server), "webmacs_login_rate_limited_total")
    assert after - before == answers.count(429)
