"""Shared helpers of the benchmark scripts: timing, peak memory in a fresh process, tables."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """High-water mark of this process's resident set size in MB.

    Read from VmHWM in /proc/self/status, which starts afresh at exec; ``ru_maxrss`` would not do:
    Linux carries it over from the parent across fork and exec.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(fns: dict, repeats: int, sync=lambda: None) -> dict[str, list[float]]:
    """Seconds of every call of each callable, run in turn in every repeat so machine noise hits all alike."""
    for fn in fns.values():
        fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Median seconds of each callable (:func:`interleaved_times`)."""
    return {name: statistics.median(t) for name, t in interleaved_times(fns, repeats, sync).items()}


def run_in_fresh_process(script: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``script args`` in a new Python process that prints one JSON line last; return it.

    ``env``: variables added to this process's environment for the child (e.g. malloc settings).
    """
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    import platform

    import numpy
    import torch
    return (f"Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
