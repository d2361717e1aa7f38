"""``surfharm harmonize``: from a SUBJECTS_DIR (or a stacked MGH, or an ROI table) to harmonized maps."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  # FreeSurfer subjects: surf/?h.thickness + surf/?h.sphere.reg, resampled to fsaverage (level 7);
  # participants.tsv has one row per scan: subject, site, age, sex (session for longitudinal data)
  surfharm harmonize --subjects-dir $SUBJECTS_DIR --participants participants.tsv \\
      --method combat --hemi lh rh --measure thickness --out harmonized

  # see what would be read and written first
  surfharm harmonize --subjects-dir $SUBJECTS_DIR --participants participants.tsv --out harmonized --dry-run

  # infants: keep age as a smooth curve, write maps in each subject's own vertex order too
  surfharm harmonize --subjects-dir $SUBJECTS_DIR --participants participants.tsv --method combat \\
      --keep age sex --smooth age --space both --out harmonized

  # S2SGAN between two sites (level 5 = fsaverage5 by default; max_steps bounds the training)
  surfharm harmonize --subjects-dir $SUBJECTS_DIR --participants participants.tsv \\
      --method "s2sgan:max_steps=2000,condition_on=[\\"age\\"]" --reference-site siteA --out s2sgan-run

  # the mris_preproc / mri_glmfit workflow: harmonize the stack before the GLM
  surfharm harmonize --mgh lh.thickness.fwhm10.fsaverage.mgh --fsgd study.fsgd --participants sites.csv \\
      --method combat --out harmonized-stack
  mri_glmfit --y harmonized-stack/lh/lh.thickness.harmonized.mgh --fsgd harmonized-stack/lh/harmonized.fsgd ...

  # ROI tables (aparcstats2table)
  surfharm harmonize --roi-table lh.aparc.thickness.tsv --participants participants.csv --method combat --out roi-run

Writes OUT/<hemi>/: the harmonized maps (fsaverage[N]/<scan>/surf/<hemi>.<measure>.harmonized.*.mgz,
native/<scan>/surf/<hemi>.<measure>.harmonized), the model (model.npz or model.safetensors), metrics.csv,
table.csv, maps/*.npy and report.html (open it in a browser). Apply the model to new scans with
'surfharm apply'. Inputs are never overwritten; every output is written atomically.
"""


def add_input_arguments(parser) -> None:
    """Input options shared by ``harmonize`` and ``apply``."""
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--subjects-dir", metavar="DIR", help="FreeSurfer SUBJECTS_DIR (with --participants)")
    source.add_argument("--mgh", nargs="+", metavar="FILE",
                        help="stacked MGH/MGZ, one frame per scan (mris_preproc), one file per hemisphere (with --fsgd)")
    source.add_argument("--roi-table", metavar="FILE", help="ROI table: aparcstats2table TSV or CSV, one row per scan")
    parser.add_argument("--participants", metavar="FILE",
                        help="CSV/TSV, one row per scan: subject, site (session, age, sex, ...); for --mgh and "
                             "--roi-table a covariate table joined by subject")
    parser.add_argument("--fsgd", metavar="FILE", help="FSGD file of --mgh (frame i = i-th Input line)")
    parser.add_argument("--site-column", default="site", help="table column naming the site/scanner (default site)")
    parser.add_argument("--hemi", nargs="+", default=["lh"], choices=("lh", "rh"),
                        help="hemispheres to read from --subjects-dir (default lh)")
    parser.add_argument("--measure", default="thickness", help="surf/<hemi>.<measure> to read (default thickness)")
    parser.add_argument("--level", type=int, choices=range(3, 8), metavar="{3..7}",
                        help="icosahedral level of the maps: 7 = fsaverage (default), 5 = fsaverage5 "
                             "(default for s2sgan)")
    parser.add_argument("--fwhm", type=int, help="read the qcache maps <hemi>.<measure>.fwhm<N>.fsaverage.mgh "
                                                 "(default: those when every subject has one FWHM, else the native map)")
    parser.add_argument("--dir-pattern", help="subject folder name, e.g. '{subject}_{session}' "
                                              "(default {subject}, or {subject}_{session} with a session column)")
    parser.add_argument("--cortex", metavar="FILE", help="label/annotation of --mgh's mesh; vertices outside become NaN")
    parser.add_argument("--jobs", type=int, default=1, help="scans read and resampled in parallel (default 1)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must be empty unless --overwrite)")
    out.add_argument("--space", choices=("ico", "native", "both"), default="ico",
                     help="per-scan maps in fsaverage[N] order (ico, default), in each subject's own vertex "
                          "order (native: needs sphere.reg inputs) or both")
    out.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    out.add_argument("--no-report", action="store_true", help="skip the HTML report (faster)")
    out.add_argument("--dry-run", action="store_true", help="list what would be read and written, then stop")
    out.add_argument("--quiet", action="store_true", help="no progress output")


