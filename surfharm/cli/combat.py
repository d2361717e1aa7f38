"""``surfharm combat fit|apply``: ComBat on a stacked MGH + FSGD or on an ROI table."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  # vertex-wise: fit on a stacked fsaverage thickness file (mris_preproc) and its FSGD, keep age
  # (as a smooth curve) and sex, write the harmonized maps and the model
  surfharm combat fit --mgh lh.thickness.fsaverage.mgh --fsgd study.fsgd --participants participants.csv \\
      --keep age sex --smooth age --cortex lh.cortex.label \\
      --model combat_lh.npz --output lh.thickness.harmonized.fsaverage.mgh

  # apply the fitted model to new scans of the same sites (e.g. fit on controls, apply to patients)
  surfharm combat apply --model combat_lh.npz --mgh patients.lh.thickness.fsaverage.mgh \\
      --fsgd patients.fsgd --output patients.lh.thickness.harmonized.fsaverage.mgh

  # ROI table (aparcstats2table TSV or CSV) with a covariate CSV; harmonize to one site
  surfharm combat fit --roi-table lh.aparc.thickness.tsv --participants participants.csv \\
      --keep age sex --reference-site siteA --model combat_roi.npz --output lh.aparc.thickness.harmonized.csv

  # longitudinal cohort (repeated scans): subject random intercept
  surfharm combat fit --roi-table thickness.csv --keep age --longitudinal --model long.npz --output out.csv

  # ... and a random slope on time for each subject (its own rate of change is kept)
  surfharm combat fit --roi-table thickness.csv --keep age --longitudinal --random-slope age \
      --model long_slope.npz --output out.csv

Sites come from the table's 'site' column (or --site-column; for an FSGD without one, its class).
Covariates named by --keep must be columns of the table (FSGD variables or --participants columns).
Inputs are never overwritten; outputs are written atomically.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "combat", help="ComBat harmonization: fit a model, or apply a fitted one",
        description="ComBat (empirical Bayes location/scale) harmonization of surface maps or ROI tables.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fit = actions.add_parser("fit", help="learn the site effects (and harmonize the same scans)",
                             epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_inputs(fit)
    fit.add_argument("--model", required=True, help="model file to write (.npz)")
    fit.add_argument("-o", "--output", help="harmonized data to write (.mgh/.mgz for maps, .csv/.tsv for ROIs)")
    fit.add_argument("--keep", nargs="+", default=[], metavar="COLUMN",
                     help="covariates whose effects are preserved (e.g. age sex diagnosis)")
    fit.add_argument("--smooth", nargs="+", default=[], metavar="COLUMN",
                     help="covariates modelled by a cubic spline instead of a line (e.g. age in infants)")
    fit.add_argument("--spline-df", type=int, default=5, help="spline columns per smooth covariate (default 5)")
    fit.add_argument("--reference-site", help="harmonize to this site; its data are left unchanged")
    fit.add_argument("--no-eb", action="store_true", help="no empirical Bayes: per-site estimates as they are")
    fit.add_argument("--nonparametric", action="store_true", help="non-parametric empirical Bayes priors")
    fit.add_argument("--mean-only", action="store_true", help="correct the location only (allows one-scan sites)")
    fit.add_argument("--longitudinal", action="store_true",
                     help="repeated scans: subject random intercept (uses the table's subject column)")
    fit.add_argument("--random-slope", metavar="COLUMN",
                     help="with --longitudinal: also a random slope per subject on this numeric column "
                          "(e.g. age or years since baseline); the column is kept as a covariate too")
    fit.set_defaults(func=run_fit)

    apply = actions.add_parser("apply", help="harmonize scans with a fitted model",
                               epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_inputs(apply)
    apply.add_argument("--model", required=True, help="model file written by 'surfharm combat fit'")
    apply.add_argument("-o", "--output", required=True, help="harmonized data to write")
    apply.set_defaults(func=run_apply)


def _add_inputs(parser) -> None:
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--mgh", help="stacked MGH/MGZ, one frame per scan (with --fsgd)")
    source.add_argument("--roi-table", help="ROI table: aparcstats2table TSV or CSV, one row per scan")
    parser.add_argument("--fsgd", help="FSGD file of --mgh (frame i = i-th Input line)")
    parser.add_argument("--participants", help="table (CSV/TSV) joined by subject: site, age, sex, ...")
    parser.add_argument("--site-column", help="column holding the site (default 'site', else the FSGD class)")
    parser.add_argument("--cortex", help="label/annotation of --mgh's mesh; vertices outside become NaN")


def _read_cohort(args):
    from surfharm.cli import CLIError
    from surfharm.cohort import Cohort

    if bool(args.mgh) == bool(args.roi_table):
        raise CLIError("give exactly one input: --mgh (with --fsgd) or --roi-table")
    if args.mgh:
        if not args.fsgd:
            raise CLIError("--mgh needs --fsgd (the FSGD file listing its frames)")
        return Cohort.from_stacked_mgh(args.mgh, args.fsgd, site_column=args.site_column,
                                       participants=args.participants, cortex=args.cortex)
    return Cohort.from_roi_table(args.roi_table, args.participants, site_column=args.site_column or "site")


def _check_output(args) -> None:
    """Refuse an --output that names an input (or the model), before any work is done."""
    from pathlib import Path

    from surfharm.cli import CLIError

    if not args.output:
        return
    inputs = [Path(p).resolve() for p in (args.mgh, args.roi_table, args.fsgd, args.participants, args.model) if p]
    if Path(args.output).resolve() in inputs:
        raise CLIError(f"--output {args.output} is one of the inputs; choose a new file name")


def _write(cohort, harmonized, args) -> list:
    return cohort.with_maps(harmonized).write(args.output, overwrite=True)


def run_fit(args) -> int:
    from surfharm.harmonize import ComBat, LongComBat

    from surfharm.cli import CLIError

    if args.random_slope and not args.longitudinal:
        raise CLIError("--random-slope needs --longitudinal (a slope per subject needs repeated scans)")
    _check_output(args)
    cohort = _read_cohort(args)
    keep = list(args.keep)
    keep += [c for c in [*args.smooth, args.random_slope] if c and c not in keep]
    covariates = cohort.covariates(keep) if keep else None
    options = dict(eb=not args.no_eb, parametric=not args.nonparametric, mean_only=args.mean_only,
                   reference_site=args.reference_site, smooth_terms=tuple(args.smooth), spline_df=args.spline_df)
    model = LongComBat(**options, random_slope=args.random_slope) if args.longitudinal else ComBat(**options)
    extra = {"subjects": cohort.subjects} if args.longitudinal else {}
    model.fit(cohort.maps, cohort.sites, covariates, **extra)
    print(f"fitted {type(model).__name__} on {cohort.n_scans} scans x {cohort.n_features} features, "
          f"sites {model.sites_}, covariate columns {model.encoder_.names}")
    print(f"wrote {model.save(args.model)}")
    if args.output:
        harmonized = model.transform(cohort.maps, cohort.sites, covariates, **extra)
        for path in _write(cohort, harmonized, args):
            print(f"wrote {path}")
    return 0


def run_apply(args) -> int:
    from surfharm.harmonize.combat import load_model

    _check_output(args)
    model = load_model(args.model)
    cohort = _read_cohort(args)
    columns = model.encoder_.columns
    covariates = cohort.covariates(columns) if columns else None
    extra = {"subjects": cohort.subjects} if model.registry_name == "combat-long" else {}
    harmonized = model.transform(cohort.maps, cohort.sites, covariates, **extra)
    for path in _write(cohort, harmonized, args):
        print(f"wrote {path}")
    return 0
