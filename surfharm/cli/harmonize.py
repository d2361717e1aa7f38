"""``surfharm harmonize``: from a SUBJECTS_DIR (or a stacked MGH, an ROI table, NIfTI scans) to harmonized data.

The front door of every registered method (``--method``): the ComBat family, the baselines, S2SGAN and,
on NIfTI input (``--images``), the volumetric methods. :func:`add_input_arguments` and
:func:`source_from_args` are shared by ``apply`` and by the per-method commands (``combat``,
``s2sgan``, ``volumetric``), so every command reads its input through the same input class
(:mod:`surfharm.pipeline.inputs`).
"""
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

  # NIfTI volumes (the volumetric methods): a folder of T1w scans, their brain masks, a table (image, site, ...)
  surfharm harmonize --images t1w/ --masks masks/ --participants scans.csv --method nyul --out nyul-run

  # several contrasts per session (the deep image methods): anat/ holds sub-01_ses-1_T1w.nii.gz,
  # sub-01_ses-1_FLAIR.nii.gz, ...; masks/ holds sub-01_ses-1_mask.nii.gz, ...; sessions.tsv has columns
  # image (the session: sub-01_ses-1), subject and site
  surfharm harmonize --images anat/ --contrasts T1w,FLAIR --masks masks/ --participants sessions.tsv \
      --method deepharmony:steps=2000 --out deepharmony-run

