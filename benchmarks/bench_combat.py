"""ComBat at vertex scale: surfharm side by side with neuroCombat and neuroHarmonize, in one run.

Default problem: 163842 features (fsaverage vertices) x 200 scans, 4 sites of 50, age + sex,
float64 and float32. Every measurement runs in its own subprocess, so that the peak resident
memory (sampled every 20 ms, and the kernel's ru_maxrss) belongs to that method alone; "above
input" is the peak minus the resident memory just before the method ran (the data already built).
Prints medians over repeats (wall-clock, and CPU time of the process, which shared machines
disturb less) and the ratios peer / surfharm.

Also measured: non-parametric EB (surfharm at full size with its error against the exact sum on a
probe of features; neuroCombat on a subset, extrapolated by its quadratic cost), ComBat-GAM with one
smooth term (neuroHarmonize on a subset, extrapolated per feature), a streamed fit over a
float32 np.memmap of 5000 scans x 163842 vertices (3.3 GB on disk), and longitudinal ComBat with a
subject random intercept and slope on time (200 scans of 60 subjects; no peer runs at this size).

Run with the benchmark environment, which has the peers:
    pip install -e ".[bench]"   # neuroCombat, neuroHarmonize
    python benchmarks/bench_combat.py
    ... --quick    (a smaller problem, to check the script)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import _common  # noqa: E402,F401  (puts this checkout on sys.path, as for every script here)


# -- measurement helpers (run inside each child) ---------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Sample VmRSS and RssAnon every 20 ms in a thread; keep the maxima (bytes)."""

    def __enter__(self):
        self.rss = self.anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.rss = max(self.rss, _status_kib("VmRSS") * 1024)
            self.anon = max(self.anon, _status_kib("RssAnon") * 1024)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, _status_kib("VmRSS") * 1024,
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def make_data(n_scans: int, n_features: int, dtype, seed: int = 0):
    """Thickness-like maps with known site effects: (X (n_scans, n_features), sites, age, sex)."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(np.arange(4), -(-n_scans // 4))[:n_scans]
    age = rng.uniform(20, 80, n_scans).astype(np.float32).astype(float)
    sex = rng.choice(["F", "M"], n_scans)
    base = rng.normal(2.5, 0.3, n_features)
    slope = rng.normal(-0.005, 0.002, n_features)
    shift = rng.normal(0, 0.1, (4, n_features))
    scale = rng.gamma(20, 1 / 20, (4, n_features))
    X = np.empty((n_scans, n_features), dtype=dtype)
    for j in range(n_scans):
        noise = rng.normal(0, 0.2, n_features) * scale[sites[j]]
        X[j] = base + slope * age[j] + 0.05 * (sex[j] == "M") + shift[sites[j]] + noise
    return X, np.array([f"site{s}" for s in sites]), age, sex


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


# -- the methods -------------------------------------------------------------------------------------

def run_child(name: str, args) -> dict:
    import pandas as pd

    dtype = np.float32 if args.dtype == "float32" else np.float64
    # Import everything before measuring: import time and library memory are not the method's.
    import sklearn.preprocessing  # noqa: F401  (the spline basis of smooth terms)
    import surfharm.harmonize  # noqa: F401
    import torch  # noqa: F401
    if "neurocombat" in name:
        import neuroCombat  # noqa: F401
    if "neuroharmonize" in name:
        import neuroHarmonize  # noqa: F401
    if name == "surfharm-stream":
        return _stream_child(args)
    if name == "surfharm-long-slope":
        return _long_slope_child(args)
    n_features = args.features
    if name == "neurocombat-np-subset":
        n_features = args.np_subset
    if name == "neuroharmonize-gam-subset":
        n_features = args.gam_subset
    X, sites, age, sex = make_data(args.scans, n_features, dtype)
    table = pd.DataFrame({"site": sites, "age": age, "sex": sex})
    covariates = table[["age", "sex"]]
    nh_covars = pd.DataFrame({"SITE": sites, "AGE": age, "SEX": (sex == "M").astype(float)})
    import gc

    gc.collect()
    before = _status_kib("VmRSS") * 1024
    before_anon = _status_kib("RssAnon") * 1024
    times, cpu, extra = [], [], {}
    model = None
    for _ in range(args.repeats):
        model = None  # the previous repeat's model is not part of this one's memory
        gc.collect()
        with PeakMemory() as peak:
            start, start_cpu = time.perf_counter(), time.process_time()
            if name.startswith("surfharm"):
                from surfharm.harmonize import ComBat

                kw = {"surfharm": {}, "surfharm-inplace": {}, "surfharm-np": {"parametric": False},
                      "surfharm-gam": {"smooth_terms": ("age",)}}[name]
                model = ComBat(**kw).fit(X, sites=sites, covariates=covariates)
                # in place: the harmonized maps overwrite the array (e.g. a writable memmap)
                out = model.transform(X, sites=sites, covariates=covariates,
                                      out=X if name == "surfharm-inplace" else None)
            elif name == "neurocombat" or name == "neurocombat-np-subset":
                from neuroCombat import neuroCombat

                with _quiet():
                    out = neuroCombat(dat=X.T, covars=table, batch_col="site", categorical_cols=["sex"],
                                      continuous_cols=["age"], parametric=name == "neurocombat")["data"]
            elif name == "neuroharmonize":
                from neuroHarmonize import harmonizationLearn

                with _quiet():
                    _, out = harmonizationLearn(X, nh_covars)
            elif name == "neuroharmonize-gam-subset":
                from neuroHarmonize import harmonizationLearn

                with _quiet():
                    _, out = harmonizationLearn(X, nh_covars, smooth_terms=["AGE"])
            else:
                raise ValueError(name)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        del out
        gc.collect()
    if name == "surfharm-np":
        extra.update(_nonparametric_error(model, X.shape[0], args.probe))
    if name == "surfharm-np":
        extra["np_grids"] = [str(info.get("grid")) for info in model.nonparametric_info_]
    return {"name": name, "dtype": args.dtype, "features": n_features, "scans": args.scans, "times": times, "cpu": cpu,
            "input_bytes": X.nbytes, "rss_before": before, "peak_rss": peak.rss,
            "anon_before": before_anon, "peak_anon": peak.anon, **extra}


def _nonparametric_error(model, n_scans, n_probe) -> dict:
    """Max |gamma*, delta*| difference (standardised units) between the fitted values and the exact sum."""
    from surfharm.harmonize import _np_eb

    rng = np.random.default_rng(1)
    worst, worst_data = 0.0, 0.0
    for i, n in enumerate(model.site_counts_):
        g_hat, d_hat = model.gamma_hat_[i], model.delta_hat_[i]
        probe = rng.choice(g_hat.size, size=n_probe, replace=False)
        counts = np.full(n_probe, float(n))
        exact = _np_eb.direct(counts, g_hat[probe], d_hat[probe] * (n - 1) / n, g_hat, d_hat, probe)
        err_g = np.abs(model.gamma_star_[i, probe] - exact[0])
        err_d = np.abs(model.delta_star_[i, probe] - exact[1])
        worst = max(worst, err_g.max(), err_d.max())
        worst_data = max(worst_data, (err_g * np.sqrt(model.var_pooled_[probe])).max())
    return {"np_probe": n_probe, "np_max_error_std_units": float(worst), "np_max_error_data_units": float(worst_data)}


def _stream_child(args) -> dict:
    from surfharm.harmonize import ComBat
    import pandas as pd

    path = Path(args.stream_file)
    X = np.memmap(path, dtype=np.float32, mode="r", shape=(args.stream_scans, args.features))
    rng = np.random.default_rng(0)
    sites = np.array([f"site{s}" for s in np.repeat(np.arange(4), -(-args.stream_scans // 4))[:args.stream_scans]])
    covariates = pd.DataFrame({"age": rng.uniform(20, 80, args.stream_scans),
                               "sex": rng.choice(["F", "M"], args.stream_scans)})
    before = _status_kib("VmRSS") * 1024
    before_anon = _status_kib("RssAnon") * 1024
    with PeakMemory() as peak:
        start, start_cpu = time.perf_counter(), time.process_time()
        ComBat().fit(X, sites=sites, covariates=covariates)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"name": "surfharm-stream", "dtype": "float32", "features": args.features, "scans": args.stream_scans,
            "times": [elapsed], "cpu": [elapsed_cpu], "input_bytes": int(X.nbytes), "rss_before": before,
            "peak_rss": peak.rss, "anon_before": before_anon, "peak_anon": peak.anon}


def make_longitudinal(n_scans: int, n_features: int, n_subjects: int = 60, seed: int = 0):
    """Repeated scans: each subject's own intercept and slope on time, 4 sites with location shifts."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    visits = np.full(n_subjects, n_scans // n_subjects)
    visits[: n_scans - visits.sum()] += 1
    subjects = np.repeat([f"sub{i:03d}" for i in range(n_subjects)], visits)
    codes = pd.factorize(subjects)[0]
    time = np.concatenate([np.sort(rng.uniform(0, 5, v)) for v in visits])
    sites = np.array(["site0", "site1", "site2", "site3"])[rng.integers(0, 4, n_scans)]
    X = np.empty((n_scans, n_features))
    for start in range(0, n_features, 16384):
        stop = min(n_features, start + 16384)
        b0 = rng.normal(0, 0.2, (n_subjects, stop - start))
        b1 = rng.normal(0, 0.05, (n_subjects, stop - start))
        X[:, start:stop] = (2.5 - 0.02 * time[:, None] + b0[codes] + b1[codes] * time[:, None]
                            + rng.normal(0, 0.1, (n_scans, stop - start)))
    X += rng.normal(0, 0.1, (4, n_features))[pd.factorize(sites, sort=True)[0]]
    covariates = pd.DataFrame({"time": time, "sex": np.repeat(rng.choice(["F", "M"], n_subjects), visits)})
    return X, sites, covariates, subjects


