"""Meshes and maps turned into PolyData, and the choice of mesh for a map (no rendering)."""
import numpy as np
import pytest

from spherical_ops import icosphere
from surfharm.viz.mesh import MeshError, check_values, surface_polydata
from surfharm.viz.surfaces import fsaverage5_mesh, load_surface, mesh_for_map, split_hemispheres


def tetrahedron():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return verts, faces


def test_polydata_holds_the_mesh_and_the_values_with_nan():
    verts, faces = tetrahedron()
    values = np.array([1.5, np.nan, 2.5, 3.0])
    mesh = surface_polydata(verts, faces, values, name="thickness")
    assert mesh.n_points == 4 and mesh.n_cells == 4
    np.testing.assert_array_equal(mesh.points, verts)
    np.testing.assert_array_equal(mesh.regular_faces, faces)
    np.testing.assert_array_equal(mesh.point_data["thickness"], values)
    assert mesh.active_scalars_name == "thickness"


def test_polydata_without_values_has_no_scalars():
    mesh = surface_polydata(*tetrahedron())
    assert mesh.n_points == 4 and len(mesh.point_data) == 0


@pytest.mark.parametrize("values, message", [
    (np.ones(5), "5 values but the surface has 4 vertices"),
    (np.array([1.0, np.inf, 1.0, 1.0]), "inf at vertex 1"),
    (np.array(["a", "b", "c", "d"]), "must be numeric"),
    (np.ones((2, 4)), "1-D"),
])
def test_bad_values_are_refused_with_the_reason(values, message):
    with pytest.raises(MeshError, match=message):
        surface_polydata(*tetrahedron(), values)


def test_bad_meshes_are_refused_with_the_reason():
    verts, faces = tetrahedron()
    with pytest.raises(MeshError, match="index vertices 0..4 but the mesh has 4 vertices"):
        surface_polydata(verts, np.array([[0, 1, 4]]))
    with pytest.raises(MeshError, match=r"\(n_vertices, 3\)"):
        surface_polydata(verts[:, :2], faces)
    with pytest.raises(MeshError, match="integer"):
        surface_polydata(verts, faces.astype(float))


def test_column_vector_is_accepted_as_one_map():
    assert check_values(np.ones((4, 1)), 4).shape == (4,)


def test_fsaverage5_mesh_is_nilearns():
    from nilearn import datasets
    import nibabel as nib

    mesh = fsaverage5_mesh("pial", "right")
    coords = nib.load(datasets.fetch_surf_fsaverage("fsaverage5")["pial_right"]).agg_data("NIFTI_INTENT_POINTSET")
    np.testing.assert_allclose(mesh.vertices, coords)
    assert mesh.faces.shape == (20480, 3)
    with pytest.raises(MeshError, match="unknown surface 'midthickness'"):
        fsaverage5_mesh("midthickness", "left")


def test_finer_maps_are_cut_to_their_fsaverage5_vertices():
    mesh, take = mesh_for_map("inflated", "lh", 163842)
    assert mesh.n_vertices == 10242
    values = np.arange(163842.0)
    np.testing.assert_array_equal(values[take], np.arange(10242.0))


def test_coarser_maps_draw_on_nested_fsaverage5_vertices_with_ico_faces():
    mesh, take = mesh_for_map("sphere", "left", 642)
    ico = icosphere(3)
    assert mesh.n_vertices == 642
    np.testing.assert_array_equal(mesh.faces, ico.faces)
    # fsaverage5's sphere (radius 100) restricted to its first 642 vertices is ic3.
    np.testing.assert_allclose(mesh.vertices / 100.0, ico.vertices, atol=1e-4)


def test_map_size_errors_name_the_counts():
    with pytest.raises(MeshError, match="1000 values: not an icosahedral"):
        mesh_for_map("pial", "left", 1000)
    verts, faces = tetrahedron()
    with pytest.raises(MeshError, match="map has 5 values but the surface given surface has 4 vertices"):
        mesh_for_map((verts, faces), "left", 5)


def test_user_surface_from_pair_object_and_file(tmp_path):
    import nibabel as nib

    verts, faces = tetrahedron()
    assert load_surface((verts, faces)).n_vertices == 4
    ico = icosphere(1)
    assert load_surface(ico).n_vertices == 42
    path = tmp_path / "lh.test"
    nib.freesurfer.write_geometry(str(path), ico.vertices * 100, ico.faces.astype(np.int32))
    mesh = load_surface(str(path))
    np.testing.assert_allclose(mesh.vertices, ico.vertices * 100, atol=1e-4)
    np.testing.assert_array_equal(mesh.faces, ico.faces)


def test_split_hemispheres():
    both = np.arange(20.0)
    halves = split_hemispheres(both, "both")
    np.testing.assert_array_equal(halves["lh"], np.arange(10.0))
    np.testing.assert_array_equal(halves["rh"], np.arange(10.0, 20.0))
    stacks = split_hemispheres(np.ones((3, 8)), "both")
    assert stacks["lh"].shape == (3, 4)
    assert list(split_hemispheres({"rh": both, "lh": both})) == ["lh", "rh"]
    assert list(split_hemispheres({"right": both, "left": both})) == ["lh", "rh"]
    assert list(split_hemispheres(both, "right")) == ["rh"]
    with pytest.raises(MeshError, match="even count"):
        split_hemispheres(np.ones(7), "both")
    with pytest.raises(MeshError, match="hemi='middle'"):
        split_hemispheres(both, "middle")
