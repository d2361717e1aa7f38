"""``surfharm volumetric <method> fit|apply``: volumetric harmonization of NIfTI scans, into single files.

The same job as ``surfharm harmonize --images ... --method <method>`` (and ``surfharm apply``), with
the scans, masks, sites and table read and checked by the same input class
(:class:`surfharm.pipeline.inputs.NiftiInput`) and the method fitted by the same pipeline function
(:func:`surfharm.pipeline.run.fit_volumes`); what differs is the output: a model file (fit) and the
harmonized scans in an existing folder (apply), instead of a run folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
Scans are NIfTI files (.nii or .nii.gz), given as files or as a folder (every NIfTI in it).
Masks (brain masks, > 0.5 = brain) are one file per scan in the same order, a single file for
every scan, or a folder holding a mask with the same file name as each scan; without --masks, a
mask is derived from each skull-stripped scan (voxels > 0). RAVEL and voxel-combat need every
scan registered to one grid. Outputs are <scan name>_<method>.nii.gz in --out-dir.
The scans are read and checked as by 'surfharm harmonize --images ... --method METHOD', which writes
the same files into a run folder (with the model, table and config) instead.

examples:
  # learn a Nyul standard scale on training scans, then apply it to new scans
  surfharm volumetric nyul fit --images train/ --masks train_masks/ --model nyul.npz
  surfharm volumetric nyul apply --model nyul.npz --images new/ --masks new_masks/ --out-dir harmonized/

  # WhiteStripe needs no training: apply directly
  surfharm volumetric white-stripe apply --images sub-01_T1w.nii.gz --masks sub-01_mask.nii.gz --out-dir out/

  # voxel-wise ComBat: sites and covariates from a table (columns image, site, age, sex)
  surfharm volumetric voxel-combat fit --images mni/ --masks mni_brain_mask.nii.gz \\
      --table scans.csv --covariates age sex --param normalize=white-stripe \\
      --param 'combat={"eb": true}' --model vcombat.npz
"""

ACTIONS = ("fit", "apply")


def register(subparsers) -> None:
    from surfharm.harmonize.volumetric import VOLUMETRIC_METHODS

    parser = subparsers.add_parser(
        "volumetric", help="harmonize T1-weighted NIfTI volumes (WhiteStripe, Nyul, MICA, RAVEL, voxel-wise ComBat...)",
        description="Fit a volumetric harmonization method on NIfTI scans, or apply a fitted one.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=VOLUMETRIC_METHODS, help="the method")
    parser.add_argument("action", choices=ACTIONS, help="fit: learn and write --model; apply: write harmonized scans")
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH",
                        help="NIfTI files, or one folder of NIfTI files")
    parser.add_argument("--masks", nargs="+", metavar="PATH",
                        help="brain masks: one per scan, one for all, or a folder of masks named like the scans")
    parser.add_argument("--sites", nargs="+", metavar="LABEL", help="the site of each scan, in the order of --images")
    parser.add_argument("--table", metavar="CSV",
                        help="table with a column 'image' (file name or path) and 'site', plus covariate columns")
    parser.add_argument("--covariates", nargs="+", default=[], metavar="COLUMN",
                        help="columns of --table to protect (the methods that take covariates: voxel-combat, ravel)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a method parameter, e.g. n_factors=2 or normalize=white-stripe (repeatable)")
    parser.add_argument("--control-mask", metavar="PATH", help="ravel fit: the control (CSF) region mask")
    parser.add_argument("--model", metavar="NPZ", help="model file: written by fit, read by apply")
    parser.add_argument("--out-dir", metavar="DIR", help="apply: folder for the harmonized scans")
    parser.set_defaults(func=run)


def run(args) -> int:
    from surfharm.cli import CLIError
    from surfharm.cli.harmonize import say_delegation, source_from_args
    from surfharm.errors import ModelFileError
    from surfharm.harmonize import get
    from surfharm.pipeline.inputs import SourceError
    from surfharm.pipeline.run import fit_volumes, volume_side_data

    if args.covariates and not args.table:
        raise CLIError("--covariates reads columns of --table; give --table" + (" instead of --sites" if args.sites
                                                                               else ""))
    source = source_from_args(args, participants=args.table)
    say_delegation(f"surfharm volumetric {args.method} {args.action}", source, args.method)
    cls = get(args.method)
    try:
        source.check_tables(keep=args.covariates)
        volumes = source.scans()
        if args.action == "fit":
            if not args.model:
                raise CLIError("fit needs --model FILE.npz (where the fitted model is written)")
            estimator = _make(args.method, args.param)
            fit_volumes(estimator, volumes, args.covariates, control_mask=args.control_mask)
            path = estimator.save(args.model)
            print(f"wrote {path} ({args.method} fitted on {volumes.n_scans} scans)")
            return 0
        if args.control_mask:
            raise CLIError("--control-mask is a RAVEL fit option")
        if not args.out_dir:
            raise CLIError("apply needs --out-dir DIR (where the harmonized scans are written)")
        out_dir = Path(args.out_dir)
        if not out_dir.is_dir():
            raise CLIError(f"--out-dir {out_dir} is not an existing folder")
        if args.model:
            try:
                estimator = cls.load(args.model)
            except ModelFileError as exc:
                raise CLIError(str(exc)) from None
        else:
            estimator = _make(args.method, args.param)
            if estimator.needs_fit:
                raise CLIError(f"{args.method} must be fitted first: run '{args.method} fit ... --model FILE' and "
                               "pass --model FILE to apply")
        side = volume_side_data(estimator, volumes, args.covariates)
        source.outputs_of(volumes.images, out_dir, args.method)  # two scans on one name: refused before any write
        stream = estimator.transform_iter(volumes.images, sites=volumes.sites, **side)
        source.write(volumes, stream, out_dir, method=args.method, say=print)
    except SourceError as exc:
        raise CLIError(str(exc)) from None
    return 0


def _make(method: str, param_items: list[str]):
    """The estimator of ``method`` with the ``--param`` values; an unknown name lists the known ones."""
    import inspect

    from surfharm.cli import CLIError
    from surfharm.harmonize import get

    cls = get(method)
    params = _parse_params(param_items)
    # The estimator's parameters (scikit-learn's get_params), listed in the order the class declares them.
    declared = list(inspect.signature(cls).parameters)
    known = sorted(cls().get_params(deep=False), key=lambda p: declared.index(p) if p in declared else len(declared))
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise CLIError(f"{method} has no parameter {unknown}; its parameters: {known or 'none'}")
    return cls(**params)


def _parse_params(items: list[str]) -> dict:
    """``NAME=VALUE`` pairs; VALUE read as JSON when it parses (numbers, null, true), else as text."""
    from surfharm.cli import CLIError

    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CLIError(f"--param {item!r}: expected NAME=VALUE")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params