def _long_slope_child(args) -> dict:
    import gc

    from surfharm.harmonize import LongComBat

    X, sites, covariates, subjects = make_longitudinal(args.scans, args.features)
    gc.collect()
    before = _status_kib("VmRSS") * 1024
    before_anon = _status_kib("RssAnon") * 1024
    with PeakMemory() as peak:
        start, start_cpu = time.perf_counter(), time.process_time()
        model = LongComBat(random_slope="time").fit(X, sites=sites, covariates=covariates, subjects=subjects)
        model.transform(X, sites=sites, covariates=covariates, subjects=subjects)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    steps = model.em_iterations_
    return {"name": "surfharm-long-slope", "dtype": "float64", "features": args.features, "scans": args.scans,
            "times": [elapsed], "cpu": [elapsed_cpu], "input_bytes": int(X.nbytes), "rss_before": before,
            "peak_rss": peak.rss, "anon_before": before_anon, "peak_anon": peak.anon,
            "em_steps": [float(np.median(steps)), float(np.percentile(steps, 99)), int(steps.max())]}


# -- the parent: spawn, collect, report ---------------------------------------------------------------

def spawn(name: str, args, dtype: str, repeats: int) -> dict | None:
    cmd = [sys.executable, __file__, "--child", name, "--dtype", dtype, "--features", str(args.features),
           "--scans", str(args.scans), "--repeats", str(repeats), "--np-subset", str(args.np_subset),
           "--gam-subset", str(args.gam_subset), "--probe", str(args.probe),
           "--stream-scans", str(args.stream_scans), "--stream-file", str(args.stream_file or "")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {name} ({dtype}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    _print_row(result)
    return result


def _print_row(r: dict) -> None:
    med = statistics.median(r["times"])
    above = (r["peak_rss"] - r["rss_before"]) / r["input_bytes"]
    above_anon = (r["peak_anon"] - r["anon_before"]) / r["input_bytes"]
    cpu = statistics.median(r["cpu"]) if r.get("cpu") else float("nan")
    line = (f"  {r['name']:<26} {r['dtype']:<8} {r['scans']:>5} x {r['features']:<7} median {med:8.2f} s "
            f"(CPU {cpu:7.2f} s, n={len(r['times'])})  peak RSS {r['peak_rss'] / 2**30:5.2f} GB  above input "
            f"{above:4.2f}x (anonymous {above_anon:4.2f}x) of {r['input_bytes'] / 2**20:.0f} MB")
    if "em_steps" in r:
        line += (f"\n      SQUAREM-EM cycles per feature: median {r['em_steps'][0]:.0f}, 99th percentile "
                 f"{r['em_steps'][1]:.0f}, max {r['em_steps'][2]}")
    if "np_max_error_std_units" in r:
        line += (f"\n      non-parametric EB vs exact sum on {r['np_probe']} features x 4 sites: max error "
                 f"{r['np_max_error_std_units']:.2e} (standardised), {r['np_max_error_data_units']:.2e} (data units); "
                 f"grids per site {r.get('np_grids')}")
    print(line, flush=True)


def _write_stream_file(path: Path, n_scans: int, n_features: int) -> None:
    X = np.memmap(path, dtype=np.float32, mode="w+", shape=(n_scans, n_features))
    block = 250
    for start in range(0, n_scans, block):
        stop = min(n_scans, start + block)
        X[start:stop], *_ = make_data(stop - start, n_features, np.float32, seed=start)
    X.flush()
    del X


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--features", type=int, default=163842)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--np-subset", type=int, default=2000, help="features for neuroCombat's non-parametric EB")
    parser.add_argument("--gam-subset", type=int, default=40, help="features for neuroHarmonize's GAM")
    parser.add_argument("--probe", type=int, default=500, help="features checked against the exact sum")
    parser.add_argument("--stream-scans", type=int, default=5000)
    parser.add_argument("--stream-file", default=None)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: param,peers,np,gam,stream,long")
    parser.add_argument("--quick", action="store_true", help="10242 features, 1000 streamed scans")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return 0
    if args.quick:
        args.features, args.stream_scans, args.repeats = 10242, 1000, 2
    skip = set(filter(None, args.skip.split(",")))
    print(f"ComBat benchmark: {args.scans} scans x {args.features} features, 4 sites, age + sex; "
          f"median of {args.repeats}; numpy {np.__version__}, {os.cpu_count()} CPUs", flush=True)
    results = {}
    for dtype in () if "param" in skip else ("float64", "float32"):
        print(f"parametric EB, {dtype}:")
        results["surfharm", dtype] = spawn("surfharm", args, dtype, args.repeats)
        spawn("surfharm-inplace", args, dtype, args.repeats)
        if "peers" not in skip:
            results["neurocombat", dtype] = spawn("neurocombat", args, dtype, args.repeats)
            results["neuroharmonize", dtype] = spawn("neuroharmonize", args, dtype, args.repeats)
        ours = results["surfharm", dtype]
        for peer in ("neurocombat", "neuroharmonize"):
            theirs = results.get((peer, dtype))
            if ours and theirs:
                ratio = statistics.median(theirs["times"]) / statistics.median(ours["times"])
                mem = (theirs["peak_rss"] - theirs["rss_before"]) / max(ours["peak_rss"] - ours["rss_before"], 1)
                print(f"    {peer} / surfharm: time {ratio:.1f}x, memory above input {mem:.1f}x")
    if "np" not in skip:
        print("non-parametric EB, float64:")
        ours = spawn("surfharm-np", args, "float64", 1)
        if "peers" not in skip:
            theirs = spawn("neurocombat-np-subset", args, "float64", 1)
            if ours and theirs:
                extrapolated = statistics.median(theirs["times"]) * (args.features / args.np_subset) ** 2
                print(f"    neuroCombat non-parametric extrapolated (quadratic) to {args.features} features: "
                      f"{extrapolated / 3600:.1f} h = {extrapolated / statistics.median(ours['times']):.0f}x surfharm")
    if "gam" not in skip:
        print("ComBat-GAM, one smooth term (age), float64:")
        ours = spawn("surfharm-gam", args, "float64", args.repeats)
        if "peers" not in skip:
            theirs = spawn("neuroharmonize-gam-subset", args, "float64", 1)
            if ours and theirs:
                per_feature = statistics.median(theirs["times"]) / args.gam_subset
                print(f"    neuroHarmonize GAM: {per_feature:.3f} s per feature, extrapolated to {args.features}: "
                      f"{per_feature * args.features / 3600:.1f} h = "
                      f"{per_feature * args.features / statistics.median(ours['times']):.0f}x surfharm")
    if "long" not in skip:
        print("longitudinal ComBat, random intercept and slope on time (60 subjects), float64, fit + transform:")
        spawn("surfharm-long-slope", args, "float64", 1)
    if "stream" not in skip:
        print(f"streamed fit over a float32 memmap, {args.stream_scans} scans x {args.features}:")
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            args.stream_file = Path(tmp) / "maps.f32"
            _write_stream_file(args.stream_file, args.stream_scans, args.features)
            spawn("surfharm-stream", args, "float32", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
