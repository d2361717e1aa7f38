"""``surfharm report``: one self-contained HTML page from a harmonization run folder."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  # the report of a run folder, written to RUN/report.html
  surfharm report runs/combat-2026-05-01

  # only ComBat's maps, drawn on the pial surface, infant ages on a log axis, to a chosen file
  surfharm report runs/infant --methods combat --surface pial --log-age --covariates log_age sex \\
      -o infant_report.html

run folder layout (what `surfharm harmonize` / `surfharm benchmark` write):
  RUN/table.csv          one row per scan (subject, site, session, age, sex...), in the maps' order
                         (also accepted: table.tsv, cohort.tsv, cohort.csv)
  RUN/maps/raw.npy       maps before harmonization (n_scans, n_vertices), NaN outside cortex
                         (or a stacked raw.mgh / raw.mgz, frame i = scan i)
  RUN/maps/<method>.npy  harmonized maps, one file per method (e.g. maps/combat.npy)
  RUN/metrics.csv        rows = methods (first column 'method'), columns = metrics
                         (results.csv, as `surfharm benchmark` writes it, is read when metrics.csv is absent)
  RUN/model.json         optional: model metadata (or model.npz from surfharm's model files)
  RUN/config.json        optional: the run's configuration, printed as it is
  RUN/run.json           optional: {"command": ..., "versions": {...}, "hemi": "lh", "surface": ..., "title": ...}
A folder needs maps (table + maps/raw.*) or a metrics table; a benchmark folder without maps gives a
report of its metrics and configuration.

The page embeds every image (no external file, no network): mail it or archive it as it is.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a harmonization run",
        description="Write one HTML file with the metrics table, renderings of site effects on the cortex "
                    "before and after harmonization, plots by site (distributions, PCA, age trajectories), "
                    "and the command and versions that produced the run.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run folder (layout below)")
    parser.add_argument("-o", "--output", help="HTML file to write (default RUN/report.html)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="harmonized maps to show (default: all)")
    parser.add_argument("--surface", help="pial, white, inflated or sphere (fsaverage5), or a surface file "
                                          "(default: run.json's, else inflated)")
    parser.add_argument("--hemi", choices=("lh", "rh", "both"), help="hemisphere of the maps (default: run.json's, "
                                                                     "else lh)")
    parser.add_argument("--metrics", help="metrics CSV to use instead of RUN/metrics.csv")
    parser.add_argument("--model", help="model metadata (JSON or .npz) to use instead of RUN/model.*")
    parser.add_argument("--covariates", nargs="*", metavar="COLUMN",
                        help="table columns the site maps and site test adjust for (default: age and sex when "
                             "present; give none to adjust for nothing), e.g. --covariates log_age sex")
    parser.add_argument("--title", help="title of the page")
    parser.add_argument("--no-render", action="store_true", help="skip the 3-D renderings (plots and tables only)")
    parser.add_argument("--age-label", default="age (years)", help="age axis label (default 'age (years)')")
    parser.add_argument("--log-age", action="store_true", help="age on a log axis (infant growth curves)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import shlex
    import sys

    from surfharm.viz.report import report_from_run

    extra = {}
    if args.title:
        extra["title"] = args.title
    if args.metrics:
        extra["metrics"] = args.metrics
    if args.model:
        extra["model"] = args.model
    if args.covariates is not None:
        extra["covariates"] = args.covariates
    out = report_from_run(args.run, args.output, methods=args.methods, surface=args.surface, hemi=args.hemi,
                          report_command=shlex.join(["surfharm", *sys.argv[1:]]), render=not args.no_render,
                          age_label=args.age_label, log_age=args.log_age, **extra)
    print(f"wrote {out}")
    return 0
