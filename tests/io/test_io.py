"""Reading the real FreeSurfer subject and GIfTI files, and writing every map format back."""
import shutil
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pytest

from surfharm import io as sio
from surfharm._atomic import OutputError

DATA = Path(__file__).parents[1] / "data" / "fs_subject1"
NILEARN_FSAVERAGE5 = Path(nilearn.__file__).parent / "datasets" / "data" / "fsaverage5"  # shipped with nilearn


# -- reading real files ---------------------------------------------------------------------------

def test_real_thickness_curv():
    thickness = sio.read_map(DATA / "lh.thickness")
    assert thickness.shape == (149244,) and thickness.dtype == np.float32
    assert 0 <= thickness.min() and thickness.max() <= 5.0  # FreeSurfer caps thickness at 5 mm
    assert 2.0 < float(np.median(thickness[thickness > 0])) < 3.5
    np.testing.assert_array_equal(thickness, nib.freesurfer.read_morph_data(str(DATA / "lh.thickness")))


def test_real_white_surface_gz_is_read_transparently():
    white = sio.read_surface(DATA / "lh.white.gz")
    assert (white.n_vertices, white.n_faces) == (149244, 298484)
    assert white.faces.min() == 0 and white.faces.max() == 149243
    assert np.isfinite(white.vertices).all()
    # a left hemisphere lies (mostly) at negative x in scanner RAS
    assert np.median(white.vertices[:, 0]) < 0


def test_real_annotation_gz_and_read_cortex_mask():
    annot = sio.read_annot(DATA / "lh.aparc.annot.gz")
    assert annot.n_vertices == 149244
    assert "superiorfrontal" in annot.names and "precentral" in annot.names
    mask = sio.read_cortex_mask(annot)
    assert mask.dtype == bool and mask.shape == (149244,)
    # cortex = everything but unknown/corpuscallosum/unlabelled: most of the surface, not all of it
    assert 0.85 < mask.mean() < 0.99
    unknown = annot.names.index("unknown")
    assert not mask[annot.labels == unknown].any()
    np.testing.assert_array_equal(sio.read_map(DATA / "lh.aparc.annot.gz"), annot.labels)


def test_real_label():
    vertices, values = sio.read_label(DATA / "lh.entorhinal_exvivo.label")
    assert vertices.ndim == 1 and vertices.size == values.size > 100
    assert vertices.max() < 149244
    mask = sio.read_cortex_mask(DATA / "lh.entorhinal_exvivo.label", n_vertices=149244)
    assert mask.sum() == np.unique(vertices).size


def test_real_fsaverage_mgz():
    curv = sio.read_map(DATA / "lh.curv.fwhm10.fsaverage.mgz")
    assert curv.shape == (163842,) and curv.dtype == np.float32
    assert np.isfinite(curv).all() and curv.std() > 0
    assert sio.mgh_shape(DATA / "lh.curv.fwhm10.fsaverage.mgz") == (1, 163842)


def test_nilearn_fsaverage5_gifti_map_and_sphere():
    thick = sio.read_map(NILEARN_FSAVERAGE5 / "thick_left.gii.gz")
    sphere = sio.read_surface(NILEARN_FSAVERAGE5 / "sphere_left.gii.gz")
    assert thick.shape == (10242,) and sphere.n_vertices == 10242
    np.testing.assert_allclose(np.linalg.norm(sphere.vertices, axis=1), 100, rtol=1e-3)


def test_format_detected_from_content_when_the_name_says_nothing(tmp_path):
    shutil.copy(DATA / "lh.thickness", tmp_path / "thick_no_ext")
    shutil.copy(DATA / "lh.curv.fwhm10.fsaverage.mgz", tmp_path / "mystery.bin")
    assert sio.detect_format(tmp_path / "thick_no_ext") == "curv"
    assert sio.detect_format(DATA / "lh.white.gz") == "surface"
    assert sio.detect_format(tmp_path / "mystery.bin") == "mgh"


@pytest.mark.parametrize("name,hemi", [("lh.thickness", "lh"), ("rh.sphere.reg", "rh"),
                                        ("sub-01_hemi-L_thickness.shape.gii", "lh"), ("thick_right.gii.gz", "rh"),
                                        ("thickness.mgh", None)])
def test_hemisphere_from_file_name(name, hemi):
    assert sio.hemi_of(name) == hemi


