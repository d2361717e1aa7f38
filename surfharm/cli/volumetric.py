"""``surfharm volumetric <method> fit|apply``: volumetric harmonization of NIfTI scans."""
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
    from surfharm.volumetric import VOLUMETRIC_METHODS

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
                        help="columns of --table to protect (voxel-combat, ravel)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a method parameter, e.g. n_factors=2 or normalize=white-stripe (repeatable)")
    parser.add_argument("--control-mask", metavar="PATH", help="ravel fit: the control (CSF) region mask")
    parser.add_argument("--model", metavar="NPZ", help="model file: written by fit, read by apply")
    parser.add_argument("--out-dir", metavar="DIR", help="apply: folder for the harmonized scans")
    parser.set_defaults(func=run)


def run(args) -> int:
    from surfharm.cli import CLIError
    from surfharm.volumetric import VolumeHarmonizer
    from surfharm.volumetric.io import nifti_stem, save_volume

    images = _expand_images(args.images)
    masks = _pair_masks(images, args.masks)
    sites, covariates = _sites_and_covariates(images, args)
    fit_kwargs = {}
    if args.control_mask:
        if args.method != "ravel":
            raise CLIError("--control-mask is a RAVEL option")
        fit_kwargs["control_mask"] = args.control_mask
    if args.action == "fit":
        if not args.model:
            raise CLIError("fit needs --model FILE.npz (where the fitted model is written)")
        estimator = _make(args.method, args.param)
        estimator.fit(images, sites, covariates, masks=masks, **fit_kwargs)
        path = estimator.save(args.model)
        print(f"wrote {path} ({args.method} fitted on {len(images)} scans)")
        return 0
    if not args.out_dir:
        raise CLIError("apply needs --out-dir DIR (where the harmonized scans are written)")
    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        raise CLIError(f"--out-dir {out_dir} is not an existing folder")
    if args.model:
        estimator = VolumeHarmonizer.load(args.model)
        if estimator.registry_name != args.method:
            raise CLIError(f"{args.model} holds a {estimator.registry_name!r} model, not {args.method!r}")
    else:
        estimator = _make(args.method, args.param)
        if estimator._needs_fit:
            raise CLIError(f"{args.method} must be fitted first: run '{args.method} fit ... --model FILE' and pass "
                           "--model FILE to apply")
    inputs = list(images) + [m for m in (masks or []) if isinstance(m, str)]
    outputs = [out_dir / f"{nifti_stem(p)}_{args.method}.nii.gz" for p in images]
    duplicates = {str(o) for o in outputs if outputs.count(o) > 1}
    if duplicates:
        raise CLIError(f"two scans would be written to the same file(s) {sorted(duplicates)}; rename the scans")
    for image, out, data in zip(images, outputs, estimator.transform_iter(images, sites, covariates, masks=masks)):
        save_volume(data, out, like=image, inputs=inputs)
        print(f"wrote {out}")
    return 0


def _make(method: str, param_items: list[str]):
    """The estimator of ``method`` with the ``--param`` values; an unknown name lists the known ones."""
    import inspect

    from surfharm.cli import CLIError
    from surfharm.harmonize import get

    cls = get(method)
    params = _parse_params(param_items)
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise CLIError(f"{method} has no parameter {unknown}; its parameters: {known or 'none'}")
    return cls(**params)


def _expand_images(paths: list[str]) -> list[str]:
    from surfharm.cli import CLIError
    from surfharm.volumetric.io import is_nifti_path, list_niftis

    if len(paths) == 1 and Path(paths[0]).is_dir():
        return [str(p) for p in list_niftis(paths[0])]
    for p in paths:
        if Path(p).is_dir():
            raise CLIError(f"--images {p} is a folder; give one folder, or a list of files")
        if not Path(p).is_file():
            raise CLIError(f"--images {p}: file does not exist")
        if not is_nifti_path(p):
            raise CLIError(f"--images {p}: expected a .nii or .nii.gz file")
    return list(paths)


def _pair_masks(images: list[str], masks: list[str] | None):
    """``None``, one path for all scans, or one path per scan (from a folder: same file name)."""
    from surfharm.cli import CLIError

    if not masks:
        return None
    if len(masks) == 1 and Path(masks[0]).is_dir():
        folder = Path(masks[0])
        paired = [folder / Path(img).name for img in images]
        missing = [str(p) for p in paired if not p.is_file()]
        if missing:
            raise CLIError(f"mask folder {folder} has no mask named like scan(s) {missing[:3]}"
                           f"{' ...' if len(missing) > 3 else ''}; expected one mask per scan with the scan's file name")
        return [str(p) for p in paired]
    if len(masks) == 1:
        return masks[0]
    if len(masks) != len(images):
        raise CLIError(f"got {len(masks)} masks for {len(images)} scans; expected one per scan, one for all, or a folder")
    return list(masks)


def _sites_and_covariates(images: list[str], args):
    """Site labels and a covariate DataFrame (or None), from --sites or --table."""
    from surfharm.cli import CLIError

    if args.sites and args.table:
        raise CLIError("give the sites either with --sites or in --table, not both")
    if args.sites:
        if args.covariates:
            raise CLIError("--covariates reads columns of --table; give --table instead of --sites")
        if len(args.sites) != len(images):
            raise CLIError(f"got {len(args.sites)} --sites labels for {len(images)} scans; expected one per scan")
        return list(args.sites), None
    if not args.table:
        if args.covariates:
            raise CLIError("--covariates reads columns of --table; give --table")
        return None, None
    import pandas as pd

    table = pd.read_csv(args.table)
    for column in ["image", "site", *args.covariates]:
        if column not in table.columns:
            raise CLIError(f"{args.table} has no column {column!r}; columns: {list(table.columns)}")
    by_name = {Path(str(v)).name: i for i, v in enumerate(table["image"])}
    rows = []
    for img in images:
        row = by_name.get(Path(img).name)
        if row is None:
            raise CLIError(f"{args.table} has no row for scan {Path(img).name} (column 'image')")
        rows.append(row)
    picked = table.iloc[rows].reset_index(drop=True)
    covariates = picked[list(args.covariates)] if args.covariates else None
    return picked["site"].tolist(), covariates


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
