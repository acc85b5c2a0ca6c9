#!/usr/bin/env python
"""Summarise py-spy ``--format raw`` (collapsed stacks) files recorded with ``--threads``:
per file, samples per thread group and the functions with the most inclusive samples.

    .venv/bin/python benchmarks/spy_summary.py /tmp/webmacs-bench-prof/gil.txt
"""

from __future__ import annotations

import collections
import sys


def summarise(path: str, top: int = 30) -> None:
    incl: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    groups: collections.Counter = collections.Counter()
    total = 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        group = "main" if "MainThread" in frames[0] else ("db" if "webmacs-db" in frames[0] else "other")
        total += n
        groups[group] += n
        seen = set()
        leaf[(group, frames[-1])] += n
        for f in frames[1:]:
            name, _, where = f.partition(" (")
            key = (group, f"{name} ({where.split(':')[0].rstrip(')')})")
            if key not in seen:
                seen.add(key)
                incl[key] += n
    print(f"== {path}: {total} samples; by thread group: {dict(groups)}")
    print("inclusive (share of all samples):")
    for (group, key), n in incl.most_common():
        if any(b in key for b in ("<frozen runpy>", "webmacs/__main__.py", "webmacs/cli.py", "asyncio/runners.py",
                                  "BaseEventLoop.run", "Thread._bootstrap", "Thread.run ")):
            continue
        print(f"  {n / total:6.1%}  {group:<5} {key}")
        top -= 1
        if top == 0:
            break
    print("leaf lines:")
    for (group, key), n in leaf.most_common(15):
        print(f"  {n / total:6.1%}  {group:<5} {key}")
    print()


if __name__ == "__main__":
    for p in sys.argv[1:]:
        summarise(p)
