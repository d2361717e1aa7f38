"""Renderings compared with a small committed image cache (off-screen, fixed size, camera and lighting).

The cache holds PNGs drawn by this module from nilearn's real fsaverage5 thickness. To redraw it
after an intended change of the pictures, run

    SURFHARM_UPDATE_IMAGE_CACHE=1 python -m pytest tests/test_viz_render.py

look at the new PNGs, and commit them.
"""
import os
from pathlib import Path

import numpy as np
import pytest

pv = pytest.importorskip("pyvista")

from surfharm.viz import plot_before_after, plot_site_effect, plot_site_maps, plot_surface_map  # noqa: E402
from surfharm.viz.grid import NAN_COLOR  # noqa: E402

CACHE = Path(__file__).parents[1] / "data" / "image_cache"
UPDATE = os.environ.get("SURFHARM_UPDATE_IMAGE_CACHE") == "1"
# pyvista.compare_images error (vtkImageDifference, threshold 1): 0 for the same pixels; here about
# 75 when every value moves by 0.05 mm on a 1-4 mm scale, above 1500 for a different map or view.
TOLERANCE = 500.0


@pytest.fixture(scope="module")
def thickness():
    """Real fsaverage5 thickness of both hemispheres (mm); FreeSurfer's 0 in the medial wall -> NaN."""
    import nibabel as nib
    from nilearn import datasets

    files = datasets.fetch_surf_fsaverage("fsaverage5")
    out = {}
    for hemi in ("left", "right"):
        values = nib.load(files[f"thick_{hemi}"]).agg_data().astype(np.float64)
        values[values == 0] = np.nan
        out[hemi] = values
    return out


def screenshot(plotter) -> np.ndarray:
    image = plotter.screenshot(return_img=True)
    plotter.close()
    return image


def assert_not_blank(image: np.ndarray) -> None:
    gray = image[..., :3].astype(float).mean(axis=2)
    assert gray.std() > 10, "the image is uniform"
    non_white = (image[..., :3] < 235).any(axis=2).mean()
    assert non_white > 0.15, f"only {non_white:.1%} of the pixels are drawn on"


def check_against_cache(image: np.ndarray, name: str) -> None:
    assert_not_blank(image)
    path = CACHE / name
    if UPDATE:
        CACHE.mkdir(parents=True, exist_ok=True)
        _save_png(image, path)
        pytest.skip(f"image cache updated: {path}")
    assert path.exists(), f"{path} is missing; run with SURFHARM_UPDATE_IMAGE_CACHE=1 to draw it"
    cached = _read_png(path)
    assert cached.shape == image.shape, f"size {image.shape} differs from the cached {cached.shape}"
    error = pv.compare_images(cached, image)
    assert error < TOLERANCE, f"{name}: image error {error:.0f} > {TOLERANCE} against the cache"


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image[..., :3]).save(path, optimize=True)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_surface_map_matches_cache(thickness):
    plotter = plot_surface_map(thickness["left"], "inflated", hemi="lh", clim=(1, 4), panel_size=(180, 140),
                               off_screen=True)
    check_against_cache(screenshot(plotter), "surface_map_lh_inflated.png")


def test_before_after_matches_cache(thickness):
    after = {h: 0.9 * v + 0.25 for h, v in thickness.items()}
    plotter = plot_before_after(thickness, after, "pial", views=("lateral",), clim=(1, 4), panel_size=(150, 115),
                                off_screen=True)
    check_against_cache(screenshot(plotter), "before_after_both_pial.png")


def test_cache_comparison_tells_different_maps_apart(thickness):
    """The tolerance is not so loose that another map or another view passes."""
    reference = screenshot(plot_surface_map(thickness["left"], clim=(1, 4), panel_size=(180, 140), off_screen=True))
    shuffled = screenshot(plot_surface_map(thickness["left"][::-1].copy(), clim=(1, 4), panel_size=(180, 140),
                                           off_screen=True))
    swapped = screenshot(plot_surface_map(thickness["left"], clim=(1, 4), panel_size=(180, 140),
                                          views=("medial", "lateral"), off_screen=True))
    assert pv.compare_images(reference, shuffled) > TOLERANCE
    assert pv.compare_images(reference, swapped) > TOLERANCE


