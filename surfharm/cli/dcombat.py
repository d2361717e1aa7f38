"""``surfharm dcombat site-summary|combine|apply``: distributed ComBat, sites sharing only summaries."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples (sites A and B keep their scans; a coordinator combines summaries):
  # round 0, at each site: covariate columns, levels and knot quantiles of the smooth terms
  surfharm dcombat site-summary --roi-table A.csv --keep age sex --smooth age --out A.covariates.npz
  # coordinator: the shared design and the ComBat options
  surfharm dcombat combine A.covariates.npz B.covariates.npz --reference-site A --out plan.npz
  # round 1, at each site: D'D and D'Y blocks
  surfharm dcombat site-summary --roi-table A.csv --from plan.npz --out A.design.npz
  surfharm dcombat combine A.design.npz B.design.npz --from plan.npz --out design.npz
  # round 2, at each site: sums of residuals and of their squares
  surfharm dcombat site-summary --roi-table A.csv --from design.npz --out A.residuals.npz
  surfharm dcombat combine A.residuals.npz B.residuals.npz --from design.npz --out model.npz
  # each site harmonizes its own scans with the model (equal to pooled ComBat)
  surfharm dcombat apply --model model.npz --roi-table A.csv --output A.harmonized.csv

Each site's table holds that site's scans only (its 'site' column, or --site-column, names it). The
summaries are .npz files of sums (no value of any single scan); see surfharm.harmonize.distributed.
Knots of smooth terms: outer knots at the pooled minimum and maximum, inner knots the scan-weighted
average of the sites' quantiles.
"""


