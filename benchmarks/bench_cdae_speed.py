"""CDAE training and inference times per icosahedral level, with the authors' network widths.

For each level, random maps of 4 scanners (``--scans`` per scanner) are harmonized by
:class:`surfharm.harmonize.CDAE` with the published architecture (``base_channels=32``: invariant
encoder 32-64-128-256) and batch size 1 (the authors'): ``--steps`` training steps are timed after
a warm-up fit (as the difference between fits of 1 + steps and 1 + 2 steps, so that
the set-up cancels out), and inference of every scan to the reference scanner is timed after training.
Prints seconds per training step, seconds per scan of inference and the peak resident memory of the
process of each level (each level runs in its own process, so its peak is its own).

Time for the benchmark's size: CDAE on 4 scanners x ``n`` scans for ``E`` epochs of batch 1 takes
``4 n E`` steps; the table prints that estimate for the scenario of ``benchmarks/bench_cdae.py``
(4 scanners x 40 scans) at 50 epochs, the authors' schedule.

    python benchmarks/bench_cdae_speed.py                         # levels 4, 5, 6 on the CPU
    python benchmarks/bench_cdae_speed.py --levels 5 6 7 --device cuda
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

import _common  # noqa: F401  (puts this checkout on sys.path)
from _common import peak_rss_mb

SITES = 4


def run_level(level: int, steps: int, scans: int, device: str, threads: int) -> dict:
    import torch

    from spherical_ops import n_vertices
    from surfharm.harmonize import get

    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    V = n_vertices(level)
    sites = np.repeat([f"S{k}" for k in range(SITES)], scans)
    X = (2.5 + 0.3 * rng.standard_normal((sites.size, V)) + 0.1 * np.arange(SITES).repeat(scans)[:, None])
    X = X.astype(np.float32)

    def fit(n_steps: int):
        return get("cdae")(max_steps=n_steps, device=device, seed=0).fit(X, sites=sites)

    fit(1)                                     # warm-up: first use of the layers' tables and kernels
    start = time.perf_counter()
    fit(1 + steps)
    short = time.perf_counter() - start
    start = time.perf_counter()
    model = fit(1 + 2 * steps)
    long = time.perf_counter() - start
    per_step = (long - short) / steps          # the fit's set-up (statistics, network build) cancels out
    start = time.perf_counter()
    model.transform(X, sites=sites)
    infer = (time.perf_counter() - start) / sites.size
    return {"level": level, "vertices": V, "step_s": per_step, "infer_s": infer, "peak_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(), "device": device}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per level")
    parser.add_argument("--scans", type=int, default=4, help="scans per scanner")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_level(args.child, args.steps, args.scans, args.device, args.threads)))
        return 0
    rows = []
    for level in args.levels:
        done = subprocess.run([sys.executable, __file__, "--child", str(level), "--steps", str(args.steps),
                               "--scans", str(args.scans), "--device", args.device, "--threads", str(args.threads)],
                              check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"CDAE, authors' widths, batch 1, {args.device}, {rows[0]['threads']} torch thread(s); "
          f"{args.steps} timed steps per level")
    print(f"{'level':>5s} {'vertices':>9s} {'s/step':>8s} {'s/scan infer':>13s} {'peak MB':>8s} "
          f"{'50 epochs of 4 x 40 scans':>26s}")
    for r in rows:
        epochs_time = r["step_s"] * 50 * SITES * 40
        print(f"{r['level']:5d} {r['vertices']:9d} {r['step_s']:8.3f} {r['infer_s']:13.4f} {r['peak_mb']:8.0f} "
              f"{epochs_time / 60:22.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
