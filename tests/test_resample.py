"""Sphere-to-sphere barycentric resampling: exact triangle location, accuracy, masks, labels, nesting."""
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from spherical_ops import icosphere, n_vertices
from surfharm.io import Surface, read_map, read_surface
from surfharm.resample import (
    SphereError,
    SphereResampler,
    cut_to_level,
    ico_to_native,
    locate,
    native_to_ico,
    to_ico,
    unit_sphere,
    upsample_ico,
)

DATA = Path(__file__).parent / "data" / "fs_subject1"


# -- realistic spheres ---------------------------------------------------------------------------

def perturbed_ico_sphere(level: int, seed: int, amplitude: float = 0.02) -> Surface:
    """An icosphere rotated and smoothly warped, radius 100: a stand-in for a subject's sphere.reg."""
    ico = icosphere(level)
    v = ico.vertices @ Rotation.random(random_state=seed).as_matrix().T
    warp = amplitude * np.stack([np.sin(2 * v[:, 1]), np.cos(3 * v[:, 2]), np.sin(2 * v[:, 0] + 1)], axis=1)
    v = v + warp
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return Surface(vertices=100 * v, faces=ico.faces.copy())


def random_delaunay_sphere(n: int, seed: int) -> Surface:
    """A non-icosahedral sphere mesh: random points, triangulated by their convex hull (radius 100)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return Surface(vertices=100 * v, faces=ConvexHull(v).simplices.astype(np.int64))


def fibonacci_sphere(n: int) -> Surface:
    """A quasi-uniform non-icosahedral sphere mesh (like a subject's sphere.reg), radius 100."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    v = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    return Surface(vertices=100 * v, faces=ConvexHull(v).simplices.astype(np.int64))


def real_sh(xyz: np.ndarray, l: int, m: int) -> np.ndarray:
    """Real, orthonormal spherical harmonic Y_lm at unit vectors (max |Y_1m| = 0.489)."""
    xyz = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    theta = np.arccos(np.clip(xyz[:, 2], -1, 1))
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    y = sph_harm_y(l, abs(m), theta, phi)
    if m == 0:
        return y.real
    return np.sqrt(2) * (y.real if m > 0 else y.imag)


def smooth_field(xyz: np.ndarray) -> np.ndarray:
    """A thickness-like smooth map (mm): 2.5 + low-degree harmonics."""
    return 2.5 + 0.5 * real_sh(xyz, 1, 1) + 0.3 * real_sh(xyz, 2, 0) - 0.2 * real_sh(xyz, 3, -2)


# -- exact location against a slow reference -------------------------------------------------------

def _slow_locate(vertices, faces, points):
    """For every point, loop over every face and solve [a b c] w = p; inside iff all w >= 0."""
    out_face, out_w = [], []
    for p in points:
        best, best_score, best_w = -1, -np.inf, None
        for f, (i, j, k) in enumerate(faces):
            w = np.linalg.solve(np.stack([vertices[i], vertices[j], vertices[k]], axis=1), p)
            if w.sum() <= 0:
                continue  # the opposite ray
            if w.min() > best_score:
                best, best_score, best_w = f, w.min(), w / w.sum()
        out_face.append(best)
        out_w.append(best_w)
    return np.array(out_face), np.array(out_w)


def test_locate_matches_slow_reference_on_irregular_mesh():
    src = random_delaunay_sphere(200, seed=1)
    vertices = unit_sphere(src.vertices)
    points = np.random.default_rng(2).normal(size=(150, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    face, weights = locate(vertices, src.faces, points)
    ref_face, ref_w = _slow_locate(vertices, src.faces, points)
    np.testing.assert_array_equal(face, ref_face)
    np.testing.assert_allclose(weights, ref_w, atol=1e-12)
    # the weights reproduce the crossing point: sum w_i v_i is parallel to p
    crossing = np.einsum("nk,nkd->nd", weights, vertices[src.faces[face]])
    cosine = np.einsum("nd,nd->n", crossing / np.linalg.norm(crossing, axis=1, keepdims=True), points)
    assert np.all(cosine > 1 - 1e-12)


def test_weights_are_a_partition_of_unity_with_three_entries_per_row():
    r = SphereResampler(random_delaunay_sphere(500, seed=3), 4)
    assert r.weights.shape == (n_vertices(4), 500)
    np.testing.assert_allclose(np.asarray(r.weights.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert r.weights.min() >= 0
    assert np.all(np.diff(r.weights.indptr) <= 3)


def test_same_mesh_is_identity_even_with_inverted_faces():
    ico = icosphere(4)
    x = np.random.default_rng(0).normal(size=ico.n_vertices)
    np.testing.assert_allclose(SphereResampler(ico, ico)(x), x, atol=1e-12)
    inverted = (ico.vertices, ico.faces[:, ::-1])
    np.testing.assert_allclose(SphereResampler(inverted, ico)(x), x, atol=1e-12)


# -- accuracy ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rotated_level7():
    ico = icosphere(7)
    rot = Rotation.from_euler("xyz", [0.3, 0.7, 1.1]).as_matrix()
    source = (ico.vertices @ rot.T, ico.faces)
    return source, ico, SphereResampler(source, ico)


@pytest.mark.parametrize("m", [-1, 0, 1])
def test_degree1_harmonic_between_rotated_level7_spheres_within_1e5(rotated_level7, m):
    (src_v, _), ico, r = rotated_level7
    err = np.abs(r(real_sh(src_v, 1, m)) - real_sh(ico.vertices, 1, m)).max()
    assert err <= 1e-5


def test_low_degree_field_between_rotated_level7_spheres_within_linear_interpolation_bound(rotated_level7):
    # Linear interpolation on triangles of edge h errs by at most ~h^2/8 x |second derivative|;
    # at level 7 h ~ 0.0095 (unit sphere): h^2/8 ~ 1.1e-5. For Y_20 (|d2| <~ 3.5) that is ~4e-5.
    (src_v, _), ico, r = rotated_level7
    err = np.abs(r(real_sh(src_v, 2, 0)) - real_sh(ico.vertices, 2, 0)).max()
    assert err <= 4e-5
    err_smooth = np.abs(r(smooth_field(src_v)) - smooth_field(ico.vertices)).max()
    assert err_smooth <= 5e-5


def longest_edge(vertices, faces) -> float:
    u = unit_sphere(vertices)
    return float(np.linalg.norm(u[faces] - u[np.roll(faces, 1, axis=1)], axis=2).max())


def test_native_to_ico_to_native_round_trip_of_smooth_field():
    # Documented bound: each step errs by at most ~h^2/8 x |f''| (h: longest edge of the source
    # mesh); |f''| <~ 1.5 for smooth_field, so a round trip stays within 1.5 (h_native^2 + h_ico^2) / 8.
    native = fibonacci_sphere(20000)
    values = smooth_field(native.vertices).astype(np.float32)
    on_ico = native_to_ico(values, native, level=6)
    assert on_ico.shape == (40962,) and on_ico.dtype == np.float32
    h_native = longest_edge(native.vertices, native.faces)
    h_ico = longest_edge(icosphere(6).vertices, icosphere(6).faces)
    assert np.abs(on_ico - smooth_field(icosphere(6).vertices)).max() <= 1.5 * h_native ** 2 / 8
    back = ico_to_native(on_ico, native)
    assert back.shape == values.shape and back.dtype == np.float32
    assert np.abs(back - values).max() <= 1.5 * (h_native ** 2 + h_ico ** 2) / 8


def test_perturbed_sphere_reg_round_trip_keeps_values():
    sphere = perturbed_ico_sphere(6, seed=7)
    values = smooth_field(sphere.vertices)
    back = ico_to_native(native_to_ico(values, sphere, level=7), sphere)
    assert np.abs(back - values).max() < 1e-4


# -- masks and NaN -------------------------------------------------------------------------------------

def test_medial_wall_never_leaks_into_cortex():
    native = random_delaunay_sphere(8000, seed=11)
    u = unit_sphere(native.vertices)
    wall = u[:, 2] > 0.8                     # a polar cap: 10 % of the sphere's area
    values = 2.0 + 0.5 * u[:, 0]
    poisoned = np.where(wall, 1000.0, values)
    r = SphereResampler(native, 6)
    for out in (r(np.where(wall, np.nan, values)), r(poisoned, mask=~wall)):
        finite = np.isfinite(out)
        assert out[finite].max() <= values[~wall].max() + 1e-9   # no 1000 mixed in
        assert out[finite].min() >= values[~wall].min() - 1e-9
        # the NaN area follows the cap within about one triangle
        assert abs((~finite).mean() - 0.10) < 0.01
        z = icosphere(6).vertices[:, 2]
        assert np.all(finite[z < 0.77]) and not np.any(finite[z > 0.83])


def test_min_valid_weight_tiny_keeps_every_target_touching_cortex():
    native = random_delaunay_sphere(3000, seed=12)
    u = unit_sphere(native.vertices)
    values = np.where(u[:, 2] > 0.5, np.nan, 1.0)
    r = SphereResampler(native, 5)
    strict, loose = r(values), r(values, min_valid_weight=1e-9)
    assert np.isnan(strict).sum() > np.isnan(loose).sum()
    np.testing.assert_allclose(loose[np.isfinite(loose)], 1.0)


def test_stack_of_maps_matches_one_by_one():
    r = SphereResampler(random_delaunay_sphere(1000, seed=4), 4)
    maps = np.random.default_rng(0).normal(size=(3, 1000)).astype(np.float32)
    maps[1, :50] = np.nan
    together = r(maps)
    assert together.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(together[i], r(maps[i]), equal_nan=True, rtol=1e-6)


# -- labels ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "majority"])
def test_labels_are_never_mixed_and_follow_regions(mode):
    native = random_delaunay_sphere(6000, seed=21)
    u = unit_sphere(native.vertices)
    octant = lambda x: (x[:, 0] > 0) * 4 + (x[:, 1] > 0) * 2 + (x[:, 2] > 0)  # noqa: E731
    labels = octant(u) + 10
    r = SphereResampler(native, 5)
    out = r.labels(labels, mode=mode)
    assert set(np.unique(out)) <= set(np.unique(labels))
    ico = icosphere(5).vertices
    far_from_borders = np.abs(ico).min(axis=1) > 0.06
    np.testing.assert_array_equal(out[far_from_borders], octant(ico)[far_from_borders] + 10)


def test_real_annotation_on_same_mesh_round_trips_exactly():
    ico = icosphere(5)
    labels = np.random.default_rng(0).integers(0, 35, ico.n_vertices)
    np.testing.assert_array_equal(SphereResampler(ico, ico).labels(labels, mode="majority"), labels)


# -- icosahedral nesting -------------------------------------------------------------------------------

def test_fsaverage_map_cut_by_nesting_equals_interpolation_at_shared_vertices():
    fsaverage = read_map(DATA / "lh.curv.fwhm10.fsaverage.mgz")
    cut = cut_to_level(fsaverage, 5)
    np.testing.assert_array_equal(cut, fsaverage[:10242])
    interpolated = SphereResampler(7, 5)(fsaverage)   # fsaverage5 vertices are fsaverage vertices
    np.testing.assert_allclose(interpolated, cut, atol=1e-6)
    np.testing.assert_array_equal(to_ico(fsaverage, 7), fsaverage)


def test_upsample_keeps_existing_vertices_and_interpolates_midpoints():
    x = smooth_field(icosphere(4).vertices)
    up = upsample_ico(x, 5)
    np.testing.assert_allclose(up[: x.size], x, atol=1e-12)
    assert np.abs(up - smooth_field(icosphere(5).vertices)).max() < 5e-3


# -- bad spheres -------------------------------------------------------------------------------------

def test_sphere_with_nan_is_refused_with_its_name():
    s = perturbed_ico_sphere(3, seed=0)
    v = s.vertices.copy()
    v[17, 1] = np.nan
    with pytest.raises(SphereError, match=r"lh\.sphere\.reg.*NaN/inf.*vertex 17"):
        SphereResampler((v, s.faces), 3, source_name="lh.sphere.reg")


def test_white_surface_is_not_a_sphere():
    white = read_surface(DATA / "lh.white.gz")
    with pytest.raises(SphereError, match=r"lh\.white\.gz is not a sphere: vertex radius ranges"):
        SphereResampler(white, 3)


def test_radius_varying_more_than_one_percent_is_refused_but_half_a_percent_is_accepted():
    s = perturbed_ico_sphere(3, seed=0)
    scale = np.ones(s.n_vertices)
    scale[5] = 1.02
    with pytest.raises(SphereError, match="not a sphere"):
        unit_sphere(s.vertices * scale[:, None], name="lh.sphere.reg")
    scale[5] = 1.005
    assert np.allclose(np.linalg.norm(unit_sphere(s.vertices * scale[:, None]), axis=1), 1.0)


def test_map_length_that_matches_no_sphere_is_refused():
    r = SphereResampler(perturbed_ico_sphere(3, seed=0), 3, source_name="lh.sphere.reg")
    with pytest.raises(ValueError, match=r"thick has 100 values.*lh\.sphere\.reg has 642 vertices"):
        r(np.zeros(100), name="thick")
    with pytest.raises(ValueError, match="matches no icosahedral level"):
        to_ico(np.zeros(1000), 5)


def test_fallback_search_gives_the_same_answer_as_the_candidate_search():
    src = random_delaunay_sphere(400, seed=8)
    vertices = unit_sphere(src.vertices)
    points = icosphere(3).vertices
    face, w = locate(vertices, src.faces, points)
    # nearest centroid only, then every triangle: exercises the exhaustive fallback
    face_slow, w_slow = locate(vertices, src.faces, points, candidates=(1,))
    np.testing.assert_array_equal(face, face_slow)
    np.testing.assert_allclose(w, w_slow, atol=1e-12)