def source_from_args(args, default_level: int = 7):
    """The :class:`surfharm.pipeline.Source` described by the parsed arguments."""
    from surfharm.cli import CLIError
    from surfharm.pipeline import Source

    given = [name for name, value in (("--subjects-dir", args.subjects_dir), ("--mgh", args.mgh),
                                      ("--roi-table", args.roi_table)) if value]
    if len(given) != 1:
        raise CLIError("give exactly one input: --subjects-dir DIR --participants FILE, or --mgh FILE --fsgd FILE, "
                       f"or --roi-table FILE (got {', '.join(given) or 'none'})")
    kind = {"--subjects-dir": "subjects_dir", "--mgh": "stacked_mgh", "--roi-table": "roi_table"}[given[0]]
    return Source(kind, subjects_dir=args.subjects_dir, participants=args.participants, hemis=tuple(args.hemi),
                  measure=args.measure, level=args.level or default_level, fwhm=args.fwhm,
                  dir_pattern=args.dir_pattern, mgh=tuple(args.mgh or ()), fsgd=args.fsgd, cortex=args.cortex,
                  roi_table=args.roi_table, site_column=args.site_column, n_jobs=args.jobs)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "harmonize", help="harmonize a study: SUBJECTS_DIR, stacked MGH or ROI table -> harmonized maps + report",
        description="Read every scan's map (resampled to the icosahedron when needed), fit a harmonizer across "
                    "sites, and write the harmonized maps, the model, the metrics and an HTML report.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(parser)
    method = parser.add_argument_group("method")
    method.add_argument("--method", default="combat", metavar="NAME[:KEY=VALUE,...]",
                        help="harmonizer (default combat): combat, combat-long (repeated scans), s2sgan (two "
                             "sites), mean-std, mean-shift, ...; options as in 'surfharm benchmark'")
    method.add_argument("--keep", nargs="*", metavar="COLUMN",
                        help="covariates whose effects are preserved (default: age and sex when present; "
                             "'--keep' alone keeps none)")
    method.add_argument("--smooth", nargs="+", default=[], metavar="COLUMN",
                        help="covariates modelled by a spline (ComBat), e.g. age in infants")
    method.add_argument("--reference-site", help="harmonize to this site (ComBat reference / S2SGAN target)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from surfharm import pipeline
    from surfharm.evaluate.methods import MethodSpec
    from surfharm.pipeline.models import LEARNED_DEFAULT_LEVEL

    name = MethodSpec.parse(args.method).name
    source = source_from_args(args, default_level=LEARNED_DEFAULT_LEVEL.get(name, 7))
    if args.dry_run:
        print(pipeline.plan(source, args.out, method=args.method, space=args.space))
        return 0
    keep = args.keep
    if keep is not None and args.smooth:
        keep = list(keep) + [c for c in args.smooth if c not in keep]
    result = pipeline.harmonize(source, args.method, args.out, keep=keep, smooth=args.smooth,
                                reference_site=args.reference_site, space=args.space, report=not args.no_report,
                                overwrite=args.overwrite, progress=not args.quiet)
    print_summary(result)
    return 0


def print_summary(result) -> None:
    """The metrics of each run folder and where everything went."""
    from surfharm.pipeline.outputs import METRIC_COLUMNS

    for key, folder in result.folders.items():
        table = result.metrics[key]
        print(f"\n{key}: metrics ({folder / 'metrics.csv'})")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"{key}: {len(result.maps[key])} harmonized file(s) under {folder}; model {result.models[key]}")
        if key in result.reports:
            print(f"{key}: report {result.reports[key]}")
    shown = {c for t in result.metrics.values() for c in t.columns}
    print("\n" + "\n".join(f"  {c}: {meaning}" for c, meaning in METRIC_COLUMNS.items() if c in shown))
    print(f"\ndone: everything is in {result.out}")
