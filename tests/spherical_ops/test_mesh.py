"""Icosphere: FreeSurfer vertex/face order, nesting, geometry, caching and errors."""
import dataclasses

import nibabel as nib
import numpy as np
import pytest
from nilearn import datasets

import spherical_ops as so
from spherical_ops.mesh import IC0_FACES


@pytest.fixture(scope="module")
def fsaverage5_sphere():
    """nilearn's bundled fsaverage5 left sphere (radius 100): vertices normalised, faces."""
    gii = nib.load(datasets.fetch_surf_fsaverage("fsaverage5")["sphere_left"])
    vertices = gii.darrays[0].data.astype(np.float64)
    return vertices / np.linalg.norm(vertices, axis=1, keepdims=True), gii.darrays[1].data.astype(np.int64)


def test_level5_matches_fsaverage5_order_and_coordinates(fsaverage5_sphere):
    vertices, faces = fsaverage5_sphere
    ico = so.icosphere(5)
    assert ico.vertices.shape == vertices.shape
    assert np.abs(ico.vertices - vertices).max() < 1e-4
    np.testing.assert_array_equal(ico.faces, faces)


@pytest.mark.parametrize("level", range(5))
def test_lower_levels_are_the_first_vertices_of_fsaverage5(fsaverage5_sphere, level):
    vertices, _ = fsaverage5_sphere
    ico = so.icosphere(level)
    assert np.abs(ico.vertices - vertices[: ico.n_vertices]).max() < 1e-4


@pytest.mark.parametrize("level", range(8))
def test_counts_euler_and_unit_radius(level):
    ico = so.icosphere(level)
    assert ico.n_vertices == 10 * 4 ** level + 2 == so.VERTEX_COUNTS[level]
    assert ico.n_faces == 20 * 4 ** level
    edges = {tuple(sorted(e)) for f in ico.faces[:2000] for e in ((f[0], f[1]), (f[1], f[2]), (f[0], f[2]))}
    assert len(edges) > 0
    # Euler characteristic of a sphere: V - E + F = 2, with E = 3F/2 on a closed triangle mesh.
    assert ico.n_vertices - 3 * ico.n_faces // 2 + ico.n_faces == 2
    np.testing.assert_allclose(np.linalg.norm(ico.vertices, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("level", [1, 4, 7])
def test_nesting_and_midpoints(level):
    fine, coarse = so.icosphere(level), so.icosphere(level - 1)
    np.testing.assert_array_equal(fine.vertices[: coarse.n_vertices], coarse.vertices)
    parents = so.upsample_parents(level)
    mid = coarse.vertices[parents[:, 0]] + coarse.vertices[parents[:, 1]]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    np.testing.assert_allclose(fine.vertices[coarse.n_vertices:], mid, atol=1e-12)


@pytest.mark.parametrize("level", [0, 3, 7])
def test_faces_point_outward_and_every_edge_is_shared_by_two_faces(level):
    ico = so.icosphere(level)
    v = ico.vertices[ico.faces]
    normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    assert (np.einsum("ij,ij->i", normals, v.mean(axis=1)) > 0).all()
    directed = np.concatenate([ico.faces[:, [0, 1]], ico.faces[:, [1, 2]], ico.faces[:, [2, 0]]])
    keys = directed[:, 0] * ico.n_vertices + directed[:, 1]
    reverse = directed[:, 1] * ico.n_vertices + directed[:, 0]
    assert np.unique(keys).size == keys.size            # each directed edge once: consistent orientation
    assert np.isin(reverse, keys).all()                 # and its reverse exists: closed manifold


def test_level0_is_freesurfers_icosahedron():
    ico = so.icosphere(0)
    np.testing.assert_array_equal(ico.faces, IC0_FACES)
    np.testing.assert_allclose(ico.vertices[0], [0, 0, 1])
    np.testing.assert_allclose(ico.vertices[11], [0, 0, -1])


def test_cached_and_read_only():
    a, b = so.icosphere(6), so.icosphere(6)
    assert a is b
    with pytest.raises(ValueError):
        a.vertices[0, 0] = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.level = 3


@pytest.mark.parametrize("bad", [-1, 8, 2.0, "5", None, True])
def test_bad_level_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="level"):
        so.icosphere(bad)


def test_level_of_names_valid_counts_and_nearest_level():
    assert so.level_of(10242) == 5
    with pytest.raises(ValueError) as err:
        so.level_of(10000, what="lh.thickness")
    message = str(err.value)
    assert "lh.thickness" in message and "10000" in message and "163842" in message and "level 5" in message
