"""Memory of the scheduled state, measured in a fresh process so nothing else counts.

Builds the check configs, registers the nodes and schedules every check (as the core
benchmark does), then prints one JSON object: the process's resident size after imports,
its peak (``ru_maxrss``) and its current size once the state is built, and with
``--tracemalloc`` (slow) the bytes Python allocated for the configs and the state.

Run: ``python -m tests.bench.memory --nodes 10000 --checks 100000 [--tracemalloc]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tracemalloc

import orjson

from dispatcher.core.state import ClusterState
from tests.bench.core import build_configs, register_nodes, schedule_batched

MiB = 1024.0 * 1024.0


def current_rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MiB


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    baseline = current_rss_mib()
    if args.tracemalloc:
        tracemalloc.start()
    configs = build_configs(args.checks)
    state = ClusterState()
    register_nodes(state, args.nodes, now=0.0)
    schedule_batched(state, configs, batch=1_000, now=1.0)
    traced: tuple[int, int] | None = None
    if args.tracemalloc:
        traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    result = {
        "nodes": args.nodes,
        "checks": len(state.placement),
        "baseline_rss_mib": baseline,
        "current_rss_mib": current_rss_mib(),
        "peak_rss_mib": max_rss_mib(),
        "traced_current_mib": traced[0] / MiB if traced else None,
        "traced_peak_mib": traced[1] / MiB if traced else None,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
