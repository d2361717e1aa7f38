"""``surfharm demo``: simulate an infant cohort with a scanner change, harmonize it, show the evidence."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  surfharm demo --quick          # about a minute: 16 infants, S2SGAN for a few steps
  surfharm demo                  # a few minutes: fsaverage5, 30 infants x 3 sessions, S2SGAN 24 steps
  surfharm demo --out my-demo --overwrite --no-s2sgan

Everything runs on embedded data (nilearn's fsaverage5 + simulation): no download, no GPU.
Writes into --out (default ./surfharm-demo). A folder holding an earlier demo run is replaced; any other
non-empty folder is refused unless --overwrite. It holds:
report.html (open it in a browser), metrics.csv and benchmark.md (the full table), renderings/*.png,
models/ (ComBat .npz, S2SGAN .safetensors), table.csv + maps/*.npy (read by 'surfharm report').
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="see surfharm work: simulated infant cohort with a scanner change, ComBat and S2SGAN, report",
        description="Simulate an infant longitudinal cohort whose scanner was replaced mid-study (traveling "
                    "infants scanned on both), harmonize it with ComBat and a small S2SGAN, print the benchmark "
                    "table and write renderings and an HTML report.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    parser.add_argument("--out", default="surfharm-demo", help="output folder (default ./surfharm-demo)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--no-s2sgan", action="store_true", help="ComBat only (skips the network training)")
    parser.add_argument("--s2sgan-steps", type=int, help="S2SGAN training steps per fit (default 24; --quick 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation and the training (default 0)")
    parser.add_argument("--no-render", action="store_true", help="no pyvista renderings and no report (tables only)")
    # Sizes for tests and experiments; not shown in --help.
    parser.add_argument("--level", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-subjects", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-traveling", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    from surfharm._progress import add_progress_flag
    add_progress_flag(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from surfharm.pipeline import demo

    settings = demo.PRESETS["quick" if args.quick else "full"]
    changes = {"level": args.level, "n_subjects": args.n_subjects, "n_traveling": args.n_traveling,
               "n_splits": args.folds, "s2sgan_steps": 0 if args.no_s2sgan else args.s2sgan_steps}
    settings = replace(settings, seed=args.seed, render=not args.no_render,
                       **{k: v for k, v in changes.items() if v is not None})
    overwrite = args.overwrite
    if not overwrite and holds_previous_demo(args.out):
        # The folder holds this command's own earlier output: re-running the README's first command
        # replaces it instead of stopping. Any other non-empty folder is still refused.
        print(f"replacing the previous demo run in {args.out}")
        overwrite = True
    result = demo.run_demo(args.out, settings, overwrite=overwrite, progress=not args.quiet)
    print("\n" + demo.summary_table(result["table"]) + "\n")
    if "error" in result["table"].columns:
        for method, error in zip(result["table"]["method"], result["table"]["error"]):
            if isinstance(error, str):
                print(f"{method} failed in the benchmark: {error}")
    for method, reason in result["skipped"].items():
        print(f"{method} was skipped: {reason}")
    if settings.s2sgan_steps > 0 and "s2sgan" not in result["skipped"]:
        print(f"S2SGAN trained for {settings.s2sgan_steps} steps per fit only: it shows the pipeline, not what a "
              "trained model does (its generators have barely begun to learn the mapping). Train longer on your data: "
              "surfharm harmonize --method 's2sgan:max_steps=2000' ...")
    print(f"full table: {result['out'] / 'benchmark.md'}")
    if result["report"] is not None:
        print(f"report: {result['report']} (open it in a browser)")
    print(f"done in {result['seconds']:.0f} s; everything is in {result['out']}")
    return 0


def holds_previous_demo(folder) -> bool:
    """True when ``folder`` holds the output of an earlier ``surfharm demo`` (its run.json says so)."""
    import json
    from pathlib import Path

    from surfharm.pipeline.demo import RUN_TITLE

    try:
        return json.loads((Path(folder) / "run.json").read_text()).get("title") == RUN_TITLE
    except (OSError, ValueError, AttributeError):
        return False
