"""``surfharm apply``: harmonize new scans of known sites with a model written by ``surfharm harmonize``."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  # fit on the study (or on controls) ...
  surfharm harmonize --subjects-dir $SUBJECTS_DIR --participants controls.tsv --hemi lh rh --out fitted
  # ... then harmonize new scans from the same sites (the model of each hemisphere is found in fitted/)
  surfharm apply --model fitted --subjects-dir $SUBJECTS_DIR --participants patients.tsv --hemi lh rh --out patients

  # one model file, stacked MGH input
  surfharm apply --model fitted/lh/model.npz --mgh new.lh.thickness.fsaverage.mgh --fsgd new.fsgd --out new-harmonized

  # NIfTI scans with a volumetric model fitted by 'surfharm harmonize --images ... --method nyul --out nyul-run'
  surfharm apply --model nyul-run --images new_t1w/ --masks new_masks/ --out new-nyul

  # sessions of several contrasts with a deep image model fitted with --contrasts (they are taken from
  # the model when --contrasts is left out): writes <session>_<contrast>.nii.gz
  surfharm apply --model deepharmony-run --images new_anat/ --masks new_masks/ --participants new.tsv --out new-dh

The new table needs the site column and the covariates kept at fit time (listed in fitted/<hemi>/config.json).
Maps are brought to the model's level. Sites unknown to the model are refused with their names (with
--adapt-new-sites their scans adapt a copy of the model, written into --out), and so is
a model fitted on another hemisphere or measure (--allow-mismatch applies it anyway). A model in an
incomplete run folder (a run that was stopped) is refused.
"""


def register(subparsers) -> None:
    from surfharm.cli.harmonize import add_input_arguments

    parser = subparsers.add_parser(
        "apply", help="harmonize new scans of known sites with a fitted model",
        description="Apply a model written by 'surfharm harmonize' to new scans (same sites, same measure): "
                    "writes their harmonized maps, metrics and report.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="output folder of 'surfharm harmonize' (its <hemi>/model.* is used) or a model file")
    add_input_arguments(parser)
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="apply the model even to maps of another hemisphere, measure or level than it was "
                             "fitted on (refused by default)")
    parser.add_argument("--adapt-new-sites", action="store_true",
                        help="scans of sites the model was not fitted on adapt it (methods that can: ComBat, CovBat, "
                             "the baselines), each new site estimated from its own scans with the model otherwise "
                             "fixed; the adapted model is written into --out, never over --model")
    parser.set_defaults(func=run)


def run(args) -> int:
    from surfharm import pipeline
    from surfharm.cli.harmonize import print_summary, source_from_args

    from surfharm.pipeline.run import with_model_contrasts

    level = args.level or _model_level(args.model, args.hemi[0]) or 7
    source = source_from_args(args, default_level=level)
    if args.dry_run:
        source = with_model_contrasts(source, args.model)  # sessions of the model's contrasts
        print(pipeline.plan(source, args.out, model=args.model, space=args.space))
        source.check_tables()  # exits 2 on a table problem
        print("tables checked: ids unique, every scan has a site")
        return 0
    result = pipeline.apply(source, args.model, args.out, space=args.space, report=not args.no_report,
                            overwrite=args.overwrite, progress=not args.quiet, allow_mismatch=args.allow_mismatch,
                            clip_output=args.clip_output, adapt_new_sites=args.adapt_new_sites)
    print_summary(result)
    return 0


def _model_level(model, key: str) -> int | None:
    """The icosahedral level recorded beside the model (config.json), if any."""
    import json
    from pathlib import Path

    from surfharm.pipeline.models import find_model

    try:
        path = find_model(model, key)
    except FileNotFoundError:
        return None
    config = Path(path).parent / "config.json"
    if config.is_file():
        level = json.loads(config.read_text()).get("level")
        return int(level) if level is not None else None
    return None
