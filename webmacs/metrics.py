"""Prometheus metrics: every metric the server exports, declared once, here.

Modules import this one and update a metric where the thing happens; updates are
cheap by design: counters go up by a batch's size (never once per datapoint),
histograms take one value per batch, commit or flush. What is a *state* rather
than an event (connected sockets, queued datapoints, pool connections in use) is
set from the running server by :meth:`webmacs.services.Services.refresh_metrics`
just before a scrape is answered (and every few seconds in multi-process mode, so
every worker's share is current).

Exposition (:func:`exposition`): one process uses prometheus-client's default
registry (with its ``process_*`` and ``python_*`` collectors). When
``PROMETHEUS_MULTIPROC_DIR`` is set before the server starts, prometheus-client
keeps every value in files in that directory and each scrape builds a registry
with a ``MultiProcessCollector``, which adds up the files of all workers; the
scrape-time gauges are then ``livesum`` gauges (the sum over running workers) and
a stopping worker removes its own gauge files (:func:`process_exit`). See
docs/metrics.md.
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Multi-process mode: how often each worker writes its state gauges.
MULTIPROCESS_REFRESH_MS = 5000

# Seconds: a batch is usually stored in a few milliseconds; the top buckets show a
# database that stalls.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A broadcast flush encodes one frame and hands it to each subscriber: sub-millisecond for a
# few dashboards, tens of ms for thousands (each socket costs a kernel send).
FLUSH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

# --- ingest -----------------------------------------------------------------------------------
DATAPOINTS_ACCEPTED = Counter(
    "webmacs_datapoints_accepted", "Datapoints that passed validation and belong to a linked event "
    "(WebSocket and REST), counted before they are written (a resent batch counts again).")
DATAPOINTS_REJECTED = Counter(
    "webmacs_datapoints_rejected", "Datapoints refused: invalid, unknown or unlinked event, or in a "
    "batch refused as a whole (too large, nothing valid).")
DATAPOINTS_PERSISTED = Counter(
    "webmacs_datapoints_persisted", "Datapoints committed to the database (a resent duplicate batch "
    "is not counted again).")
DUPLICATE_BATCHES = Counter(
    "webmacs_duplicate_batches", "Telemetry batches whose batch_id was already stored (answered from "
    "the first time, nothing written).")
BATCH_DURATION = Histogram(
    "webmacs_batch_duration_seconds", "WebSocket telemetry batch: from reading the frame to sending its "
    "answer (ack or error), including time queued behind the connection's earlier batches.",
    buckets=LATENCY_BUCKETS)
COMMIT_DURATION = Histogram(
    "webmacs_commit_duration_seconds", "One database transaction of the ingest path: a group of queued "
    "batches committed by the writer, or one REST batch (including the wait for a database thread).",
    buckets=LATENCY_BUCKETS)
QUEUE_REFUSED = Counter(
    "webmacs_ingest_queue_refused", "Telemetry batches refused because the ingest queue was full "
    "(WEBMACS_INGEST_QUEUE_MAX_MB): answered \"Server overloaded: batch not stored\".")

# --- broadcast --------------------------------------------------------------------------------
FLUSH_DURATION = Histogram(
    "webmacs_broadcast_flush_duration_seconds", "One broadcast flush: event-loop time to encode (and "
    "compress) its frame once and hand it to every dashboard subscriber, summed over its slices.",
    buckets=FLUSH_BUCKETS)
FRAMES_SENT = Counter(
    "webmacs_broadcast_frames_sent", "datapoints_batch frames handed to dashboard subscribers "
    "(one per subscriber per flush, plus catch-up frames).")
FRAMES_SKIPPED = Counter(
    "webmacs_broadcast_frames_skipped", "Frames not sent to a subscriber that is behind (too many unsent "
    "bytes); it gets the latest values when it catches up.")

# --- integrations -----------------------------------------------------------------------------
WEBHOOK_OUTCOMES = ("delivered", "failed", "dead_letter", "retried")
WEBHOOK_DELIVERIES = Counter(
    "webmacs_webhook_deliveries", "Webhook delivery outcomes: delivered, failed (never attempted: "
    "dropped on overload or webhook disabled), dead_letter (last attempt failed), retried (an attempt "
    "failed, another is scheduled).", ["outcome"])
for _outcome in WEBHOOK_OUTCOMES:
    WEBHOOK_DELIVERIES.labels(_outcome)  # every outcome is exported from the start, at 0
RULE_TRIGGERS = Counter("webmacs_rule_triggers", "Rule triggers claimed (past their cooldown) and acted on.")

# --- accounts ---------------------------------------------------------------------------------
LOGIN_FAILURES = Counter("webmacs_login_failures", "Password logins answered 401.")
LOGIN_RATE_LIMITED = Counter(
    "webmacs_login_rate_limited", "Login attempts refused with 429 by the per-account failed-login limit.")
RATE_LIMITED = Counter(
    "webmacs_rate_limited", "REST requests refused with 429 by the per-address request limit.")

# --- state, set at scrape time (Services.refresh_metrics) ------------------------------------
_MODE = "livesum"  # multi-process: the sum over running workers (ignored in one process)
INGEST_QUEUE = Gauge(
    "webmacs_ingest_queue_datapoints", "Datapoints read from telemetry sockets and waiting to be "
    "stored (per-connection queues, the batch being written included).", multiprocess_mode=_MODE)
BATCHES_IN_FLIGHT = Gauge(
    "webmacs_ingest_batches_in_flight", "Telemetry batches read and not yet answered (the writer's lag "
    "in batches).", multiprocess_mode=_MODE)
QUEUE_RECORDS = Gauge(
    "webmacs_ingest_queue_records", "Batches in the durable ingest queue not yet committed to the database.",
    multiprocess_mode=_MODE)
QUEUE_BYTES = Gauge(
    "webmacs_ingest_queue_bytes", "Bytes of the durable ingest queue's uncommitted batches.",
    multiprocess_mode=_MODE)
WRITER_LAG = Gauge(
    "webmacs_ingest_writer_lag_seconds", "Age of the oldest batch in the ingest queue not yet committed "
    "(0 when the writer has caught up).", multiprocess_mode="livemax")
SUBSCRIBERS = Gauge("webmacs_subscribers_connected", "Dashboard stream sockets (/ws/datapoints/stream) open.",
                    multiprocess_mode=_MODE)
CONTROLLERS = Gauge("webmacs_controllers_connected", "Controller telemetry sockets (/ws/controller/telemetry) "
                    "open.", multiprocess_mode=_MODE)
DB_POOL_IN_USE = Gauge("webmacs_db_pool_connections_in_use", "Database connections checked out of the pool.",
                       multiprocess_mode=_MODE)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition() -> tuple[bytes, str]:
    """The text exposition format and its content type: this process's metrics, or with
    ``PROMETHEUS_MULTIPROC_DIR`` the sum of every worker's."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exit() -> None:
    """A stopping worker: drop its live gauges from the multi-process directory."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(os.getpid())
