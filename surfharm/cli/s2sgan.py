"""``surfharm s2sgan train|apply``: S2SGAN between two sites on a stacked MGH + FSGD, into single files.

The same job as ``surfharm harmonize --method s2sgan`` (and ``surfharm apply``), with the input read
and checked by the same input class (:class:`surfharm.pipeline.inputs.StackedMghInput`: tables first,
empty scans and implausible values refused) and the method built and fed by the same pipeline
functions (:mod:`surfharm.pipeline.models`); what differs is the output: a model file and harmonized
maps (a stacked MGH or a folder), instead of a run folder, and training options of their own.
"""
from __future__ import annotations

import argparse

import numpy as np

EXAMPLE = """\
examples:
  # train: map site B's fsaverage5 thickness to site A's appearance (scans of other sites are ignored);
  # checkpoints every 200 steps in run_lh/, harmonized maps of the training scans written too
  surfharm s2sgan train --mgh lh.thickness.fsaverage5.mgh --fsgd study.fsgd --cortex lh.cortex.label \\
      --source B --target A --epochs 50 --checkpoint-dir run_lh --checkpoint-every 200 \\
      --model s2sgan_lh_B_to_A.safetensors --output lh.thickness.B_as_A.fsaverage5.mgh

  # a scanner change: age (a numeric column) kept out of the site statistics with each site's own
  # slopes, output calibrated (the settings that removed the site effect on the benchmark; see README)
  surfharm s2sgan train ... --keep-covariates age --covariate-slopes per-site --calibrate

  # an interrupted run goes on from its last checkpoint (same command plus --resume)
  surfharm s2sgan train ... --checkpoint-dir run_lh --resume

  # apply to new scans of site B (scans of site A are written unchanged); --reverse maps A to B
  surfharm s2sgan apply --model s2sgan_lh_B_to_A.safetensors --mgh new.lh.thickness.fsaverage5.mgh \\
      --fsgd new.fsgd --output new.lh.thickness.harmonized.fsaverage5.mgh

Sites come from the table's 'site' column (or --site-column; for an FSGD without one, its class).
Maps must be on an icosahedral mesh (fsaverage5 = level 5 is a good trade-off on a CPU).
Model files are .safetensors with their metadata in JSON (in the file and in a .json copy beside it).
Inputs are never overwritten; outputs are written atomically. The input is read and checked as by
'surfharm harmonize --mgh ... --method s2sgan', which writes a run folder instead of single files.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "s2sgan", help="S2SGAN: cycle-consistent spherical U-Nets mapping one site's maps to another's",
        description="S2SGAN harmonization (Zhao et al., MICCAI 2019) of icosahedral surface maps between two sites.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train a model (and harmonize the training scans)",
                               epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_inputs(train)
    train.add_argument("--source", required=True, help="site whose scans are mapped")
    train.add_argument("--target", required=True, help="site whose appearance they take")
    train.add_argument("--model", required=True, help="model file to write (.safetensors)")
    train.add_argument("-o", "--output", help="harmonized maps of the training cohort (.mgh/.mgz or a folder)")
    opt = train.add_argument_group("training")
    opt.add_argument("--epochs", type=int, default=50, help="passes over the larger site (default 50)")
    opt.add_argument("--max-steps", type=int, help="stop after this many steps instead")
    opt.add_argument("--batch-size", type=int, default=1, help="scans of each site per step (default 1)")
    opt.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    opt.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                     help="learning-rate schedule: cosine (default), step (the authors'), constant")
    opt.add_argument("--depth", type=int, default=4, help="U-Net resolution levels (default 4)")
    opt.add_argument("--base-channels", type=int, default=16, help="U-Net channels at full resolution (default 16)")
    opt.add_argument("--condition-on", nargs="+", default=[], metavar="COLUMN",
                     help="covariates fed to the networks (e.g. age, for infant cohorts)")
    opt.add_argument("--validation-fraction", type=float, default=0.1,
                     help="share of each site's scans held out and scored every epoch (default 0.1)")
    opt.add_argument("--keep-covariates", nargs="+", default=[], metavar="COLUMN",
                     help="numeric columns (e.g. age) whose linear effects are biology to keep out of the site "
                          "statistics, as ComBat keeps its covariates; 'apply' then needs them too")
    opt.add_argument("--covariate-slopes", choices=("pooled", "per-site"), default="pooled",
                     help="with --keep-covariates: one within-site slope per vertex for both sites (pooled, as "
                          "ComBat; default) or each site's own, the mapped scans taking the other site's (per-site)")
    opt.add_argument("--calibrate", action="store_true",
                     help="after training, match the generators' outputs per vertex to the other site's mean and SD "
                          "on the training scans (default: the outputs as they are)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    opt.add_argument("--checkpoint-dir", help="folder for checkpoint.safetensors (must exist)")
    opt.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    opt.add_argument("--resume", action="store_true", help="go on from the checkpoint in --checkpoint-dir")
    opt.add_argument("--quiet", action="store_true", help="no progress bar")
    from surfharm._progress import add_progress_flag
    add_progress_flag(opt)
    train.set_defaults(func=run_train)

    apply = actions.add_parser("apply", help="harmonize scans with a trained model",
                               epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_inputs(apply)
    apply.add_argument("--model", required=True, help="model file written by 'surfharm s2sgan train'")
    apply.add_argument("-o", "--output", required=True, help="harmonized maps to write (.mgh/.mgz or a folder)")
    apply.add_argument("--reverse", action="store_true", help="map the target site's scans to the source's")
    apply.add_argument("--device", default="cpu")
    apply.set_defaults(func=run_apply)


def _add_inputs(parser) -> None:
    parser.add_argument("--mgh", required=True, help="stacked MGH/MGZ of icosahedral maps, one frame per scan")
    parser.add_argument("--fsgd", required=True, help="FSGD file of --mgh (frame i = i-th Input line)")
    parser.add_argument("--participants", help="table (CSV/TSV) joined by subject: site, age, sex, ...")
    parser.add_argument("--site-column", help="column holding the site (default 'site', else the FSGD class)")
    parser.add_argument("--cortex", help="label/annotation of --mgh's mesh; vertices outside become NaN")
    values = parser.add_argument_group("plausible values (thickness [0, 10] mm, area and volume >= 0)")
    values.add_argument("--value-range", nargs=2, type=float, metavar=("LO", "HI"),
                        help="refuse input values outside [LO, HI] instead of the measure's default range")
    values.add_argument("--allow-implausible", action="store_true",
                        help="skip the range check (for measures that may be negative or leave the range)")


def _source(args):
    """The stacked MGH input (the measure from the file name, e.g. lh.thickness...mgh)."""
    from surfharm.cli.harmonize import source_from_args

    return source_from_args(args, measure=None)


def _read_cohort(source, columns):
    """The tables checked (ids, sites, the covariate ``columns``), then the maps (empty scans and
    implausible values refused)."""
    source.check_tables(keep=list(columns))
    (cohort,) = source.read(progress=False).values()
    return cohort


def run_train(args) -> int:
    from surfharm.cli import CLIError
    from surfharm.cli.harmonize import refuse_inputs, say_delegation
    from surfharm.evaluate.methods import MethodSpec
    from surfharm.pipeline import models

    source = _source(args)
    refuse_inputs(source, {"--output": args.output, "--model": args.model})
    say_delegation("surfharm s2sgan train", source, "s2sgan")
    keep = list(dict.fromkeys([*args.condition_on, *args.keep_covariates]))
    cohort = _read_cohort(source, keep)
    for name in ("source", "target"):
        if getattr(args, name) not in set(cohort.sites.astype(str)):
            raise CLIError(f"--{name} {getattr(args, name)!r} is not a site of {args.fsgd}; "
                           f"sites are {sorted(set(cohort.sites.astype(str)))}")
    pair = cohort.subset(np.isin(cohort.sites.astype(str), [args.source, args.target]))
    if pair.n_scans < cohort.n_scans:
        print(f"training on the {pair.n_scans} scans of sites {args.source} and {args.target} "
              f"({cohort.n_scans - pair.n_scans} scans of other sites left out)")
    sites = pair.sites.astype(str)
    options = dict(source=args.source, target=args.target, condition_on=tuple(args.condition_on),
                   keep_covariates=tuple(args.keep_covariates), covariate_slopes=args.covariate_slopes,
                   depth=args.depth, base_channels=args.base_channels, epochs=args.epochs, max_steps=args.max_steps,
                   batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                   validation_fraction=args.validation_fraction, calibrate=args.calibrate, seed=args.seed,
                   device=args.device, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                   resume=args.resume, progress=not args.quiet)
    model = MethodSpec("s2sgan", "", options).build()
    side = models.side_data(model, pair, keep)
    model.fit(pair.maps, sites=sites, **side)
    last = model.history_[-1] if model.history_ else {}
    print(f"trained S2SGAN {args.source} -> {args.target} at level {model.level_} on {pair.n_scans} scans; "
          + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step"))
    print(f"wrote {model.save(args.model)}")
    if args.output:
        harmonized = model.transform(pair.maps, sites=sites, **side)
        for path in pair.with_maps(harmonized).write(args.output, overwrite=True):
            print(f"wrote {path}")
    return 0


def run_apply(args) -> int:
    from surfharm.cli.harmonize import refuse_inputs, say_delegation
    from surfharm.harmonize import S2SGAN
    from surfharm.pipeline import models

    source = _source(args)
    refuse_inputs(source, {"--output": args.output})
    model = S2SGAN.load(args.model, device=args.device)
    say_delegation("surfharm s2sgan apply", source, "s2sgan")
    keep = list(dict.fromkeys([*model.condition_on, *model.keep_covariates]))
    cohort = _read_cohort(source, keep)
    sites = np.array([_as_model_label(s, model.sites_) for s in cohort.sites], dtype=object)
    harmonized = model.transform(cohort.maps, sites=sites, **models.side_data(model, cohort, keep),
                                 direction="reverse" if args.reverse else "forward")
    for path in cohort.with_maps(harmonized).write(args.output, overwrite=True):
        print(f"wrote {path}")
    return 0


def _as_model_label(site, model_sites):
    """Site labels read from text match the model's labels whatever their type (e.g. 1 vs '1')."""
    for label in model_sites:
        if str(label) == str(site):
            return label
    return site
