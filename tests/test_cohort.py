"""The Cohort: validation, views, constructors from every input kind, and writing back."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spherical_ops import icosphere
from surfharm import Cohort
from surfharm import io as sio
from surfharm._atomic import OutputError
from surfharm.cohort import CohortError

DATA = Path(__file__).parent / "data" / "fs_subject1"


def _table(n=6, **extra):
    t = pd.DataFrame({"subject": [f"sub-{i:02d}" for i in range(n)],
                      "site": ["A", "B", "C"] * (n // 3) + ["A"] * (n % 3),
                      "age": np.linspace(20, 70, n), "sex": ["F", "M"] * (n // 2) + ["F"] * (n % 2)})
    return t.assign(**extra)


def _maps(n=6, level=4, seed=0):
    return np.random.default_rng(seed).normal(2.5, 0.3, size=(n, 10 * 4 ** level + 2)).astype(np.float32)


def _field(xyz, scale=1.0):
    u = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    return (scale * (2.5 + 0.4 * u[:, 0] - 0.3 * u[:, 2] ** 2)).astype(np.float32)


# -- validation ------------------------------------------------------------------------------------

def test_properties():
    c = Cohort(_maps(), _table(), hemi="lh", measure="thickness")
    assert (c.n_scans, c.n_vertices, c.level) == (6, 2562, 4)
    assert c.sites.tolist() == ["A", "B", "C", "A", "B", "C"]
    assert c.subjects[0] == "sub-00" and c.feature_names is None
    assert list(c.covariates().columns) == ["age", "sex"]
    assert list(c.covariates(["age"]).columns) == ["age"]
    with pytest.raises(CohortError, match=r"covariate\(s\) \['iq'\] not in the cohort table"):
        c.covariates(["iq"])
    assert "n_scans=6" in repr(c) and "level=4" in repr(c)


def test_non_ico_vertex_count_has_no_level():
    assert Cohort(np.zeros((2, 1000), np.float32), _table(2)).level is None


@pytest.mark.parametrize("table,message", [
    (_table().drop(columns="site"), "has no 'site' column"),
    (_table().assign(site=["A", None, "C", "A", "B", "C"]), r"site is missing in row\(s\) \[1\]"),
    (_table(5), "has 5 rows but maps have 6 scans"),
    (_table().assign(age=["20", "30", "forty", "50", "60", "70"]),
     r"covariate 'age' is numeric but row\(s\) \[2\] hold \['forty'\]"),
    (_table().assign(subject=["a", "b", "c", "a", "e", "f"]), r"duplicate scan id\(s\) \['a'\]"),
])
def test_invalid_tables(table, message):
    with pytest.raises(CohortError, match=message):
        Cohort(_maps(), table)


def test_invalid_maps():
    with pytest.raises(CohortError, match="must be 2-D"):
        Cohort(np.zeros(2562), _table(1))
    maps = _maps()
    maps[3, 7] = np.inf
    with pytest.raises(CohortError, match="inf at scan 3, vertex 7"):
        Cohort(maps, _table())


def test_numeric_strings_become_numbers():
    c = Cohort(_maps(), _table().assign(age=["20", "30", "40", "50", "60", ""]).replace("", np.nan))
    assert c.table["age"].dtype.kind == "f" and np.isnan(c.table["age"].iloc[5])


# -- derived cohorts --------------------------------------------------------------------------------

def test_subset_with_mask_indices_and_slice():
    c = Cohort(_maps(), _table(), hemi="lh")
    by_mask = c.subset(c.sites == "B")
    assert by_mask.subjects.tolist() == ["sub-01", "sub-04"] and by_mask.hemi == "lh"
    np.testing.assert_array_equal(by_mask.maps, c.maps[[1, 4]])
    by_index = c.subset([5, 0])
    assert by_index.subjects.tolist() == ["sub-05", "sub-00"]
    view = c.subset(slice(1, 3))
    assert np.shares_memory(view.maps, c.maps)
    with pytest.raises(CohortError, match="out of range"):
        c.subset([6])


def test_iter_chunks_are_views_covering_every_scan():
    c = Cohort(_maps(7), _table(7))
    chunks = list(c.iter_chunks(3))
    assert [ch.n_scans for ch in chunks] == [3, 3, 1]
    assert all(np.shares_memory(ch.maps, c.maps) for ch in chunks)
    assert sum((ch.subjects.tolist() for ch in chunks), []) == c.subjects.tolist()


def test_with_maps_and_to_level():
    c = Cohort(_maps(), _table())
    h = c.with_maps(c.maps - 1)
    assert h.table.equals(c.table)
    np.testing.assert_allclose(h.maps, c.maps - 1)
    with pytest.raises(CohortError, match="new maps have 2 scans"):
        c.with_maps(c.maps[:2])
    low = c.to_level(2)
    assert low.level == 2 and np.shares_memory(low.maps, c.maps)


# -- constructors -------------------------------------------------------------------------------------

def test_from_files_cuts_fsaverage_maps_by_nesting(tmp_path):
    curv = sio.read_map(DATA / "lh.curv.fwhm10.fsaverage.mgz")
    paths = [sio.write_map(tmp_path / f"s{i}.lh.curv.fsaverage.mgz", curv + i) for i in range(3)]
    table = pd.DataFrame({"subject": ["s0", "s1", "s2"], "site": ["A", "A", "B"],
                          "path": [p.name for p in paths]})
    table.to_csv(tmp_path / "participants.csv", index=False)
    c = Cohort.from_files(None, tmp_path / "participants.csv", level=5)
    assert (c.n_scans, c.level, c.hemi) == (3, 5, "lh")
    np.testing.assert_array_equal(c.maps[2], curv[:10242] + 2)


def test_from_files_gifti_with_one_shared_sphere(tmp_path, sphere_reg):
    sphere = sphere_reg(3000, seed=1)
    sphere_path = sio.write_surface(tmp_path / "lh.sphere.reg", sphere)
    paths = [sio.write_map(tmp_path / f"s{i}_hemi-L_thickness.shape.gii", _field(sphere.vertices, 1 + 0.1 * i))
             for i in range(3)]
    c = Cohort.from_files(paths, _table(3), level=5, spheres=sphere_path)
    expected = _field(icosphere(5).vertices, 1.2)
    assert np.abs(c.maps[2] - expected).max() < 1e-3


def test_from_files_refuses_mixed_hemispheres(tmp_path):
    a = sio.write_map(tmp_path / "lh.a.mgz", np.ones(642))
    b = sio.write_map(tmp_path / "rh.b.mgz", np.ones(642))
    with pytest.raises(sio.InputFileError, match="left and right hemispheres are mixed"):
        Cohort.from_files([a, b], _table(2))


@pytest.fixture()
def subjects_dir(tmp_path, sphere_reg):
    """Three FreeSurfer subjects (two sessions of sub-00), native spheres of different sizes, cortex labels."""
    root = tmp_path / "subjects"
    rows = []
    for i, (subject, session, n) in enumerate([("sub-00", "1", 3000), ("sub-00", "2", 3100), ("sub-01", "1", 2900)]):
        surf = root / f"{subject}_{session}" / "surf"
        label = root / f"{subject}_{session}" / "label"
        surf.mkdir(parents=True)
        label.mkdir()
        sphere = sphere_reg(n, seed=i)
        sio.write_surface(surf / "lh.sphere.reg", sphere)
        sio.write_map(surf / "lh.thickness", _field(sphere.vertices, 1 + 0.1 * i))
        u = sphere.vertices / 100
        cortex = np.flatnonzero(u[:, 2] < 0.8)  # medial wall: the cap z > 0.8
        lines = [f"{v} {u[v, 0]:.3f} {u[v, 1]:.3f} {u[v, 2]:.3f} 0.0" for v in cortex]
        (label / "lh.cortex.label").write_text(f"#!ascii label\n{len(cortex)}\n" + "\n".join(lines) + "\n")
        rows.append({"participant_id": subject, "session_id": session, "site": "AB"[i % 2], "age": 30 + i})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def test_from_subjects_dir_resamples_native_maps_and_masks_the_medial_wall(subjects_dir):
    c = Cohort.from_subjects_dir(subjects_dir, subjects_dir / "participants.tsv", hemi="lh", level=5)
    assert (c.n_scans, c.level, c.hemi, c.measure) == (3, 5, "lh", "thickness")
    assert c.scan_ids == ["sub-00_1", "sub-00_2", "sub-01_1"]
    z = icosphere(5).vertices[:, 2]
    assert np.isnan(c.maps[:, z > 0.83]).all() and np.isfinite(c.maps[:, z < 0.77]).all()
    expected = _field(icosphere(5).vertices, 1.1)
    ok = z < 0.77
    assert np.abs(c.maps[1, ok] - expected[ok]).max() < 2e-3


def test_from_subjects_dir_names_the_missing_subject(subjects_dir):
    table = pd.DataFrame({"subject": ["sub-00", "sub-09"], "session": ["1", "1"], "site": ["A", "B"]})
    with pytest.raises(sio.InputFileError, match=r"1 subject folder\(s\) .*missing .*sub-09_1"):
        Cohort.from_subjects_dir(subjects_dir, table)


def test_from_subjects_dir_qcache_output(tmp_path):
    for s in ("bert", "ernie"):
        (tmp_path / s / "surf").mkdir(parents=True)
        shutil.copy(DATA / "lh.curv.fwhm10.fsaverage.mgz", tmp_path / s / "surf" / "lh.curv.fwhm10.fsaverage.mgz")
    table = pd.DataFrame({"subject": ["bert", "ernie"], "site": ["A", "B"]})
    c = Cohort.from_subjects_dir(tmp_path, table, measure="curv", fwhm=10, level=6)
    np.testing.assert_array_equal(c.maps[1], sio.read_map(DATA / "lh.curv.fwhm10.fsaverage.mgz")[:40962])


def test_from_stacked_mgh_and_fsgd_streams_into_a_memmap(tmp_path):
    maps = _maps(5, level=3)
    maps[:, :10] = 0.0  # medial wall as mris_preproc writes it
    mgh = sio.write_mgh(tmp_path / "lh.thickness.stack.mgz", maps)
    fsgd = tmp_path / "study.fsgd"
    fsgd.write_text("GroupDescriptorFile 1\nClass A\nClass B\nVariables age\n"
                    + "".join(f"Input s{i} {'AB'[i % 2]} {20 + i}\n" for i in range(5)))
    cortex = np.ones(642, bool)
    cortex[:10] = False
    c = Cohort.from_stacked_mgh(mgh, fsgd, cortex=cortex, out=tmp_path / "maps.npy", chunk_frames=2)
    assert isinstance(c.maps, np.memmap)
    assert c.sites.tolist() == ["A", "B", "A", "B", "A"] and c.table["age"].tolist() == [20, 21, 22, 23, 24]
    assert np.isnan(c.maps[:, :10]).all()
    np.testing.assert_array_equal(c.maps[:, 10:], maps[:, 10:])
    assert c.hemi == "lh"


def test_from_stacked_mgh_frame_count_mismatch(tmp_path):
    mgh = sio.write_mgh(tmp_path / "stack.mgh", _maps(3, level=2))
    fsgd = tmp_path / "study.fsgd"
    fsgd.write_text("GroupDescriptorFile 1\nClass A\nInput s1 A\nInput s2 A\n")
    with pytest.raises(sio.InputFileError, match=r"stack\.mgh has 3 frames but .*study\.fsgd lists 2 subjects"):
        Cohort.from_stacked_mgh(mgh, fsgd)


def test_from_roi_table_and_write_back(tmp_path):
    roi = tmp_path / "lh.aparc.thickness.tsv"
    roi.write_text("lh.aparc.thickness\tlh_bankssts_thickness\tlh_cuneus_thickness\teTIV\n"
                   "s1\t2.5\t2.0\t1.5e6\ns2\t2.6\t1.9\t1.4e6\ns3\t2.4\t2.1\t1.6e6\n")
    cov = tmp_path / "participants.csv"
    cov.write_text("subject,site,age\ns1,A,30\ns2,B,40\ns3,A,50\n")
    c = Cohort.from_roi_table(roi, cov)
    assert c.feature_names == ["lh_bankssts_thickness", "lh_cuneus_thickness"] and c.level is None
    np.testing.assert_allclose(c.maps[:, 0], [2.5, 2.6, 2.4])
    assert c.hemi == "lh" and "eTIV" in c.covariates().columns
    out = c.with_maps(c.maps + 0.1).write(tmp_path / "harmonized.csv")[0]
    back = pd.read_csv(out)
    np.testing.assert_allclose(back["lh_cuneus_thickness"], [2.1, 2.0, 2.2], rtol=1e-6)


# -- writing ------------------------------------------------------------------------------------------

def test_write_per_scan_files_and_read_them_back(tmp_path):
    c = Cohort(_maps(3), _table(3), hemi="lh", measure="thickness")
    c.maps[1, :5] = np.nan
    written = c.write(tmp_path / "out", format="mgz")
    assert [p.name for p in written] == ["sub-00.lh.thickness.harmonized.fsaverage4.mgz",
                                         "sub-01.lh.thickness.harmonized.fsaverage4.mgz",
                                         "sub-02.lh.thickness.harmonized.fsaverage4.mgz", "cohort.tsv"]
    again = Cohort.from_files(None, written[-1])
    np.testing.assert_array_equal(again.maps, c.maps)
    assert again.table["age"].tolist() == c.table["age"].tolist()


def test_write_freesurfer_layout_with_fsaverage_names(tmp_path):
    maps = np.ones((2, 163842), np.float32)
    c = Cohort(maps, _table(2), hemi="rh", measure="thickness")
    written = c.write(tmp_path, layout="freesurfer", format="mgh")
    assert written[0] == tmp_path / "sub-00" / "surf" / "rh.thickness.harmonized.fsaverage.mgh"


def test_write_stacked_mgh_with_fsgd_round_trip(tmp_path):
    c = Cohort(_maps(4, level=3), _table(4), hemi="lh")
    mgh, fsgd = c.write(tmp_path / "lh.stack.mgh", fsgd=tmp_path / "stack.fsgd")
    again = Cohort.from_stacked_mgh(mgh, fsgd)
    np.testing.assert_array_equal(again.maps, c.maps)
    assert again.sites.tolist() == c.sites.tolist() and again.subjects.tolist() == c.subjects.tolist()
    np.testing.assert_allclose(again.table["age"], c.table["age"])


def test_write_back_to_native_space(subjects_dir, tmp_path):
    c = Cohort.from_subjects_dir(subjects_dir, subjects_dir / "participants.tsv", level=6)
    written = c.write(tmp_path / "native", format="curv", layout="freesurfer", space="native")
    assert written[0] == tmp_path / "native" / "sub-00_1" / "surf" / "lh.thickness.harmonized"
    native_in = sio.read_map(subjects_dir / "sub-00_1" / "surf" / "lh.thickness")
    native_out = sio.read_map(written[0])
    assert native_out.shape == native_in.shape
    u = sio.read_surface(subjects_dir / "sub-00_1" / "surf" / "lh.sphere.reg").vertices / 100
    # away from the cortex border (where weights are renormalised over fewer vertices) the round
    # trip only carries the interpolation error of two linear steps
    inner = u[:, 2] < 0.7
    assert np.abs(native_out[inner] - native_in[inner]).max() < 1e-3
    assert np.isnan(native_out[u[:, 2] > 0.83]).all()


def test_write_never_overwrites_an_input(tmp_path):
    src = sio.write_map(tmp_path / "sub-00.lh.thickness.harmonized.fsaverage3.mgz", np.ones(642))
    c = Cohort.from_files([src], _table(1), hemi="lh", measure="thickness")
    with pytest.raises(OutputError, match="it is an input file"):
        c.write(tmp_path, overwrite=True)
    np.testing.assert_array_equal(sio.read_map(src), np.ones(642))


def test_write_fill_value_replaces_nan(tmp_path):
    maps = _maps(2, level=3)
    maps[:, :20] = np.nan
    c = Cohort(maps, _table(2), hemi="lh", measure="thickness")
    stacked = c.write(tmp_path / "lh.stack.mgz", fill_value=0.0)[0]
    back = sio.read_maps(stacked)
    assert (back[:, :20] == 0).all()
    np.testing.assert_array_equal(back[:, 20:], maps[:, 20:])
    assert np.isnan(c.maps[:, :20]).all()  # the cohort itself is untouched


def test_from_stacked_mgh_takes_the_site_from_participants_when_given(tmp_path):
    mgh = sio.write_mgh(tmp_path / "lh.stack.mgh", _maps(3, level=2))
    fsgd = tmp_path / "study.fsgd"
    fsgd.write_text("GroupDescriptorFile 1\nClass patient\nClass control\nInput s1 patient\nInput s2 control\n"
                    "Input s3 patient\n")
    participants = pd.DataFrame({"subject": ["s3", "s2", "s1"], "site": ["X", "Y", "Z"], "age": [30, 40, 50]})
    c = Cohort.from_stacked_mgh(mgh, fsgd, participants=participants)
    assert c.sites.tolist() == ["Z", "Y", "X"]
    assert c.table["class"].tolist() == ["patient", "control", "patient"]
    assert c.table["age"].tolist() == [50, 40, 30]


def test_streaming_a_stacked_mgh_into_a_memmap_allocates_far_less_than_the_data(tmp_path):
    import tracemalloc

    n_scans, n_vert = 300, 10242  # 11.7 MB of float32
    maps = np.random.default_rng(0).normal(2.5, 0.3, size=(n_scans, n_vert)).astype(np.float32)
    mgh = sio.write_mgh(tmp_path / "lh.stack.mgz", maps)
    fsgd = tmp_path / "study.fsgd"
    fsgd.write_text("GroupDescriptorFile 1\nClass A\n" + "".join(f"Input s{i} A\n" for i in range(n_scans)))
    del maps
    tracemalloc.start()
    try:
        c = Cohort.from_stacked_mgh(mgh, fsgd, out=tmp_path / "maps.npy", chunk_frames=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    data_bytes = n_scans * n_vert * 4
    assert peak < 0.25 * data_bytes  # a few frame chunks, never the whole stack
    assert isinstance(c.maps, np.memmap) and c.maps.shape == (n_scans, n_vert)


def test_parallel_loading_gives_the_same_cohort(subjects_dir):
    one = Cohort.from_subjects_dir(subjects_dir, subjects_dir / "participants.tsv", level=4)
    two = Cohort.from_subjects_dir(subjects_dir, subjects_dir / "participants.tsv", level=4, n_jobs=2)
    np.testing.assert_array_equal(one.maps, two.maps)
