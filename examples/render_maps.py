"""Rendering cortical maps: one scan, the site effect before/after ComBat, a before/after panel.
=============================================================================================

Off-screen (no display needed); PNGs are written to the output folder. With a display, pass
``off_screen=False`` and call ``.show()`` on the returned Plotter to rotate the brain.

    python examples/render_maps.py                 # fsaverage5 (10242 vertices per hemisphere)
    python examples/render_maps.py --quick         # level 4
"""
from _common import parse_args

from surfharm.harmonize import ComBat
from surfharm.simulate import preset, simulate_cohort
from surfharm.viz import plot_before_after, plot_site_maps, plot_surface_map

args = parse_args(__doc__.partition("\n")[0], "example-output/renderings")
sim = simulate_cohort(preset("quick", level=4 if args.quick else 5, n_per_site=15 if args.quick else 40))
covariates = sim.table[["age", "female"]]
harmonized = ComBat().fit_transform(sim.maps, sites=sim.sites, covariates=covariates)

plot_surface_map(sim.maps[0], "inflated", hemi="lh", title=f"{sim.table['subject'][0]}: cortical thickness",
                 screenshot=f"{args.out}/one_scan.png").close()
plot_site_maps(sim.maps, sim.sites, after=harmonized, covariates=covariates, hemi="lh",
               title="site deviation from the mean of sites (age and sex adjusted)",
               screenshot=f"{args.out}/site_effects.png").close()
plot_before_after(sim.maps[0], harmonized[0], "inflated", hemi="lh", labels=("raw", "ComBat"),
                  screenshot=f"{args.out}/before_after.png").close()
print(f"wrote one_scan.png, site_effects.png and before_after.png in {args.out}")