# -- writing: same values, same vertex count, never over an input ------------------------------------

@pytest.mark.parametrize("name", ["lh.thickness.harmonized", "lh.thickness.harmonized.gz",
                                  "lh.thickness.harmonized.mgh", "lh.thickness.harmonized.mgz",
                                  "lh.thickness.harmonized.shape.gii"])
def test_write_map_round_trip_in_every_format(tmp_path, name):
    thickness = sio.read_map(DATA / "lh.thickness")
    out = sio.write_map(tmp_path / name, thickness * 1.01, like=DATA / "lh.thickness")
    back = sio.read_map(out)
    assert back.shape == thickness.shape
    np.testing.assert_allclose(back, thickness * 1.01, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_write_map_keeps_nan(tmp_path):
    values = np.arange(10242, dtype=np.float32)
    values[:100] = np.nan
    for name in ("x.mgz", "x.shape.gii", "lh.x"):
        back = sio.read_map(sio.write_map(tmp_path / name, values))
        np.testing.assert_array_equal(np.isnan(back), np.isnan(values))


def test_stacked_mgh_round_trip_and_streaming(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.normal(2.5, 0.5, size=(7, 2562)).astype(np.float32)
    for name in ("stack.mgh", "stack.mgz"):
        path = sio.write_mgh(tmp_path / name, maps)
        np.testing.assert_array_equal(sio.read_maps(path), maps)
        assert sio.mgh_shape(path) == (7, 2562)
        chunks = list(sio.iter_mgh_frames(path, chunk_frames=3))
        assert [start for start, _ in chunks] == [0, 3, 6]
        np.testing.assert_array_equal(np.concatenate([b for _, b in chunks]), maps)
        with pytest.raises(sio.InputFileError, match="holds 7 maps"):
            sio.read_map(path)


def test_mgh_frames_agree_with_nibabel_layout(tmp_path):
    # A stacked MGH written by FreeSurfer has shape (V, 1, 1, frames): frame i is data[:, 0, 0, i].
    maps = np.random.default_rng(1).normal(size=(4, 642)).astype(np.float32)
    nib.save(nib.MGHImage(maps.T[:, None, None, :], np.eye(4)), str(tmp_path / "fs_stack.mgh"))
    np.testing.assert_array_equal(sio.read_maps(tmp_path / "fs_stack.mgh"), maps)


def test_mgh_written_like_an_input_keeps_its_affine(tmp_path):
    src = DATA / "lh.curv.fwhm10.fsaverage.mgz"
    out = sio.write_map(tmp_path / "lh.curv.harmonized.fsaverage.mgz", sio.read_map(src) * 2, like=src)
    np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(src)).affine)


def test_surface_and_annotation_round_trip(tmp_path):
    white = sio.read_surface(DATA / "lh.white.gz")
    for name in ("lh.white.copy", "lh.white.surf.gii"):
        back = sio.read_surface(sio.write_surface(tmp_path / name, white))
        np.testing.assert_allclose(back.vertices, white.vertices, atol=1e-4)
        np.testing.assert_array_equal(back.faces, white.faces)
    annot = sio.read_annot(DATA / "lh.aparc.annot.gz")
    back = sio.read_annot(sio.write_annot(tmp_path / "lh.copy.annot", annot))
    np.testing.assert_array_equal(back.labels, annot.labels)
    assert back.names == annot.names


def test_gifti_hemisphere_metadata_is_written(tmp_path):
    out = sio.write_map(tmp_path / "thick.shape.gii", np.ones(642, np.float32), hemi="rh")
    assert sio.hemi_of(out) == "rh"


def test_writer_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / "lh.thickness"
    shutil.copy(DATA / "lh.thickness", src)
    before = src.read_bytes()
    with pytest.raises(OutputError, match="it is an input file"):
        sio.write_map(src, np.zeros(149244, np.float32), like=src)
    assert src.read_bytes() == before


def test_writer_refuses_wrong_vertex_count_for_like(tmp_path):
    with pytest.raises(ValueError, match=r"values have 10 vertices but .*lh\.thickness has 149244"):
        sio.write_map(tmp_path / "out.mgz", np.zeros(10), like=DATA / "lh.thickness")
    assert not any(tmp_path.iterdir())


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        sio.write_map(tmp_path / "lh.bad", np.zeros((2, 10)))  # curv holds one map
    assert not any(tmp_path.iterdir())
