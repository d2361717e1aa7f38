"""``surfharm render``: draw a cortical map (or raw vs harmonized) into a PNG, off-screen."""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  # a thickness map on fsaverage5's inflated surface, lateral and medial views
  surfharm render lh.thickness.fsaverage5.mgz -o thickness.png

  # both hemispheres on the pial surface, shared colour limits 1-4 mm
  surfharm render lh.thickness.fsaverage5.mgz rh.thickness.fsaverage5.mgz --surface pial --clim 1 4 -o both.png

  # raw, harmonized and their difference (diverging colours centred on 0) in one figure
  surfharm render lh.thickness.fsaverage.mgz --after lh.thickness.harmonized.fsaverage.mgz -o before_after.png

  # a native map on the subject's own surface; FreeSurfer's 0 in the medial wall shown grey
  surfharm render surf/lh.thickness --surface surf/lh.pial --mask-zeros -o subject.png

Maps: FreeSurfer curv, MGH/MGZ (--frame picks a scan of a stacked file) or GIfTI. Named surfaces
(pial, white, inflated, sphere) are fsaverage5 from nilearn and take any fsaverage/icosahedral map
(finer maps are shown at their fsaverage5 vertices). The hemisphere comes from the file name
(lh./rh.) or --hemi. Without a display the figure is drawn off-screen; --interactive opens a window.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "render", help="draw a cortical map (or raw vs harmonized) on a surface into a PNG",
        description="Draw per-vertex maps on a cortical surface with pyvista: lateral and medial views, "
                    "a colour bar with units, vertices outside cortex (NaN) in grey.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", nargs="+", metavar="MAP",
                        help="map file(s): one hemisphere, or a left and a right one")
    parser.add_argument("-o", "--output", help="PNG to write (required unless --interactive)")
    parser.add_argument("--after", nargs="+", metavar="MAP",
                        help="harmonized map(s) of the same hemispheres: draw raw, harmonized and the difference")
    parser.add_argument("--surface", nargs="+", default=["inflated"], metavar="SURFACE",
                        help="pial, white, inflated or sphere (fsaverage5; default inflated), or surface file(s), "
                             "one per map in the same order")
    parser.add_argument("--hemi", choices=("lh", "rh"), help="hemisphere of a single map whose name does not say")
    parser.add_argument("--views", nargs="+", default=["lateral", "medial"],
                        choices=("lateral", "medial", "dorsal", "ventral", "anterior", "posterior"))
    parser.add_argument("--cmap", help="matplotlib colour map name (default viridis; RdBu_r for differences)")
    parser.add_argument("--clim", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="colour limits (default: 1st-99th percentile)")
    parser.add_argument("--symmetric", action="store_true", help="colour limits centred on 0 (signed maps)")
    parser.add_argument("--label", default="thickness", help="what the map holds (colour-bar title)")
    parser.add_argument("--units", default="mm", help="unit of the values (colour-bar title; '' for none)")
    parser.add_argument("--frame", type=int, help="which map of a file holding several (0-based)")
    parser.add_argument("--mask-zeros", action="store_true",
                        help="show exact zeros as outside cortex (FreeSurfer writes 0 in the medial wall)")
    parser.add_argument("--title", help="title above the figure")
    parser.add_argument("--interactive", action="store_true", help="open a window (needs a display) instead of a PNG")
    parser.set_defaults(func=run)


def _hemis(paths: list[str], given: str | None) -> list[str]:
    from surfharm.cli import CLIError
    from surfharm.io import hemi_of

    if len(paths) > 2:
        raise CLIError(f"got {len(paths)} maps; expected one hemisphere or a left and a right one")
    if len(paths) == 1:
        return [given or hemi_of(paths[0]) or "lh"]
    found = [hemi_of(p) for p in paths]
    if found[0] == found[1] and found[0] is not None:
        raise CLIError(f"both maps are {found[0]}: {paths[0]}, {paths[1]}; expected a left and a right hemisphere")
    if found == ["rh", "lh"] or found[0] == "rh" or found[1] == "lh":
        return ["rh", "lh"]
    return ["lh", "rh"]


def _read(paths: list[str], hemis: list[str], frame, mask_zeros: bool) -> dict:
    import numpy as np

    from surfharm.viz.surfaces import read_map_file

    out = {}
    for path, hemi in zip(paths, hemis):
        values = read_map_file(path, frame=frame)
        out[hemi] = np.where(values == 0, np.nan, values) if mask_zeros else values
    return out


def run(args) -> int:
    from surfharm.cli import CLIError
    from surfharm.viz.grid import has_display
    from surfharm.viz.surface import plot_before_after, plot_surface_map

    if not args.output and not args.interactive:
        raise CLIError("give -o OUT.png (or --interactive to open a window)")
    if args.interactive and not has_display():
        raise CLIError("--interactive needs a display (DISPLAY/WAYLAND_DISPLAY is not set); write a PNG with -o")
    hemis = _hemis(args.maps, args.hemi)
    if len(args.surface) not in (1, len(hemis)):
        raise CLIError(f"got {len(args.surface)} surfaces for {len(hemis)} maps; give one name, or one file per map")
    if len(args.surface) == 1 and len(hemis) == 2 and args.surface[0].lower() not in ("pial", "white", "inflated",
                                                                                      "infl", "sphere"):
        raise CLIError(f"{args.surface[0]} is one surface file but there are two maps; give one surface per map")
    surface = args.surface[0] if len(args.surface) == 1 else dict(zip(hemis, args.surface))
    before = _read(args.maps, hemis, args.frame, args.mask_zeros)
    shown = dict(off_screen=not args.interactive, screenshot=args.output, title=args.title, views=args.views)
    units = args.units or None
    if args.after:
        if len(args.after) != len(args.maps):
            raise CLIError(f"got {len(args.after)} --after maps for {len(args.maps)} maps; expected one per map")
        after = _read(args.after, hemis, args.frame, args.mask_zeros)
        plotter = plot_before_after(before, after, surface, cmap=args.cmap or "viridis", clim=args.clim,
                                    quantity=args.label, units=units, **shown)
    else:
        cmap = args.cmap or ("RdBu_r" if args.symmetric else "viridis")
        plotter = plot_surface_map(before, surface, cmap=cmap, clim=args.clim, symmetric=args.symmetric,
                                   label=args.label, units=units, **shown)
    if args.interactive:
        plotter.show()
    else:
        plotter.close()
    if args.output:
        print(f"wrote {args.output}")
    return 0
