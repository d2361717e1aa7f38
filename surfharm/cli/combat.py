"""``surfharm combat fit|apply``: ComBat on a stacked MGH + FSGD or on an ROI table, into single files.

The same job as ``surfharm harmonize --method combat`` (and ``surfharm apply``), with the input read
and checked by the same input classes (:mod:`surfharm.pipeline.inputs`) and the method built and fed
by the same pipeline functions (:mod:`surfharm.pipeline.models`); what differs is the output: a model
file and one harmonized stacked MGH (written through a memory map, a block of scans at a time) or
ROI table, instead of a run folder.
"""
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
Inputs are never overwritten (an --output or --model naming an input is refused); outputs are written
atomically, the model only once the harmonized data are written. The model records the hemisphere and
measure it was fitted on; 'apply' refuses data of another one unless --allow-mismatch.
The input is read and checked as by 'surfharm harmonize --mgh/--roi-table ... --method combat', which
writes a run folder (maps, model, metrics, report) instead of single files.
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
    apply.add_argument("--allow-mismatch", action="store_true",
                       help="apply the model even to data of another hemisphere or measure than it was fitted on")
    apply.set_defaults(func=run_apply)


def _add_inputs(parser) -> None:
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--mgh", help="stacked MGH/MGZ, one frame per scan (with --fsgd)")
    source.add_argument("--roi-table", help="ROI table: aparcstats2table TSV or CSV, one row per scan")
    parser.add_argument("--fsgd", help="FSGD file of --mgh (frame i = i-th Input line)")
    parser.add_argument("--participants", help="table (CSV/TSV) joined by subject: site, age, sex, ...")
    parser.add_argument("--site-column", help="column holding the site (default 'site', else the FSGD class)")
    parser.add_argument("--cortex", help="label/annotation of --mgh's mesh; vertices outside become NaN")
    values = parser.add_argument_group("plausible values (thickness [0, 10] mm, area and volume >= 0)")
    values.add_argument("--value-range", nargs=2, type=float, metavar=("LO", "HI"),
                        help="refuse input values outside [LO, HI] instead of the measure's default range")
    values.add_argument("--allow-implausible", action="store_true",
                        help="skip the range check (for measures that may be negative or leave the range)")
    values.add_argument("--clip-output", action="store_true",
                        help="clip harmonized values outside the range into it (they are counted either way)")


def _source(args):
    """The input of the command (a stacked MGH, or an ROI table): the measure comes from the file names."""
    from surfharm.cli.harmonize import source_from_args

    return source_from_args(args, measure=None, chunk_frames=16)


def _read_cohort(source, workdir=None):
    """The scans, checked (empty scans, implausible values); a stacked MGH is streamed into a memory
    map in ``workdir`` (when given) so that the maps are never held in memory."""
    (cohort,) = source.read(progress=False, workdir=workdir).values()
    return cohort


def _check_tables(source, columns=(), numeric=(), *, method: str | None = None) -> None:
    """Check the table of the input (ids, sites, covariates; one-scan sites for ``method``) before any
    map is read."""
    from surfharm.cli import CLIError
    from surfharm.pipeline.inputs import SourceError

    try:
        source.check_tables(keep=list(columns), smooth=list(numeric), method=method)
    except SourceError as exc:
        raise CLIError(_cli_spelling(str(exc))) from None


def _cli_spelling(message: str) -> str:
    """A harmonizer's advice in this command's options (``mean_only=True`` is ``--mean-only`` here)."""
    for python, option in (("mean_only=True", "--mean-only"), ("eb=False", "--no-eb"),
                           ("--method combat:mean_only=true", "--mean-only"),
                           ("--method combat-long:mean_only=true", "--mean-only")):
        message = message.replace(python, option)
    return message


def _workdir(args):
    """A private scratch folder beside the output (or the model) for the memory-mapped maps."""
    import tempfile
    from pathlib import Path

    return tempfile.TemporaryDirectory(prefix=".surfharm-", dir=Path(args.output or args.model).resolve().parent)


