"""SAN at fsaverage5: one hemisphere (10242 vertices) x 200 scans, 4 sites of 50, age + sex.

Measures, once each (the exact solve is minutes, not milliseconds, so no repeats):

* the geodesic neighbourhoods (5 mm on the fsaverage5 pial surface), computed and written to the
  cache, then read back from memory;
* ``fit`` (both stages' estimates) and ``transform`` of the 200 scans (one exact 10242 x 10242
  Cholesky factorisation per site);
* with ``--approx``: the subset-of-data approximation conditioned on the fsaverage4 vertices
  (2562), its time and its error against the exact solve (same hyperparameters).

Peak resident memory is reported from the kernel's high-water mark.

    python benchmarks/bench_san.py            # fsaverage5, 200 scans
    python benchmarks/bench_san.py --approx   # also the approximation's error
    python benchmarks/bench_san.py --quick    # level 4, 60 scans: checks the script
    python benchmarks/bench_san.py --level 7 --n-per-site 10   # fsaverage (163842 vertices), 40 scans

Above fsaverage5 (``--level 6`` or ``7``) SAN's default is the subset-of-data approximation
conditioned on the 10242 fsaverage5 vertices, so the ``fit_s`` and ``transform_s`` figures are of
that approximation; ``--approx`` (its error against the exact solve) is for level 5 only.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _common import peak_rss_mb  # noqa: F401  (also puts the repository on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--approx", action="store_true")
    parser.add_argument("--n-per-site", type=int, default=50)
    parser.add_argument("--level", type=int, default=5, choices=(4, 5, 6, 7),
                        help="mesh level (5 = fsaverage5, 7 = fsaverage)")
    args = parser.parse_args()
    if args.approx and args.level > 5:
        parser.error("--approx compares with the exact solve: levels 4 and 5 only")

    from surfharm.harmonize import _surface_geometry as geo
    from surfharm.harmonize.san import SAN
    from surfharm.simulate import presets, simulate_cohort

    level, n_per_site = (4, 15) if args.quick else (args.level, args.n_per_site)
    sim = simulate_cohort(presets.adult(level=level, n_per_site=n_per_site, n_traveling=0))
    X = np.asarray(sim.maps, dtype=np.float64)
    sites = sim.table["site"].to_numpy()
    cov = sim.table[["age", "female"]]
    out = {"level": level, "exact_max_vertices": SAN().exact_max_vertices,
           "n_scans": int(X.shape[0]), "n_vertices": int(X.shape[1]),
           "cortex_vertices": int(np.isfinite(X).all(axis=0).sum())}

    geo._neighbourhoods_cached.cache_clear()
    start = time.perf_counter()
    geo.geodesic_neighbourhoods(level, 5.0, "pial", "lh")
    out["neighbourhoods_s"] = time.perf_counter() - start
    start = time.perf_counter()
    geo.geodesic_neighbourhoods(level, 5.0, "pial", "lh")
    out["neighbourhoods_cached_s"] = time.perf_counter() - start

    model = SAN()
    start = time.perf_counter()
    model.fit(X, sites=sites, covariates=cov)
    out["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    exact = model.transform(X, sites=sites, covariates=cov)
    out["transform_s"] = time.perf_counter() - start
    out["mean_neighbourhood_size"] = model.mean_neighbourhood_size_
    out["unshrunk_vertices"] = model.n_unshrunk_
    out["kernel_range_mm"] = model.kernel_params_[:, 0].round(2).tolist()
    out["noise_fraction"] = (model.noise_var_ / (model.noise_var_ + model.signal_var_)).round(3).tolist()

    if args.approx:
        approx = SAN(exact_max_vertices=2562 if level == 5 else 642).fit(X, sites=sites, covariates=cov)
        for name in ("kernel_params_", "signal_var_", "noise_var_", "pooled_signal_var_", "pooled_noise_var_"):
            setattr(approx, name, getattr(model, name))
        start = time.perf_counter()
        result = approx.transform(X, sites=sites, covariates=cov)
        out["approx_transform_s"] = time.perf_counter() - start
        live = np.isfinite(X).all(axis=0)
        err, change = (result - exact)[:, live], (exact - X)[:, live]
        out["approx_rms_error_mm"] = float(np.sqrt(np.mean(err**2)))
        out["approx_max_error_mm"] = float(np.abs(err).max())
        out["rms_correction_mm"] = float(np.sqrt(np.mean(change**2)))
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
