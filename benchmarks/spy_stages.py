#!/usr/bin/env python
"""CPU per datapoint of each ingest stage, from a py-spy ``--format raw --threads`` profile
of a flat-out ``ingest_bench.py`` run (``--py-spy FILE --py-spy-format raw --py-spy-args=--threads``).

Each sample is put in the stage of the innermost frame that names one (:data:`STAGES`,
first match from the leaf up); samples of a thread that is waiting (a lock, a queue, the
selector) are left out. A sample is 1/rate s of a thread on the CPU (or waiting for the
GIL: py-spy cannot tell), so seconds per stage / datapoints = µs per datapoint.

    .venv/bin/python benchmarks/spy_stages.py PROFILE.txt --datapoints 5888000 [--rate 100] [--cpu-s 15.5]
"""

from __future__ import annotations

import argparse
import collections

# (stage, patterns in "function (file" of a frame); checked leaf first, stage by stage in this order
STAGES = [
    ("e fan-out hand-off", ["_Accepted.newest", "IngestPipeline._publish", "publish_readings", "broadcast_points",
                            "ConnectionManager.publish", "RuleEngine.evaluate", "sensor_readings", "PointRelay"]),
    ("c queue append + fsync", ["webmacs/storage/queue.py", "_Accepted.packed", "pack_rows", "pack_columns"]),
    ("b validate + linkage", ["accept_points", "validate_point", "_check_strict", "IngestPipeline._accept",
                              "CachedView", "check_batch"]),
    ("d writer: pack + COPY", ["webmacs/storage/datapoints.py", "IngestPipeline._write_loop", "webmacs-writer"]),
    ("f fan-out flush", ["ConnectionManager.flush", "ConnectionManager._send", "ConnectionManager.send"]),
    ("g acks and replies", ["TelemetryHandler._answer", "_ack (", "ConnectionManager.reply", "write_message"]),
    ("a frame read + parse", ["webmacs/jsoncodec.py", "_Socket.on_message", "_Socket.parse", "TelemetryHandler.handle",
                              "tornado/websocket.py", "tornado/iostream.py", "TelemetryHandler._drain",
                              "IngestPipeline.enqueue"]),
]
WAITING = ("Condition.wait", "Event.wait", "_worker (concurrent/futures/thread.py", "Queue.get", "select (",
           "EpollSelector.select", "lock.acquire", "Thread.join", "_wait_for_tstate_lock", "sleep (",
           "PgBus._send (")  # the bus thread in psycopg2's execute: waiting on the database, GIL released


def stage_of(frames: list[str]) -> str | None:
    """None: the thread waits."""
    if any(w in frames[-1] for w in WAITING):
        return None
    for frame in reversed(frames):
        for stage, patterns in STAGES:
            if any(p in frame for p in patterns):
                return stage
    if "webmacs-writer" in frames[0]:
        return "d writer: pack + COPY"
    if "webmacs-queue" in frames[0]:
        return "c queue append + fsync"
    return "h other (IOLoop, HTTP, threads)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile")
    p.add_argument("--datapoints", type=int, required=True, help="datapoints accepted during the profile")
    p.add_argument("--rate", type=float, default=100, help="py-spy samples per second (its default: 100)")
    p.add_argument("--cpu-s", type=float, default=None,
                   help="the server's real CPU seconds over the profile (ps/proc): scale the stages to it, "
                        "since samples of a thread waiting for the GIL look busy")
    args = p.parse_args()
    stages: collections.Counter = collections.Counter()
    waiting = 0
    for line in open(args.profile):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        stage = stage_of(stack.split(";"))
        if stage is None:
            waiting += int(count)
        else:
            stages[stage] += int(count)
    total = sum(stages.values())
    print(f"{args.profile}: {total} busy samples ({total / args.rate:.1f} s), {waiting} waiting; "
          f"{args.datapoints:,} datapoints")
    if args.cpu_s:  # per-stage seconds as shares of the real CPU time
        print(f"scaled to {args.cpu_s:.1f} CPU s (x{args.cpu_s * args.rate / total:.2f})")
        args.rate = total / args.cpu_s
    print(f"{'stage':<34}{'share':>7}{'CPU s':>8}{'µs/dp':>8}")
    for stage in sorted(stages):
        n = stages[stage]
        print(f"{stage:<34}{n / total:>7.1%}{n / args.rate:>8.2f}{n / args.rate / args.datapoints * 1e6:>8.3f}")
    print(f"{'total':<34}{1:>7.0%}{total / args.rate:>8.2f}{total / args.rate / args.datapoints * 1e6:>8.3f}")


if __name__ == "__main__":
    main()
