"""Volumetric methods: agreement and speed against intensity-normalization, scores, cohort memory.

Parts (all by default except ``memory``):

* ``agreement``: surfharm's WhiteStripe, Nyul and z-score against the intensity-normalization
  package (PyPI, v3) on the same simulated scans (MNI152 fixture, 2 mm) and masks. Tolerances:
    - z-score: the same formula (mean and sd with ddof=0 inside the mask): max |difference| <= 1e-4;
    - Nyul: the same landmarks (1, 10, ..., 90, 99th percentile), scale 1 to 100 and end-segment
      extension: max |difference| <= 1e-3 on the 1-100 scale;
    - WhiteStripe: both find the white-matter mode on a smoothed histogram, but with different
      smoothers (intensity-normalization: Gaussian KDE evaluated on 80 points up to the 96th
      percentile; surfharm: binned Gaussian KDE on 1024 bins up to the 99th), so the mode, hence
      the stripe, differs by up to about one of their grid steps. Tolerance: stripe mean within
      1 % and stripe sd within 15 % of theirs; the outputs then agree to within 0.15 * |x| + 0.5
      stripe-sd units (printed: median and max over scans of the differences).
* ``speed``: median seconds per scan (fit + transform) of each method, both packages, run in turn.
* ``scores``: :func:`surfharm.evaluate.volumetric_scenario.run_volumetric_benchmark` on a 2 mm scenario.
* ``memory``: peak resident memory of voxel-wise ComBat fitted on N NIfTI scans (default 200) at
  2 mm and applied with outputs written one by one, in a fresh process.

Run the peer comparison in the benchmark environment:

    pip install intensity-normalization==3.0.1   # the peer, in the benchmark environment
    python benchmarks/bench_volumetric.py
    python benchmarks/bench_volumetric.py --parts memory --scans 200
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, markdown_table, peak_rss_mb, run_in_fresh_process  # noqa: E402

from surfharm.harmonize.volumetric import Nyul, WhiteStripe, ZScore  # noqa: E402
from surfharm.simulate.volumes import simulate_volumetric_cohort  # noqa: E402


def _peer():
    try:
        import intensity_normalization as inorm
    except ImportError:
        return None
    return inorm


def agreement(cohort, inorm) -> list[list]:
    rows = []
    images, masks = cohort.images, cohort.masks
    wrap = inorm.create_image
    # z-score
    diffs = []
    for img, m in zip(images, masks):
        ours = ZScore().transform([img], masks=[m])[0]
        theirs = inorm.ZScoreNormalizer().fit_transform(wrap(img), wrap(m.astype(np.float32))).get_data()
        diffs.append(np.abs(ours[m] - theirs[m]).max())
    rows.append(["z-score", "max abs difference (z units)", f"{np.median(diffs):.2e}", f"{np.max(diffs):.2e}", "1e-4"])
    # Nyul
    ours_nyul = Nyul().fit(images, masks=masks)
    peer_nyul = inorm.NyulNormalizer()
    peer_nyul.fit_population([wrap(i) for i in images], [wrap(m.astype(np.float32)) for m in masks])
    scale_diff = np.abs(ours_nyul.standard_scale_ - peer_nyul.standard_scale).max()
    diffs = []
    for img, m in zip(images, masks):
        ours = ours_nyul.transform([img], masks=[m])[0]
        theirs = peer_nyul.transform(wrap(img), wrap(m.astype(np.float32))).get_data()
        diffs.append(np.abs(ours[m] - theirs[m]).max())
    rows.append(["nyul", "standard scale max abs difference", f"{scale_diff:.2e}", f"{scale_diff:.2e}", "1e-3"])
    rows.append(["nyul", "max abs difference (1-100 scale)", f"{np.median(diffs):.2e}", f"{np.max(diffs):.2e}", "1e-3"])
    # WhiteStripe
    mean_rel, sd_rel, out_diff = [], [], []
    for img, m in zip(images, masks):
        ws = WhiteStripe()
        mean, sd = ws.stripe_stats(img[m].astype(np.float64))
        peer = inorm.WhiteStripeNormalizer()
        theirs = peer.fit_transform(wrap(img), wrap(m.astype(np.float32))).get_data()
        ours = ws.transform([img], masks=[m])[0]
        mean_rel.append(abs(mean - peer.mean) / abs(peer.mean))
        sd_rel.append(abs(sd - peer.std) / peer.std)
        out_diff.append(float(np.median(np.abs(ours[m] - theirs[m]))))
    rows.append(["white-stripe", "stripe mean, relative difference", f"{np.median(mean_rel):.2e}",
                 f"{np.max(mean_rel):.2e}", "1e-2"])
    rows.append(["white-stripe", "stripe sd, relative difference", f"{np.median(sd_rel):.2e}",
                 f"{np.max(sd_rel):.2e}", "0.15"])
    rows.append(["white-stripe", "median abs output difference (stripe-sd units)", f"{np.median(out_diff):.3f}",
                 f"{np.max(out_diff):.3f}", "-"])
    return rows


def speed(cohort, inorm, repeats: int) -> list[list]:
    images, masks = cohort.images, cohort.masks
    fmasks = [m.astype(np.float32) for m in masks]
    wrap = inorm.create_image
    n = len(images)

    def per_scan(fn):
        return lambda: [fn(i) for i in range(n)]

    cases = {
        "z-score": (per_scan(lambda i: ZScore().transform([images[i]], masks=[masks[i]])),
                    per_scan(lambda i: inorm.ZScoreNormalizer().fit_transform(wrap(images[i]), wrap(fmasks[i])))),
        "white-stripe": (per_scan(lambda i: WhiteStripe().transform([images[i]], masks=[masks[i]])),
                         per_scan(lambda i: inorm.WhiteStripeNormalizer().fit_transform(wrap(images[i]),
                                                                                         wrap(fmasks[i])))),
        "nyul (fit on all + transform all)": (
            lambda: Nyul().fit(images, masks=masks).transform(images, masks=masks),
            lambda: _peer_nyul(inorm, images, fmasks)),
    }
    rows = []
    for name, (ours, theirs) in cases.items():
        t = interleaved_medians({"surfharm": ours, "peer": theirs}, repeats)
        rows.append([name, f"{1e3 * t['surfharm'] / n:.0f}", f"{1e3 * t['peer'] / n:.0f}",
                     f"{t['surfharm'] / t['peer']:.2f}"])
    return rows


def _peer_nyul(inorm, images, fmasks):
    wrap = inorm.create_image
    norm = inorm.NyulNormalizer()
    norm.fit_population([wrap(i) for i in images], [wrap(m) for m in fmasks])
    return [norm.transform(wrap(i), wrap(m)) for i, m in zip(images, fmasks)]


def scores(seed: int) -> str:
    import pandas as pd

    from surfharm.evaluate.volumetric_scenario import build_volumetric_scenario, run_volumetric_benchmark

    scenario = build_volumetric_scenario(n_sites=3, n_train_subjects=6, n_test_subjects=3, step=1, seed=seed)
    table = run_volumetric_benchmark(scenario=scenario)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        return table.drop(columns=["unit_gain", "unit_offset"]).round(4).to_string(index=False)


def memory(n_scans: int) -> dict:
    """Write ``n_scans`` 2 mm scans (in a child process), then fit/apply voxel-wise ComBat here."""
    with tempfile.TemporaryDirectory(prefix="surfharm-bench-") as tmp:
        run_in_fresh_process(__file__, ["--write-cohort", tmp, "--scans", str(n_scans)])
        return run_in_fresh_process(__file__, ["--combat-on", tmp])


def _write_cohort(folder: str, n_scans: int) -> None:
    """Child process: a 4-site cohort of ``n_scans`` scans as uncompressed NIfTI + one common mask."""
    import nibabel as nib

    from surfharm.simulate.volumes import DEFAULT_SCANNERS, scan, simulate_subject, smooth_field, _template

    rng = np.random.default_rng(0)
    _, _, _, _, affine = _template(1)
    n_subjects = 20
    subjects = [simulate_subject(rng, rng.standard_normal()) for _ in range(n_subjects)]
    patterns = [smooth_field(subjects[0][0].shape, 20.0, rng) for _ in DEFAULT_SCANNERS]
    common = np.logical_and.reduce([s[1] for s in subjects])
    nib.save(nib.Nifti1Image(common.astype(np.uint8), affine), f"{folder}/mask.nii")
    rows = []
    for i in range(n_scans):
        k = i % len(DEFAULT_SCANNERS)
        truth, mask, _ = subjects[i % n_subjects]
        data = scan(truth, mask, DEFAULT_SCANNERS[k], patterns[k], rng, 2.0)
        nib.save(nib.Nifti1Image(data, affine), f"{folder}/scan{i:04d}.nii")
        rows.append({"site": f"scanner{k + 1}", "age": float(20 + i % 60)})
    Path(folder, "table.json").write_text(json.dumps(rows))
    print(json.dumps({"written": n_scans}))


def _combat_on(folder: str) -> None:
    """Child process: VoxelComBat fit + apply from files; report peak RSS and the data size."""
    import pandas as pd

    from surfharm.harmonize.volumetric import VoxelComBat
    from surfharm.io.nifti import load_mask, load_volume, save_volume

    files = sorted(str(p) for p in Path(folder).glob("scan*.nii"))
    table = pd.DataFrame(json.loads(Path(folder, "table.json").read_text()))
    mask_path = f"{folder}/mask.nii"
    n_voxels = int(load_mask(mask_path, load_volume(files[0])).sum())
    baseline = peak_rss_mb()
    start = time.perf_counter()
    est = VoxelComBat(normalize="white-stripe").fit(files, sites=table["site"], covariates=table[["age"]],
                                                    masks=mask_path)
    fit_s = time.perf_counter() - start
    out_dir = Path(folder, "out")
    out_dir.mkdir()
    start = time.perf_counter()
    for path, data in zip(files, est.transform_iter(files, sites=table["site"], covariates=table[["age"]],
                                                    masks=mask_path)):
        save_volume(data, out_dir / Path(path).name, like=path, inputs=files)
    apply_s = time.perf_counter() - start
    print(json.dumps({"scans": len(files), "voxels_in_mask": n_voxels, "grid": list(load_volume(files[0]).data.shape),
                      "float32_matrix_mb": 4 * len(files) * n_voxels / 1e6,
                      "float32_all_volumes_mb": 4 * len(files) * load_volume(files[0]).data.size / 1e6,
                      "peak_rss_mb": peak_rss_mb(), "rss_before_fit_mb": baseline,
                      "fit_s": fit_s, "apply_and_write_s": apply_s}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["agreement", "speed", "scores"],
                        choices=["agreement", "speed", "scores", "memory"])
    parser.add_argument("--subjects", type=int, default=4, help="traveling subjects of the agreement/speed cohort")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scans", type=int, default=200, help="scans of the memory part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-cohort", help=argparse.SUPPRESS)
    parser.add_argument("--combat-on", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_cohort:
        _write_cohort(args.write_cohort, args.scans)
        return 0
    if args.combat_on:
        _combat_on(args.combat_on)
        return 0
    need_peer = {"agreement", "speed"} & set(args.parts)
    inorm = _peer()
    if need_peer:
        if inorm is None:
            print("intensity-normalization is not installed: skipping the agreement and speed parts "
                  "(pip install intensity-normalization==3.0.1 in the benchmark environment)")
        else:
            import intensity_normalization

            cohort = simulate_volumetric_cohort(3, args.subjects, traveling=True, step=1, seed=args.seed)
            n = len(cohort.images)
            print(f"cohort: {n} scans, grid {cohort.images[0].shape} (2 mm), "
                  f"{int(np.mean([m.sum() for m in cohort.masks]))} brain voxels per scan; "
                  f"intensity-normalization {intensity_normalization.__version__}, numpy {np.__version__}")
            if "agreement" in args.parts:
                print("\n## Agreement with intensity-normalization (median and max over scans)\n")
                print(markdown_table(["method", "quantity", "median", "max", "tolerance"], agreement(cohort, inorm)))
            if "speed" in args.parts:
                print(f"\n## Speed, ms per scan (median of {args.repeats} interleaved runs)\n")
                print(markdown_table(["method", "surfharm ms", "intensity-normalization ms", "ratio"],
                                     speed(cohort, inorm, args.repeats)))
    if "scores" in args.parts:
        print("\n## Scores on the 2 mm scenario (3 scanners, 6 training + 3 test traveling subjects)\n")
        print(scores(args.seed))
    if "memory" in args.parts:
        print(f"\n## Voxel-wise ComBat on {args.scans} NIfTI scans at 2 mm (fresh process)\n")
        print(json.dumps(memory(args.scans), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
