"""Image-level harmonization on held-out traveling subjects of a simulated multi-contrast cohort.

Runs :func:`surfharm.evaluate.deep_image_scenario.run_deep_image_benchmark`: "raw" (the scans as
recorded), the intensity methods (white-stripe, nyul, ravel, voxel-combat; one model per contrast)
and every registered deep image method (deepharmony, mispel, calamiti, imunity, murd; missing ones
are skipped with a note), all fitted on the same training scans and scored on the same held-out
subjects (see the scenario module for the split and the metrics). Prints one table, the mean over
contrasts per method, with training and inference seconds.

    python benchmarks/bench_deep_images.py --quick          # a check, about a minute on 1 CPU thread
    python benchmarks/bench_deep_images.py                  # the small CPU configuration (default)
    python benchmarks/bench_deep_images.py --device cuda --full --out deep_images.csv

Configurations (scanners include one held out of training; subjects per training scanner):

* ``--quick``: 4 mm grid, 3 scanners, 2 training + 2 test traveling subjects, 2 + 2 others per scanner;
  deep methods get 150 training steps (``--steps``), 500 in the default configuration;
* default: 4 mm grid, 4 scanners, 3 + 2 traveling subjects, 4 + 4 others per scanner;
* ``--full``: 2 mm grid, 4 scanners, 6 + 3 traveling subjects, 12 + 6 others per scanner.

Deep methods get ``device``, ``steps``/``epochs`` (when their constructor takes them), the target scanner
(``target_site``) and the cohort's ``contrasts``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repository on sys.path)

CONFIGS = {
    "quick": {"n_scanners": 3, "n_train_traveling": 2, "n_test_traveling": 2, "n_train_per_scanner": 2,
              "n_test_per_scanner": 2, "step": 2},
    "default": {"n_scanners": 4, "n_train_traveling": 3, "n_test_traveling": 2, "n_train_per_scanner": 4,
                "n_test_per_scanner": 4, "step": 2},
    "full": {"n_scanners": 4, "n_train_traveling": 6, "n_test_traveling": 3, "n_train_per_scanner": 12,
             "n_test_per_scanner": 6, "step": 1},
}
#: Training steps given to the deep methods that take ``steps`` (None: the method's own default).
DEFAULT_STEPS = {"quick": 150, "default": 500, "full": None}
COLUMNS = ["method", "ssim_target", "psnr_target_db", "mae_target", "ssim_truth", "mae_truth", "volume_cv",
           "tissue_dice", "age_slope_ratio_gm_intensity", "age_slope_ratio_gm_volume", "scanner_auroc",
           "ssim_target_unseen", "fit_s", "transform_s"]


def deep_params(names, device: str, steps: int | None, epochs: int | None) -> dict:
    """Keyword arguments for each registered method that takes them (device, steps, epochs)."""
    from surfharm.harmonize import available, get

    params = {}
    known = set(available())
    for name in names:
        if name not in known:
            continue
        accepted = get(name)._get_param_names()  # the constructor's keyword names (scikit-learn)
        chosen = {"device": device} if "device" in accepted else {}
        if steps is not None and "steps" in accepted:
            chosen["steps"] = steps
        if epochs is not None and "epochs" in accepted:
            chosen["epochs"] = epochs
        if chosen:
            params[name] = chosen
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a ~1 minute check")
    size.add_argument("--full", action="store_true", help="the 2 mm configuration (meant for a GPU)")
    parser.add_argument("--device", default="cpu", help="torch device of the deep methods (cpu, cuda)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of the deep methods that take them (default: theirs)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of the deep methods that take them (default: theirs)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="registry names, separated by spaces or commas (default: all of them)")
    parser.add_argument("--per-contrast", action="store_true", help="also print one row per method and contrast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the per-contrast scores to this CSV file")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch

    from surfharm.evaluate.deep_image_scenario import (
        DEEP_METHODS,
        INTENSITY_METHODS,
        build_deep_image_scenario,
        run_deep_image_benchmark,
        summarize,
    )

    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = "quick" if args.quick else "full" if args.full else "default"
    steps = DEFAULT_STEPS[config] if args.steps is None else args.steps
    start = time.perf_counter()
    scenario = build_deep_image_scenario(**CONFIGS[config], seed=args.seed)
    build_s = time.perf_counter() - start
    table = scenario.cohort.table
    print(f"{config} configuration: {len(table)} sessions x {len(scenario.contrasts)} contrasts "
          f"({', '.join(scenario.contrasts)}), grid {scenario.cohort.masks[0].shape}, "
          f"{int(np.mean([m.sum() for m in scenario.cohort.masks]))} brain voxels; train {len(scenario.train_rows)}, "
          f"test {len(scenario.test_rows)}, unseen-scanner {len(scenario.unseen_rows)} sessions; "
          f"target {scenario.target_site}, held out {scenario.cohort.held_out_site}; simulated in {build_s:.1f} s")
    print(_common.machine_line())
    given = [name for item in args.methods or () for name in item.split(",") if name]
    names = given or list(INTENSITY_METHODS + DEEP_METHODS)
    params = deep_params(names, args.device, steps, args.epochs)
    scores = run_deep_image_benchmark(names, scenario, params, skip_errors=True)
    summary = summarize(scores)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print("\n## Mean over contrasts (target: the target scanner's scan of the same subject)\n")
        print(summary[COLUMNS].round(3).to_string(index=False))
        if args.per_contrast:
            print("\n## Per contrast\n")
            print(scores[["contrast"] + COLUMNS].round(3).to_string(index=False))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if args.out:
        scores.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