Writes OUT/<hemi>/: the harmonized maps (fsaverage[N]/<scan>/surf/<hemi>.<measure>.harmonized.*.mgz,
native/<scan>/surf/<hemi>.<measure>.harmonized), the model (model.npz or model.safetensors), metrics.csv,
table.csv, maps/*.npy and report.html (open it in a browser); for NIfTI scans OUT/volumes/ holds
<scan name>_<method>.nii.gz (with --contrasts: <session>_<contrast>.nii.gz), the model, table.csv and
config.json. Apply the model to new scans with
'surfharm apply'. The run is written beside OUT and moved into place when complete, so OUT holds
exactly one complete run; --overwrite replaces the previous run as a whole. Inputs are never
overwritten: an input inside OUT is refused (copy it elsewhere or choose another --out).
"""


def add_input_arguments(parser) -> None:
    """Input options shared by ``harmonize`` and ``apply``."""
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--subjects-dir", metavar="DIR", help="FreeSurfer SUBJECTS_DIR (with --participants)")
    source.add_argument("--mgh", nargs="+", metavar="FILE",
                        help="stacked MGH/MGZ, one frame per scan (mris_preproc), one file per hemisphere "
                             "(with --fsgd)")
    source.add_argument("--roi-table", metavar="FILE", help="ROI table: aparcstats2table TSV or CSV, one row per scan")
    source.add_argument("--images", nargs="+", metavar="PATH",
                        help="NIfTI scans (.nii/.nii.gz) or one folder of them, for the volumetric methods")
    parser.add_argument("--contrasts", metavar="NAMES",
                        help="with --images, for the deep image methods: the contrasts of every session, "
                             "comma-separated (e.g. T1w,T2w,FLAIR); files are grouped into sessions by their "
                             "suffix, <session>_<contrast>.nii[.gz] (e.g. sub-01_ses-1_T1w.nii.gz), and each "
                             "harmonized contrast is written as <session>_<contrast>.nii.gz. A session lacking a "
                             "contrast is refused; other files of an --images folder are left out with a note. "
                             "For 'apply': default the model's contrasts")
    parser.add_argument("--participants", metavar="FILE",
                        help="CSV/TSV, one row per scan: subject, site (session, age, sex, ...); for --mgh and "
                             "--roi-table a covariate table joined by subject; for --images a table with a column "
                             "'image' (file name; with --contrasts the session, e.g. sub-01_ses-1) and 'site'")
    parser.add_argument("--fsgd", metavar="FILE", help="FSGD file of --mgh (frame i = i-th Input line)")
    parser.add_argument("--site-column", default="site", help="table column naming the site/scanner (default site)")
    parser.add_argument("--hemi", nargs="+", default=["lh"], choices=("lh", "rh"),
                        help="hemispheres to read from --subjects-dir (default lh)")
    parser.add_argument("--measure", default="thickness", help="surf/<hemi>.<measure> to read (default thickness)")
    parser.add_argument("--level", type=int, choices=range(3, 8), metavar="{3..7}",
                        help="icosahedral level of the maps: 7 = fsaverage (default), 5 = fsaverage5 "
                             "(default for s2sgan)")
    parser.add_argument("--fwhm", type=int,
                        help="read the qcache maps <hemi>.<measure>.fwhm<N>.fsaverage.mgh "
                             "(default: those when every subject has one FWHM, else the native map)")
    parser.add_argument("--dir-pattern", help="subject folder name, e.g. '{subject}_{session}' "
                                              "(default {subject}, or {subject}_{session} with a session column)")
    parser.add_argument("--cortex", metavar="FILE",
                        help="label/annotation of --mgh's mesh; vertices outside become NaN")
    parser.add_argument("--masks", nargs="+", metavar="PATH",
                        help="brain masks of --images: one per scan, one for all, or a folder of masks named like "
                             "the scans (with --contrasts: <session>_mask.nii.gz) (default: voxels > 0 of each "
                             "skull-stripped scan)")
    parser.add_argument("--sites", nargs="+", metavar="LABEL",
                        help="the site of each scan (session) of --images, in their order (or a 'site' column in "
                             "--participants)")
    parser.add_argument("--control-mask", metavar="FILE", help="RAVEL's control (CSF) region mask (--images)")
    parser.add_argument("--jobs", type=int, default=1, help="scans read and resampled in parallel (default 1)")
    values = parser.add_argument_group("plausible values (thickness [0, 10] mm, area and volume >= 0)")
    values.add_argument("--value-range", nargs=2, type=float, metavar=("LO", "HI"),
                        help="refuse input values outside [LO, HI] instead of the measure's default range")
    values.add_argument("--allow-implausible", action="store_true",
                        help="skip the range check (for measures that may be negative or leave the range)")
    values.add_argument("--clip-output", action="store_true",
                        help="clip harmonized values outside the range into it (they are counted either way)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR",
                     help="output folder (created; must be empty unless --overwrite; no input may lie inside it)")
    out.add_argument("--space", choices=("ico", "native", "both"), default="ico",
                     help="per-scan maps in fsaverage[N] order (ico, default), in each subject's own vertex "
                          "order (native: needs sphere.reg inputs) or both")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the previous run in --out as a whole (once the new run is complete)")
    out.add_argument("--no-report", action="store_true", help="skip the HTML report (faster)")
    out.add_argument("--dry-run", action="store_true", help="list what would be read and written, then stop")
    out.add_argument("--quiet", action="store_true", help="no progress output")
    from surfharm._progress import add_progress_flag
    add_progress_flag(out)


#: How each input kind is asked for, in the message of a command given none or several.
INPUT_USAGE = {"subjects_dir": "--subjects-dir DIR --participants FILE", "stacked_mgh": "--mgh FILE --fsgd FILE",
               "roi_table": "--roi-table FILE", "nifti": "--images FILE... | --images DIR"}

#: The option that names each kind of file an input reads (``InputSource.files``), for messages.
OPTION_OF = {"participants": "--participants", "covariates": "--participants", "table": "--participants",
             "FSGD": "--fsgd", "stacked maps": "--mgh", "cortex": "--cortex", "ROI table": "--roi-table",
             "scan": "--images", "mask": "--masks", "control mask": "--control-mask"}

#: Input class fields and the parsed arguments that hold them (when they differ in name).
_ARGUMENT_OF = {"hemis": "hemi", "n_jobs": "jobs"}


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def source_from_args(args, default_level: int = 7, **fixed):
    """The input (a :class:`surfharm.pipeline.inputs.InputSource`) described by the parsed arguments.

    The one input option given (``--subjects-dir``, ``--mgh``, ``--roi-table``, ``--images``: those the
    command has) picks the class; every field of that class is taken from the argument of the same
    name when the command has it; ``fixed`` sets fields outright (e.g. ``measure=None``: from the
    file names). Errors of the input's arguments are raised as :class:`surfharm.cli.CLIError`.
    """
    from dataclasses import fields

    from surfharm.cli import CLIError
    from surfharm.pipeline.inputs import INPUTS, SourceError

    offered = [cls for cls in INPUTS.values() if hasattr(args, _dest(cls.option))]
    given = [cls for cls in offered if getattr(args, _dest(cls.option))]
    if len(given) != 1:
        raise CLIError("give exactly one input: " + ", or ".join(INPUT_USAGE[cls.name] for cls in offered)
                       + f" (got {', '.join(cls.option for cls in given) or 'none'})")
    cls = given[0]
    if getattr(args, "contrasts", None) and not cls.holds_volumes:
        raise CLIError(f"--contrasts goes with --images (NIfTI sessions of several contrasts), not with {cls.option}")
    options = {}
    for item in fields(cls):
        value = getattr(args, _ARGUMENT_OF.get(item.name, item.name), None)
        if item.name == "level":
            value = value or default_level
        elif item.name in ("hemis", "value_range", "mgh", "images", "masks", "sites") and value:
            value = tuple(value) if isinstance(value, (list, tuple)) else value
        if value is not None:
            options[item.name] = value
    if cls.holds_volumes:
        options.pop("measure", None)
    options.update({k: v for k, v in fixed.items() if k in {f.name for f in fields(cls)}})
    try:
        return cls(**options)
    except SourceError as exc:
        raise CLIError(str(exc)) from None


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
                             "sites), mean-std, mean-shift, ...; with --images the volumetric methods (zscore, "
                             "white-stripe, nyul, mica, ravel, voxel-combat, deepharmony, ...; with --contrasts the "
                             "deep image methods); options as in 'surfharm benchmark'")
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
    keep = args.keep
    if keep is not None and args.smooth:
        keep = list(keep) + [c for c in args.smooth if c not in keep]
    if args.dry_run:
        print(pipeline.plan(source, args.out, method=args.method, space=args.space))
        source.check_tables(keep=keep, smooth=args.smooth, method=args.method)  # exits 2 on a table problem
        print("tables checked: ids unique, every scan has a site, covariates present and usable")
        return 0
    result = pipeline.harmonize(source, args.method, args.out, keep=keep, smooth=args.smooth,
                                reference_site=args.reference_site, space=args.space, report=not args.no_report,
                                overwrite=args.overwrite, progress=not args.quiet, clip_output=args.clip_output)
    print_summary(result)
    return 0


def print_summary(result) -> None:
    """The metrics of each run folder and where everything went."""
    from surfharm.pipeline.outputs import METRIC_COLUMNS

    for key, folder in result.folders.items():
        table = result.metrics.get(key)
        if table is not None:
            print(f"\n{key}: metrics ({folder / 'metrics.csv'})")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"{key}: {len(result.maps[key])} harmonized file(s) under {folder}; model {result.models[key]}")
        if key in result.reports:
            print(f"{key}: report {result.reports[key]}")
    shown = {c for t in result.metrics.values() for c in t.columns}
    if shown:
        print("\n" + "\n".join(f"  {c}: {meaning}" for c, meaning in METRIC_COLUMNS.items() if c in shown))
    print(f"\ndone: everything is in {result.out}")


# -- shared by the per-method commands (combat, s2sgan, volumetric) --------------------------------------------

def say_delegation(command: str, source, method: str) -> None:
    """One line saying that a per-method command reads and checks its input as ``surfharm harmonize`` does."""
    print(f"{command}: {source.describe()} read through the {source.name!r} input (as 'surfharm harmonize "
          f"{source.option} ... --method {method}' reads it; that command writes a run folder)", flush=True)


def same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name one file (the same path, or two names of one file)."""
    import os
    from pathlib import Path

    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def refuse_inputs(source, outputs: dict) -> None:
    """Refuse, before any work, an output (``{option: path}``) that names a file ``source`` reads."""
    from surfharm.cli import CLIError

    for option, path in outputs.items():
        if not path:
            continue
        for what, read in source.files():
            if same_file(path, read):
                raise CLIError(f"{option} {path} is one of the inputs ({OPTION_OF.get(what, what)} {read}); it would "
                               "be replaced: choose a new file name")
