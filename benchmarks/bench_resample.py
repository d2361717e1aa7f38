"""Sphere-to-sphere resampling, 163842 -> 163842 vertices: surfharm vs s3pipe's resampleSphereSurf.

Both tools interpolate the same fields from an icosphere level 7 rotated by a fixed rotation onto the
unrotated level-7 icosphere (radius 100, as FreeSurfer spheres), in the same run. Reported: median wall
time of the full resampling (triangle location + weights + interpolation) and the maximum error against
the exact field values for a degree-1 spherical harmonic and a thickness-like smooth field.

Run from the benchmark environment (s3pipe installed); surfharm is imported from this checkout:

    # with s3pipe installed (pip install -e ".[bench]")
    python benchmarks/bench_resample.py [--repeats 5] [--peer-repeats 1]

Without s3pipe the peer rows are skipped.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.spatial.transform import Rotation  # noqa: E402
from scipy.special import sph_harm_y  # noqa: E402

from spherical_ops import icosphere  # noqa: E402
from surfharm.resample import SphereResampler  # noqa: E402


def real_sh(xyz: np.ndarray, l: int, m: int) -> np.ndarray:
    u = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    theta, phi = np.arccos(np.clip(u[:, 2], -1, 1)), np.arctan2(u[:, 1], u[:, 0])
    y = sph_harm_y(l, abs(m), theta, phi)
    return y.real if m == 0 else np.sqrt(2) * (y.real if m > 0 else y.imag)


def fields(xyz: np.ndarray) -> np.ndarray:
    """(N, 2): Y_11 (orthonormal, max 0.49) and 2.5 + 0.5 Y_11 + 0.3 Y_20 - 0.2 Y_3-2 (thickness-like, mm)."""
    y11 = real_sh(xyz, 1, 1)
    smooth = 2.5 + 0.5 * y11 + 0.3 * real_sh(xyz, 2, 0) - 0.2 * real_sh(xyz, 3, -2)
    return np.stack([y11, smooth], axis=1)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=7, help="icosahedral level of both spheres (7 = 163842 vertices)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of surfharm (median reported)")
    parser.add_argument("--peer-repeats", type=int, default=1, help="runs of s3pipe (about 30 s each at level 7)")
    parser.add_argument("--cohort-maps", type=int, default=100, help="maps resampled with one set of weights")
    args = parser.parse_args(argv)

    ico = icosphere(args.level)
    rotation = Rotation.from_euler("xyz", [0.3, 0.7, 1.1]).as_matrix()
    source = 100.0 * ico.vertices @ rotation.T
    target = 100.0 * ico.vertices
    feat = fields(source)
    exact = fields(target)
    print(f"# resampling {len(source)} -> {len(target)} vertices (icosphere level {args.level}, rotated), "
          f"2 fields; numpy {np.__version__}")

    rows = []
    t_ours, all_ours, ours = timed(lambda: SphereResampler((source, ico.faces), target)(feat.T).T, args.repeats)
    rows.append(("surfharm SphereResampler", t_ours, all_ours, np.abs(ours - exact).max(axis=0)))

    resampler = SphereResampler((source, ico.faces), target)
    maps = np.repeat(feat[:, 1][None, :], args.cohort_maps, axis=0).astype(np.float32)
    t_apply, _, _ = timed(lambda: resampler(maps), 3)

    try:
        from s3pipe.utils.interp_numpy import resampleSphereSurf
    except ImportError as exc:
        print(f"# s3pipe not importable ({exc}): peer rows skipped")
        resampleSphereSurf = None
    if resampleSphereSurf is not None:
        t_peer, all_peer, peer = timed(lambda: resampleSphereSurf(source, target, feat, faces=ico.faces),
                                       args.peer_repeats)
        rows.append(("s3pipe resampleSphereSurf", t_peer, all_peer, np.abs(np.asarray(peer) - exact).max(axis=0)))

    print("| tool | median time (s) | runs | max error Y_11 | max error smooth field (mm) |")
    print("|---|---|---|---|---|")
    for name, median, runs, err in rows:
        print(f"| {name} | {median:.3f} | {len(runs)} | {err[0]:.2e} | {err[1]:.2e} |")
    if len(rows) == 2:
        print(f"\nspeed-up surfharm vs s3pipe: {rows[1][1] / rows[0][1]:.1f}x (ratio of medians, same run)")
    print(f"surfharm, weights reused: {args.cohort_maps} maps applied in {t_apply:.3f} s "
          f"({1000 * t_apply / args.cohort_maps:.2f} ms per map)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
