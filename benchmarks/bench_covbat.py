"""CovBat against ComBat at vertex scale, in one run: time ratio and peak memory.

Default problem: 163842 features (fsaverage vertices) x 200 scans (float32), 4 sites of 50, age and
sex kept; the sites differ in location, scale and a low-rank covariance component (3 spatial
patterns with site-specific variances). Each method runs ``fit`` + ``transform`` of the same scans
in its own subprocess, so that its peak resident memory (VmHWM) is its own; "above input" is the
peak minus the resident memory once the data are built. Prints median wall-clock and CPU seconds
over the repeats, the ratio CovBat / ComBat (target: within 2x) and CovBat's number of components.

    python benchmarks/bench_covbat.py            (163842 x 200, 3 repeats)
    python benchmarks/bench_covbat.py --quick    (a smaller problem, to check the script)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

import _common  # noqa: F401  (puts this checkout on sys.path)
from _common import peak_rss_mb, rss_mb


def make_data(n_features: int, n_scans: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    sites = np.repeat(np.arange(4), n_scans // 4).astype(str)
    n = sites.size
    age = rng.uniform(20, 80, n)
    sex = rng.integers(0, 2, n).astype(float)
    X = rng.standard_normal((n, n_features), dtype=np.float32)
    X *= 0.2
    X += 2.5
    X -= (0.01 * age)[:, None].astype(np.float32)
    X += (0.05 * sex)[:, None].astype(np.float32)
    patterns = rng.standard_normal((3, n_features), dtype=np.float32)
    for k in range(4):
        rows = sites == str(k)
        X[rows] *= np.float32(1 + 0.1 * k)
        X[rows] += np.float32(0.05 * k)
        X[rows] += (rng.standard_normal((rows.sum(), 3)).astype(np.float32) * np.float32(0.05 * (k + 1))) @ patterns
    return X, sites, pd.DataFrame({"age": age, "sex": sex})


def run_one(method: str, n_features: int, n_scans: int, repeats: int) -> dict:
    from surfharm.harmonize import ComBat, CovBat

    X, sites, cov = make_data(n_features, n_scans)
    before = rss_mb()
    cls = CovBat if method == "covbat" else ComBat
    walls, cpus = [], []
    model = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        model = cls().fit(X, sites=sites, covariates=cov)
        out = model.transform(X, sites=sites, covariates=cov)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        del out
    result = {"method": method, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
              "peak_mb": peak_rss_mb(), "above_input_mb": peak_rss_mb() - before}
    if method == "covbat":
        result["n_components"] = int(model.n_components_)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=163842)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10242 features x 80 scans, 1 repeat")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.features, args.scans, args.repeats = 10242, 80, 1
    if args.child:
        print(json.dumps(run_one(args.child, args.features, args.scans, args.repeats)))
        return 0
    results = {}
    for method in ("combat", "covbat"):
        done = subprocess.run([sys.executable, __file__, "--child", method, "--features", str(args.features),
                               "--scans", str(args.scans), "--repeats", str(args.repeats)],
                              check=True, capture_output=True, text=True)
        results[method] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{args.features} features x {args.scans} scans, float32, fit + transform, median of {args.repeats}")
    print(f"{'method':8s} {'wall s':>8s} {'cpu s':>8s} {'peak MB':>9s} {'above input MB':>15s}")
    for r in results.values():
        print(f"{r['method']:8s} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {r['peak_mb']:9.0f} {r['above_input_mb']:15.0f}")
    ratio = results["covbat"]["wall_s"] / results["combat"]["wall_s"]
    cpu_ratio = results["covbat"]["cpu_s"] / results["combat"]["cpu_s"]
    print(f"CovBat / ComBat time: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (target <= 2x); "
          f"CovBat kept {results['covbat']['n_components']} components (95% of the residual variance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
