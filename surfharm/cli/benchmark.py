"""``surfharm benchmark``: every harmonizer on the same data, the same metrics, one table."""
from __future__ import annotations

import argparse
import sys

EXAMPLE = """\
examples:
  # the quick preset (about a minute): baselines + ComBat, table and plots in bench-quick/
  surfharm benchmark --preset quick --out bench-quick

  # the default scenario (4 sites x 50 adults, fsaverage5) with chosen methods and options
  surfharm benchmark --preset adult --out bench-adult \\
      --methods raw mean-shift combat "combat-ref=combat:reference_site=A" "combat-noeb=combat:eb=false"

  # a longitudinal infant cohort with a scanner change; ComBat with a smooth age term
  surfharm benchmark --preset infant --out bench-infant \\
      --methods raw mean-std "combat-gam=combat:smooth_terms=[\\"log_age\\"]"

  # real ROI data (no ground truth: site-effect and biology metrics only)
  surfharm benchmark --roi-table openneuro_fs_dk_age_sex_ge20.csv.gz --site-column dataset --out bench-roi

  # a config file (JSON or TOML): {"scenario": "adult", "params": {"n_per_site": 80}, "methods": [...]}
  surfharm benchmark --config my_benchmark.json --out bench-mine

Methods are harmonizer names (see --list) written [LABEL=]NAME[:KEY=VALUE,...]; VALUE is JSON when it
parses, else text; KEY=@column passes that table column to fit/transform (e.g. subjects=@subject).
Writes results.csv, results.md, config.json, metrics.png and site_distributions.png into --out, and
prints the Markdown table.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="compare harmonizers on simulated or real data with the same metrics",
        description="Run harmonizers on one scenario (a simulation preset, a config file or an ROI table) and "
                    "report site effect left (leakage-safe cross-validated site prediction, vertex-wise tests), "
                    "biology kept (age/sex effects vs the truth) and traveling-subject agreement.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", "--scenario", dest="preset", metavar="NAME",
                        help="a registered scenario: quick, adult (default), adult-nonlinear, adult-resolution, "
                             "adult-confounded, infant, volumetric (see --list)")
    source.add_argument("--config", help="benchmark config file (.json or .toml)")
    source.add_argument("--roi-table", help="CSV/TSV (may be .gz) of ROI values with site, age and sex columns")
    parser.add_argument("--out", help="output folder (created if missing); omit to only print the table")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="methods to run (default: raw, global-scaling, mean-shift, mean-std and the ComBat "
                             "family)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation and the folds (default 0)")
    parser.add_argument("--cv-repeats", type=int, default=1,
                        help="repeat the cross-validation with this many fold splits and average (default 1)")
    parser.add_argument("--level", type=int, help="simulation presets: icosahedral level of the maps (3-7)")
    parser.add_argument("--n-per-site", type=int, help="simulation presets: subjects per site")
    roi = parser.add_argument_group("ROI table options")
    roi.add_argument("--site-column", default="site", help="column naming the site/scanner (default site)")
    roi.add_argument("--subject-column", default="subject", help="subject id column (default subject)")
    roi.add_argument("--age-column", default="age", help="age column, years (default age)")
    roi.add_argument("--sex-column", default="sex", help="sex column: F/M, female/male or 1 = female (default sex)")
    roi.add_argument("--feature-suffix", default="_thickness",
                     help="feature columns are those ending in this (default _thickness)")
    roi.add_argument("--age-terms", choices=("linear", "quadratic"), default="quadratic",
                     help="age model of the covariates (default quadratic: lifespan data)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument("--list", action="store_true", help="list scenarios and harmonizers, then exit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    from surfharm._progress import add_progress_flag
    add_progress_flag(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from surfharm import harmonize
    from surfharm.evaluate import benchmark, scenarios
    from surfharm.evaluate.methods import MethodSpec

    if args.list:
        print("scenarios:")
        for name, description in scenarios.available_scenarios().items():
            print(f"  {name:18s} {description}")
        print("harmonizers: " + ", ".join(harmonize.available()))
        return 0
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    methods = [MethodSpec.parse(m) for m in args.methods] if args.methods else None
    if args.config:
        from pathlib import Path

        result = benchmark.run_config(benchmark.read_config(args.config), progress=progress,
                                      config_name=Path(args.config).stem)
    elif args.roi_table:
        data = scenarios.roi_table_data(args.roi_table, site_column=args.site_column,
                                        subject_column=args.subject_column, age_column=args.age_column,
                                        sex_column=args.sex_column or None, feature_suffix=args.feature_suffix,
                                        age_terms=args.age_terms)
        result = benchmark.run_benchmark(data, methods, n_splits=args.folds, seed=args.seed,
                                         cv_repeats=args.cv_repeats, progress=progress)
    else:
        params = {k: v for k, v in (("level", args.level), ("n_per_site", args.n_per_site)) if v is not None}
        result = benchmark.run_scenario(args.preset or "adult", methods, n_splits=args.folds, seed=args.seed,
                                        cv_repeats=args.cv_repeats, progress=progress, **params)
    if args.out:
        paths = benchmark.write_results(result, args.out, plots=not args.no_plots)
        print(benchmark.to_markdown(result))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    else:
        print(benchmark.to_markdown(result))
    return 0