def test_medial_wall_is_grey_and_colour_bar_has_units(thickness):
    plotter = plot_surface_map(thickness["left"], clim=(1, 4), panel_size=(120, 90), off_screen=True)
    actors = [a for r in plotter.renderers for a in r.actors.values() if hasattr(a, "mapper") and
              getattr(a.mapper, "dataset", None) is not None and a.mapper.dataset.n_points == 10242]
    assert len(actors) == 2  # lateral and medial
    for actor in actors:
        assert tuple(actor.mapper.lookup_table.nan_color.float_rgb) == pytest.approx(NAN_COLOR, abs=1 / 255)
        assert tuple(actor.mapper.scalar_range) == (1.0, 4.0)
    assert list(plotter.scalar_bars.keys()) == ["thickness (mm)"]
    # the medial-wall grey is drawn: some pixels are neutral grey (R = G = B, not white)
    image = screenshot(plotter).astype(int)
    neutral = (np.abs(image[..., 0] - image[..., 1]) < 3) & (np.abs(image[..., 1] - image[..., 2]) < 3) & \
              (image[..., 0] < 230) & (image[..., 0] > 60)
    assert neutral.mean() > 0.005


def test_difference_row_is_centred_on_zero(thickness):
    after = thickness["left"] + np.linspace(-0.3, 0.1, 10242)
    plotter = plot_before_after(thickness["left"], after, panel_size=(100, 80), off_screen=True)
    ranges = {name: tuple(bar.GetLookupTable().GetRange()) for name, bar in plotter.scalar_bars.items()}
    plotter.close()
    low, high = ranges["difference (mm)"]
    assert low == pytest.approx(-high) and high > 0.25  # 99th percentile of |difference| of up to 0.3 mm
    raw_low, raw_high = ranges["thickness (mm)"]
    assert raw_low < 2 < raw_high  # one shared scale for raw and harmonized


def test_screenshot_written_to_png(tmp_path, thickness):
    out = tmp_path / "map.png"
    plotter = plot_surface_map(thickness["right"], "white", hemi="rh", panel_size=(120, 90), screenshot=out)
    plotter.close()
    image = _read_png(out)
    assert image.shape[:2] == (90, int(round((0.001 + 2 + 0.6) * 120)))
    assert_not_blank(image)


def test_site_maps_and_site_effect_render(thickness):
    rng = np.random.default_rng(0)
    sites = np.repeat(["A", "B"], 6)
    maps = thickness["left"][None, :] + rng.normal(0, 0.02, (12, 10242))
    maps[sites == "B"] += 0.2
    after = maps - np.where(sites == "B", 0.2, 0.0)[:, None]
    plotter = plot_site_maps(maps, sites, after, panel_size=(100, 80), off_screen=True)
    ranges = {name: tuple(bar.GetLookupTable().GetRange()) for name, bar in plotter.scalar_bars.items()}
    assert_not_blank(screenshot(plotter))
    assert ranges["site effect (mm)"][1] == pytest.approx(0.1, abs=0.03)  # +-0.1 mm around the mean of 2 sites
    plotter = plot_site_effect(maps, sites, after, panel_size=(100, 80), off_screen=True)
    assert_not_blank(screenshot(plotter))


def test_mask_greys_out_vertices(thickness):
    mask = np.ones(10242, dtype=bool)
    mask[:5000] = False
    plotter = plot_surface_map(np.nan_to_num(thickness["left"]), mask=mask, panel_size=(100, 80), off_screen=True)
    meshes = [a.mapper.dataset for r in plotter.renderers for a in r.actors.values()
              if hasattr(a, "mapper") and getattr(a.mapper, "dataset", None) is not None
              and a.mapper.dataset.n_points == 10242]
    plotter.close()
    values = meshes[0].point_data["thickness (mm)"]
    assert np.isnan(values[:5000]).all() and np.isfinite(values[5000:]).all()


def test_bad_drawing_requests_are_refused(thickness):
    from surfharm.viz.mesh import MeshError

    with pytest.raises(MeshError, match="every value is NaN"):
        plot_surface_map(np.full(10242, np.nan), off_screen=True)
    with pytest.raises(MeshError, match="unknown view 'top'"):
        plot_surface_map(thickness["left"], views=("top",), off_screen=True)
    with pytest.raises(MeshError, match=r"clim must be finite with low < high, got \(4, 1\)"):
        plot_surface_map(thickness["left"], clim=(4, 1), off_screen=True)
    with pytest.raises(MeshError, match="pass hemi='both'"):
        plot_surface_map(np.concatenate([thickness["left"], thickness["right"]]), off_screen=True)
