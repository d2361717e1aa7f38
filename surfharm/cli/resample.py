"""``surfharm resample``: a map from a subject's native sphere to icosahedral level k, and back."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  # native thickness -> fsaverage (level 7), medial wall (outside lh.cortex.label) set to NaN
  surfharm resample lh.thickness lh.thickness.fsaverage.mgz \\
      --sphere surf/lh.sphere.reg --level 7 --cortex label/lh.cortex.label

  # harmonized fsaverage map -> back onto the subject's own vertices (FreeSurfer curv file)
  surfharm resample lh.thickness.harmonized.fsaverage.mgz lh.thickness.harmonized \\
      --sphere surf/lh.sphere.reg --to-native

  # an annotation onto fsaverage5 (labels are never mixed: nearest vertex of the triangle)
  surfharm resample lh.aparc.annot lh.aparc.fsaverage5.annot --sphere surf/lh.sphere.reg --level 5

  # a map already on fsaverage cut to fsaverage5 (first 10242 values, no interpolation)
  surfharm resample lh.thickness.fsaverage.mgz lh.thickness.fsaverage5.mgz --level 5

The output format follows the output name: .mgh/.mgz, .gii (GIfTI), .annot, else FreeSurfer curv.
The input is never overwritten and the output is written atomically.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "resample", help="resample a surface map: native sphere <-> icosahedral level (fsaverageN)",
        description="Resample a per-vertex map by barycentric interpolation on the sphere: from a subject's "
                    "native sphere (?h.sphere.reg) to icosahedral level k (fsaverage order), or back.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="map to resample (curv, MGH/MGZ, GIfTI shape/func, or .annot)")
    parser.add_argument("output", help="file to write (format from its name)")
    parser.add_argument("--sphere", help="the subject's ?h.sphere.reg (FreeSurfer or GIfTI); omit for fsaverageN maps")
    parser.add_argument("--level", type=int, default=7,
                        help="icosahedral level of the output, 0-7 (7 = fsaverage, 6 = fsaverage6, 5 = fsaverage5)")
    parser.add_argument("--to-native", action="store_true",
                        help="input is on an icosahedral level; write it on the --sphere's own vertices")
    parser.add_argument("--cortex", help="label or annotation of the input's mesh; values outside are NaN")
    parser.add_argument("--min-valid-weight", type=float, default=0.5,
                        help="an output vertex is NaN when valid (non-NaN, in cortex) input vertices carry less "
                             "than this share of its interpolation weight (default 0.5)")
    parser.add_argument("--fill-value", type=float, default=None,
                        help="write this value instead of NaN (e.g. 0, as FreeSurfer does outside cortex)")
    parser.add_argument("--label-mode", choices=("nearest", "majority"), default="nearest",
                        help="how annotations are resampled (default nearest)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from surfharm.resample import resample_file

    out = resample_file(args.input, args.output, sphere=args.sphere, level=args.level, to_native=args.to_native,
                        cortex=args.cortex, min_valid_weight=args.min_valid_weight, label_mode=args.label_mode,
                        fill_value=args.fill_value)
    print(f"wrote {out}")
    return 0
