#!/usr/bin/env bash
# Run the README's scenarios one after another; reports go to benchmarks/results/<name>.{txt,json}.
# Each run waits (up to 10 min) for the shared 2-core machine to be quiet before it starts.
#   benchmarks/run_all.sh            all scenarios
#   benchmarks/run_all.sh s1 s2      only these
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=benchmarks/results
mkdir -p "$OUT"

run() {  # name, args...
    local name="$1"; shift
    echo "== $name: benchmarks/ingest_bench.py $*" >&2
    local log="${TMPDIR:-/tmp}/webmacs-bench-$name.log"  # progress + server start-up chatter
    "$PY" benchmarks/ingest_bench.py "$@" --json "$OUT/$name.json" 2>"$log" | tee "$OUT/$name.txt" \
        || echo "== $name FAILED (see $log)" >&2
}

want() { [ ${#SELECTED[@]} -eq 0 ] || [[ " ${SELECTED[*]} " == *" $1 "* ]]; }
SELECTED=("$@")

# (1) flat out, 4 controllers x 500, 10 subscribers; raw COPY ratio; size of the server's rows
# (REPEAT=3 benchmarks/run_all.sh s1: three runs, s1_pg_flat_r1..3)
if want s1; then
    for rep in $(seq 1 "${REPEAT:-1}"); do
        run "s1_pg_flat_r$rep" --controllers 4 --batch 500 --rate 0 --window 4 --subscribers 10 --duration 25
    done
fi
# (2) 10,000 dp/s offered, 100 subscribers: latency
if want s2; then
    for rep in $(seq 1 "${REPEAT:-1}"); do
        run "s2_pg_10k_r$rep" --controllers 4 --batch 100 --rate 10000 --subscribers 100 --duration 30 \
            --no-raw-copy --no-size
    done
fi
# (3) bytes per datapoint with per-point timestamps (distinct (event, time) keys, as a sampling controller)
want s3 && run s3_pg_size_timestamps --controllers 4 --batch 500 --rate 0 --subscribers 10 --duration 25 \
    --timestamps --no-raw-copy
# (1) on SQLite, for reference
want s1sqlite && run s1_sqlite_flat --db sqlite --controllers 4 --batch 500 --rate 0 --window 4 \
    --subscribers 10 --duration 25
# (3) bytes per datapoint of alternative layouts (scratch tables, 1M rows each)
want layout && "$PY" benchmarks/layout_bench.py --rows 1000000 | tee "$OUT/layout.txt"

# py-spy profiles of the server during (1): GIL holders, and wall clock per thread (incl. idle)
if want prof; then
    PROF="${PROF_DIR:-/tmp/webmacs-bench-prof}"; mkdir -p "$PROF"
    X=(--controllers 4 --batch 500 --rate 0 --subscribers 10 --duration 20 --no-raw-copy --no-size)
    run prof_gil "${X[@]}" --py-spy "$PROF/gil.txt" --py-spy-format raw --py-spy-args "--threads --gil"
    run prof_idle "${X[@]}" --py-spy "$PROF/idle.txt" --py-spy-format raw --py-spy-args "--threads --idle"
    .venv/bin/python benchmarks/spy_summary.py "$PROF/gil.txt" "$PROF/idle.txt" | tee "$OUT/prof_summary.txt"
fi

# experiments behind the README's bottleneck notes (flat out, 20 s, no raw COPY / size), twice each,
# interleaved so that other load on the shared machine hits every variant alike
if want exp; then
    for rep in 1 2; do
        X=(--rate 0 --batch 500 --subscribers 10 --duration 20 --no-raw-copy --no-size)
        run "exp_c4_w4_r$rep" --controllers 4 --window 4 "${X[@]}"
        run "exp_c8_w4_r$rep" --controllers 8 --window 4 "${X[@]}"
        run "exp_c4_w1_r$rep" --controllers 4 --window 1 "${X[@]}"
        run "exp_c4_w4_switch05ms_r$rep" --controllers 4 --window 4 --server-switch-interval 0.0005 "${X[@]}"
    done
fi

# proposed server changes, measured with the unchanged server patched at start
# (benchmarks/experiments/patched_server.py), interleaved with the baseline
if want exp2; then
    W=benchmarks/experiments/patched_server.py
    for rep in 1 2; do
        X=(--controllers 4 --window 4 --rate 0 --batch 500 --subscribers 10 --duration 20 --no-raw-copy --no-size
           --pg-waits)
        run "exp2_base_r$rep" "${X[@]}"
        run "exp2_nopreping_r$rep" "${X[@]}" --server-wrapper $W --server-env BENCH_NO_PREPING=1
        # (BENCH_COPY_ONE_CHUNK, also run here then, is now how the writer works)
    done
fi
# issue 22, fan-out: thousands of passive dashboards (benchmarks/fanout_bench.py) and the cost
# of one kernel send (benchmarks/send_cost.py)
fanout() {  # name, args...
    local name="$1"; shift
    echo "== $name: benchmarks/fanout_bench.py $*" >&2
    "$PY" benchmarks/fanout_bench.py "$@" --json "$OUT/$name.json" 2>"${TMPDIR:-/tmp}/webmacs-bench-$name.log" \
        | tee "$OUT/$name.txt" || echo "== $name FAILED" >&2
}
if want fanout; then
    fanout issue22_after_5000p --passive 5000 --duration 25
    fanout issue22_after_5000p_nocompress --passive 5000 --duration 25 --no-compress
    fanout issue22_after_5000p_level6 --passive 5000 --duration 25 --server-env WEBMACS_STREAM_COMPRESSION_LEVEL=6
    fanout issue22_after_10k_100d --passive 90 --rate 10000 --batch 250 --duration 20
    fanout issue22_after_10000p_w2 --passive 10000 --passive-procs 2 --workers 2 --db pg --duration 25
    fanout issue22_after_20000p_w4 --passive 20000 --passive-procs 4 --workers 4 --db pg --duration 25
    for size in 200 12000 40000; do "$PY" benchmarks/send_cost.py 5000 "$size"; done | tee "$OUT/issue22_send_cost.txt"
fi
exit 0