def _transform_and_write(model, cohort, covariates, extra, args, source, workdir) -> list:
    """Harmonize into the output. A stacked MGH/MGZ is written through ``transform(..., out=)`` straight
    into the file, a block of scans at a time (all scans at once for longitudinal models, whose subject
    terms use every scan of a subject), so the maps are never held in memory; values outside the
    plausible range are counted, said and, with --clip-output, clipped."""
    from surfharm import io as sio
    from surfharm.io._files import release_pages

    found = _OutputReview(source.output_range(cohort), args.clip_output)
    stacked = cohort.feature_names is None and str(args.output).lower().endswith((".mgh", ".mgz"))
    if stacked:
        inputs = [path for _, path in source.files()]
        release_pages(cohort.maps)  # the fit has read every page; the transform reads them again, block by block
        with sio.open_mgh_output(args.output, cohort.n_scans, cohort.n_features, like=source.mgh[0], inputs=inputs,
                                 workdir=workdir) as out:
            step = cohort.n_scans if extra else max(1, (32 << 20) // (4 * cohort.n_features))
            for start in range(0, cohort.n_scans, step):
                rows = slice(start, start + step)
                part = None if covariates is None else covariates.iloc[rows].reset_index(drop=True)
                model.transform(cohort.maps[rows], sites=cohort.sites[rows], covariates=part, out=out[rows], **extra)
                found.add(out[rows])
                release_pages(out)
                release_pages(cohort.maps)
            found.say(cohort.measure)
        return [args.output]
    harmonized = model.transform(cohort.maps, sites=cohort.sites, covariates=covariates, **extra)
    found.add(harmonized)
    found.say(cohort.measure)
    return _write(cohort, harmonized, args)


class _OutputReview:
    """Harmonized values outside the plausible range, counted (and clipped) block by block."""

    def __init__(self, checked, clip: bool):
        self.checked, self.clip = checked, clip
        self.values = self.scans = self.clipped = 0
        self.low, self.high = float("inf"), float("-inf")

    def add(self, block) -> None:
        from surfharm.io import plausibility

        if self.checked is None:
            return
        found = plausibility.count_outside(block, self.checked)
        if found.total:
            self.values += found.total
            self.scans += int(found.scans.size)
            self.low, self.high = min(self.low, found.minimum), max(self.high, found.maximum)
            if self.clip:
                self.clipped += plausibility.clip_inplace(block, self.checked)

    def say(self, measure) -> None:
        if self.checked is None:
            return
        if not self.values:
            print(f"every harmonized {measure or 'value'} lies in {self.checked}")
            return
        print(f"warning: {self.values} harmonized {measure or 'value'}(s) in {self.scans} scan(s) lie outside "
              f"{self.checked} (found {self.low:g} .. {self.high:g}); "
              + (f"clipped into the range ({self.clipped} values)" if self.clip
                 else "kept as they are (--clip-output clips them)"))


def _check_output(args, source, *, writes_model: bool = False) -> None:
    """Refuse an --output or a --model to write that names an input (or each other), before any work is done."""
    from pathlib import Path

    from surfharm.cli import CLIError
    from surfharm.cli.harmonize import refuse_inputs, same_file

    if writes_model:
        refuse_inputs(source, {"--model": args.model})
        if Path(args.model).suffix != ".npz":
            raise CLIError(f"--model {args.model}: a ComBat model file ends in .npz; choose a name like combat_lh.npz")
    if not args.output:
        return
    if same_file(args.output, args.model):
        what = "the model file to write" if writes_model else "the model (an input)"
        raise CLIError(f"--output {args.output} is {what} (--model {args.model}); choose a new file name")
    refuse_inputs(source, {"--output": args.output})


def _data_of(cohort) -> dict:
    """What the scans are (hemisphere, measure, level, features): recorded in a model, compared by apply."""
    from surfharm.pipeline.outputs import describe_data

    return describe_data(cohort, measure=cohort.measure)


def _write(cohort, harmonized, args) -> list:
    return cohort.with_maps(harmonized).write(args.output, overwrite=True)


def run_fit(args) -> int:
    from surfharm._atomic import atomic_path
    from surfharm.cli import CLIError
    from surfharm.cli.harmonize import say_delegation
    from surfharm.evaluate.methods import MethodSpec
    from surfharm.pipeline import models

    if args.random_slope and not args.longitudinal:
        raise CLIError("--random-slope needs --longitudinal (a slope per subject needs repeated scans)")
    source = _source(args)
    _check_output(args, source, writes_model=True)
    keep = list(args.keep)
    keep += [c for c in [*args.smooth, args.random_slope] if c and c not in keep]
    options = dict(eb=not args.no_eb, parametric=not args.nonparametric, mean_only=args.mean_only,
                   reference_site=args.reference_site, smooth_terms=tuple(args.smooth), spline_df=args.spline_df)
    if args.longitudinal:
        options["random_slope"] = args.random_slope
    spec = MethodSpec("combat-long" if args.longitudinal else "combat", "", options)
    say_delegation("surfharm combat fit", source, spec.name)
    _check_tables(source, keep, [*args.smooth, *([args.random_slope] if args.random_slope else [])],
                  method=None if args.mean_only else spec.name)
    workdir = _workdir(args)
    cohort = _read_cohort(source, workdir.name)
    model = spec.build()
    side = models.side_data(model, cohort, keep)
    try:
        model.fit(cohort.maps, sites=cohort.sites, **side)
    except ValueError as exc:
        raise CLIError(_cli_spelling(str(exc))) from None
    print(f"fitted {type(model).__name__} on {cohort.n_scans} scans x {cohort.n_features} features, "
          f"sites {model.sites_}, covariate columns {model.encoder_.names}")
    covariates, extra = side.pop("covariates", None), side
    # The model is renamed into place after the harmonized data are written: a failed write leaves neither.
    with atomic_path(args.model, inputs=[path for _, path in source.files()]) as model_tmp:
        model.fitted_on_ = _data_of(cohort)
        model.save(model_tmp)
        if args.output:
            for path in _transform_and_write(model, cohort, covariates, extra, args, source, workdir.name):
                print(f"wrote {path}")
    print(f"wrote {args.model}")
    del cohort
    workdir.cleanup()
    return 0


def run_apply(args) -> int:
    from surfharm.cli.harmonize import say_delegation
    from surfharm.harmonize import ComBat
    from surfharm.pipeline import models
    from surfharm.pipeline.outputs import check_fitted_on, read_fitted_on

    source = _source(args)
    _check_output(args, source)
    model = ComBat.load(args.model)  # any model of the ComBat family (ComBat, LongComBat)
    say_delegation("surfharm combat apply", source, model.registry_name)
    _check_tables(source, model.encoder_.columns)
    workdir = _workdir(args)
    cohort = _read_cohort(source, workdir.name)
    for difference in check_fitted_on(args.model, read_fitted_on(args.model), _data_of(cohort),
                                      what="the new scans", allow_mismatch=args.allow_mismatch):
        print(f"warning: applying a model fitted on other data ({difference})")
    side = models.side_data(model, cohort, model.encoder_.columns)
    covariates, extra = side.pop("covariates", None), side
    for path in _transform_and_write(model, cohort, covariates, extra, args, source, workdir.name):
        print(f"wrote {path}")
    del cohort
    workdir.cleanup()
    return 0