def _add_inputs(parser) -> None:
    source = parser.add_argument_group("input (one of): the site's own scans")
    source.add_argument("--roi-table", help="ROI table: aparcstats2table TSV or CSV, one row per scan")
    source.add_argument("--mgh", help="stacked MGH/MGZ, one frame per scan (with --fsgd)")
    parser.add_argument("--fsgd", help="FSGD file of --mgh (frame i = i-th Input line)")
    parser.add_argument("--participants", help="table (CSV/TSV) joined by subject: site, age, sex, ...")
    parser.add_argument("--site-column", help="column holding the site (default 'site', else the FSGD class)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "dcombat", help="distributed ComBat: sites share summaries, never scans",
        description="ComBat fitted from per-site summary statistics (d-ComBat): equal to pooled ComBat.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    site = actions.add_parser("site-summary", help="at a site: the summary of its scans for the next round",
                              epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_inputs(site)
    site.add_argument("--from", dest="source", metavar="FILE",
                      help="the coordinator's last file (plan.npz for round 1, design.npz for round 2); "
                           "without it, round 0 (covariates)")
    site.add_argument("--keep", nargs="+", default=[], metavar="COLUMN", help="round 0: covariates to preserve")
    site.add_argument("--smooth", nargs="+", default=[], metavar="COLUMN",
                      help="round 0: covariates modelled by a spline")
    site.add_argument("--spline-df", type=int, default=5, help="round 0: spline columns per smooth covariate")
    site.add_argument("--out", required=True, help="summary file to write (.npz)")
    site.set_defaults(func=run_site_summary)

    combine = actions.add_parser("combine", help="at the coordinator: combine the sites' summaries of one round",
                                 epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    combine.add_argument("summaries", nargs="+", help="one summary file per site (same round)")
    combine.add_argument("--from", dest="source", metavar="FILE",
                         help="the coordinator's file of the previous round (rounds 1 and 2)")
    combine.add_argument("--reference-site", help="round 0: harmonize to this site")
    combine.add_argument("--no-eb", action="store_true", help="round 0: no empirical Bayes")
    combine.add_argument("--nonparametric", action="store_true", help="round 0: non-parametric empirical Bayes")
    combine.add_argument("--mean-only", action="store_true", help="round 0: correct the location only")
    combine.add_argument("--out", required=True, help="plan.npz (round 0), design.npz (round 1) or the model (round 2)")
    combine.set_defaults(func=run_combine)

    apply = actions.add_parser("apply", help="at a site: harmonize its scans with the combined model",
                               epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_inputs(apply)
    apply.add_argument("--model", required=True, help="model written by the last 'combine'")
    apply.add_argument("-o", "--output", required=True, help="harmonized data to write")
    apply.set_defaults(func=run_apply)


def _read(args):
    """The site's scans as a Cohort (ROI table, or stacked MGH + FSGD)."""
    from surfharm.cli import CLIError
    from surfharm.cohort import Cohort

    if bool(args.mgh) == bool(args.roi_table):
        raise CLIError("give exactly one input: --roi-table, or --mgh with --fsgd")
    if args.mgh:
        if not args.fsgd:
            raise CLIError("--mgh needs --fsgd (the FSGD file listing its frames)")
        return Cohort.from_stacked_mgh(args.mgh, args.fsgd, site_column=args.site_column,
                                       participants=args.participants)
    return Cohort.from_roi_table(args.roi_table, args.participants, site_column=args.site_column or "site")


def _site_cohort(args):
    from surfharm.cli import CLIError

    cohort = _read(args)
    labels = sorted({str(s) for s in cohort.sites})
    if len(labels) != 1:
        raise CLIError(f"the input holds scans of {len(labels)} sites {labels}; each site summarises its own scans "
                       "only: give one table per site")
    return cohort, cohort.sites[0]


def _check_out(path, inputs) -> None:
    from pathlib import Path

    from surfharm.cli import CLIError

    if Path(path).suffix != ".npz":
        raise CLIError(f"--out {path}: d-ComBat files end in .npz")
    for other in inputs:
        if other and Path(other).resolve() == Path(path).resolve():
            raise CLIError(f"--out {path} is one of the inputs; choose a new file name")


def run_site_summary(args) -> int:
    from surfharm.cli import CLIError
    from surfharm.harmonize import distributed as dc

    _check_out(args.out, [args.mgh, args.roi_table, args.fsgd, args.participants, args.source])
    if args.source is None:
        cohort, site = _site_cohort(args)
        keep = list(args.keep) + [c for c in args.smooth if c not in args.keep]
        covariates = cohort.covariates(keep) if keep else None
        summary = dc.covariate_summary(covariates, site=site, n_scans=cohort.n_scans, smooth_terms=tuple(args.smooth),
                                       spline_df=args.spline_df)
    else:
        previous = dc.load_summary(args.source)
        if previous.stage not in ("plan", "design-combined"):
            raise CLIError(f"--from {args.source} is a {previous.stage!r} file; expected the coordinator's plan.npz "
                           "or design.npz")
        cohort, site = _site_cohort(args)
        columns = previous.meta["covariates"]["columns"]
        covariates = cohort.covariates(columns) if columns else None
        maps = cohort.maps
        if previous.stage == "plan":
            summary = dc.design_summary(previous, maps, covariates, site=site)
        else:
            summary = dc.residual_summary(previous, maps, covariates, site=site)
    summary.save(args.out)
    print(f"wrote {args.out} ({summary.stage} summary of site {summary.site})")
    return 0


def run_combine(args) -> int:
    from surfharm.cli import CLIError
    from surfharm.harmonize import distributed as dc

    _check_out(args.out, [*args.summaries, args.source])
    summaries = [dc.load_summary(path) for path in args.summaries]
    stage = summaries[0].stage
    if stage == "covariates":
        plan = dc.make_plan(summaries, eb=not args.no_eb, parametric=not args.nonparametric,
                            mean_only=args.mean_only, reference_site=args.reference_site)
        plan.save(args.out)
        print(f"wrote {args.out} (plan: sites {plan.meta['sites']}; send it to every site)")
        return 0
    if args.source is None:
        raise CLIError(f"combining {stage!r} summaries needs --from (the coordinator's file of the previous round)")
    if stage == "design":
        combined = dc.combine_design(dc.load_summary(args.source, "plan"), summaries)
        combined.save(args.out)
        print(f"wrote {args.out} (pooled fit; send it to every site for round 2)")
        return 0
    if stage == "residuals":
        model = dc.combine_residuals(dc.load_summary(args.source, "design-combined"), summaries)
        model.save(args.out)
        print(f"wrote {args.out} (ComBat model of sites {model.sites_}; each site applies it to its own scans)")
        return 0
    raise CLIError(f"{args.summaries[0]} is a {stage!r} file, not a site summary")


def run_apply(args) -> int:
    from pathlib import Path

    from surfharm.cli import CLIError
    from surfharm.harmonize import ComBat

    for path in (args.mgh, args.roi_table, args.fsgd, args.participants, args.model):
        if path and Path(path).resolve() == Path(args.output).resolve():
            raise CLIError(f"--output {args.output} is one of the inputs; choose a new file name")
    model = ComBat.load(args.model)
    cohort = _read(args)
    columns = model.encoder_.columns
    covariates = cohort.covariates(columns) if columns else None
    harmonized = model.transform(cohort.maps, sites=cohort.sites, covariates=covariates)
    for path in cohort.with_maps(harmonized).write(args.output, overwrite=True):
        print(f"wrote {path}")
    return 0
