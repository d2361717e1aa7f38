"""See it: cortical maps drawn with pyvista, site-effect plots with matplotlib, and an HTML report.

Importing this package is cheap: pyvista and matplotlib are imported inside the functions that
draw. Everything works off-screen (no display needed); with a display, pass ``off_screen=False`` to a
``plot_*`` surface function and call ``.show()`` on the Plotter it returns.

>>> from surfharm.viz import plot_before_after                      # doctest: +SKIP
>>> plot_before_after(raw_map, harmonized_map, "inflated", hemi="lh", screenshot="before_after.png")
"""
from surfharm.viz.mesh import MeshError, surface_polydata
from surfharm.viz.plots import (
    plot_age_trajectories,
    plot_method_comparison,
    plot_pca_by_site,
    plot_site_distributions,
    read_metrics,
    save_figure,
)
from surfharm.viz.report import build_report_html, report_from_run, write_report
from surfharm.viz.run_folder import RunData, RunFolderError, read_run
from surfharm.viz.site_effects import site_deviation_maps, site_effect_map, site_mean_maps
from surfharm.viz.surface import plot_before_after, plot_site_effect, plot_site_maps, plot_surface_map
from surfharm.viz.surfaces import fsaverage5_mesh, load_surface, read_map_file

__all__ = [
    "MeshError", "RunData", "RunFolderError", "build_report_html", "fsaverage5_mesh", "load_surface",
    "plot_age_trajectories", "plot_before_after", "plot_method_comparison", "plot_pca_by_site",
    "plot_site_distributions", "plot_site_effect", "plot_site_maps", "plot_surface_map", "read_map_file",
    "read_metrics", "read_run", "report_from_run", "save_figure", "site_deviation_maps", "site_effect_map",
    "site_mean_maps", "surface_polydata", "write_report",
]
