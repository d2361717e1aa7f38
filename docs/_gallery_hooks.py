"""Callables of the gallery configuration (named by string in conf.py, so the build environment pickles)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_OUT: Path | None = None


def quick_args(gallery_conf, script_vars):
    """Command-line arguments of each example: quick mode, output into a temporary folder."""
    global _OUT
    if _OUT is None:
        _OUT = Path(tempfile.mkdtemp(prefix="surfharm-gallery-"))
        atexit.register(shutil.rmtree, _OUT, ignore_errors=True)
    return ["--quick", "--out", str(_OUT / Path(script_vars["src_file"]).stem)]


def _keep_last_image() -> None:
    """Let pyvista's gallery scraper show plotters that an example closed after its own screenshot.

    pyvista keeps closed plotters for the scraper while ``pyvista.BUILDING_GALLERY`` is set, but a closed
    plotter can be shown only if its last image was kept (``show()`` keeps it; ``close()`` does not).
    """
    from pyvista.plotting.plotter import BasePlotter

    if getattr(BasePlotter.close, "_keeps_last_image", False):
        return
    close = BasePlotter.close

    def close_keeping_image(self, *args, **kwargs):
        if self.last_image is None and getattr(self, "render_window", None) is not None:
            self.last_image = self.screenshot(None, return_img=True)
        return close(self, *args, **kwargs)

    close_keeping_image._keeps_last_image = True
    BasePlotter.close = close_keeping_image


def reset_state(gallery_conf, fname, when):
    """Around each example: scikit-learn's metadata routing off, every pyvista plotter closed."""
    import pyvista
    import sklearn

    sklearn.set_config(enable_metadata_routing=False)
    _keep_last_image()
    if when == "after":
        pyvista.close_all()
