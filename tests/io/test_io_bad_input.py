"""Bad input: every case gives a clear error naming the file and what was expected, and writes nothing."""
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surfharm import Cohort
from surfharm import io as sio
from surfharm.cohort import CohortError
from surfharm.resample import SphereError, resample_file

DATA = Path(__file__).parents[1] / "data" / "fs_subject1"


def _copy_truncated(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_missing_file_is_named(tmp_path):
    with pytest.raises(sio.InputFileError, match=r"nothing\.mgz: file does not exist"):
        sio.read_map(tmp_path / "nothing.mgz")


def test_truncated_curv(tmp_path):
    bad = _copy_truncated(DATA / "lh.thickness", tmp_path / "lh.thickness", 0.5)
    with pytest.raises(sio.InputFileError, match=r"lh\.thickness: truncated or corrupt morphometry file: header says "
                                                 r"149244 vertices"):
        sio.read_map(bad)


def test_wrong_magic_number(tmp_path):
    bad = tmp_path / "lh.thickness"
    bad.write_bytes(b"\x00\x12\x34" + (DATA / "lh.thickness").read_bytes()[3:])
    with pytest.raises(sio.InputFileError, match=r"lh\.thickness: unknown file format"):
        sio.read_map(bad)
    with pytest.raises(sio.InputFileError, match="magic number 001234"):
        sio.read_curv(bad)


def test_curv_passed_as_surface(tmp_path):
    with pytest.raises(sio.InputFileError, match=r"lh\.thickness: is a curv file, not a surface"):
        sio.read_surface(DATA / "lh.thickness")


def test_truncated_surface(tmp_path):
    plain = gzip.decompress((DATA / "lh.white.gz").read_bytes())
    bad = tmp_path / "lh.white"
    bad.write_bytes(plain[: len(plain) // 3])
    with pytest.raises(sio.InputFileError, match=r"lh\.white: truncated or corrupt FreeSurfer surface"):
        sio.read_surface(bad)


def test_corrupt_gzip(tmp_path):
    bad = _copy_truncated(DATA / "lh.white.gz", tmp_path / "lh.white.gz", 0.4)
    with pytest.raises(sio.InputFileError, match=r"lh\.white\.gz: corrupt or truncated gzip data"):
        sio.read_surface(bad)


@pytest.mark.parametrize("keep", [0.05, 0.6])
def test_truncated_mgz(tmp_path, keep):
    bad = _copy_truncated(DATA / "lh.curv.fwhm10.fsaverage.mgz", tmp_path / "lh.curv.mgz", keep)
    with pytest.raises(sio.InputFileError, match=r"lh\.curv\.mgz: (corrupt or truncated gzip|truncated)"):
        sio.read_map(bad)


def test_truncated_stacked_mgh_while_streaming(tmp_path):
    path = sio.write_mgh(tmp_path / "stack.mgh", np.ones((5, 642), np.float32))
    _copy_truncated(path, tmp_path / "short.mgh", 0.7)
    with pytest.raises(sio.InputFileError, match=r"short\.mgh: truncated MGH data: header says 5 frames"):
        list(sio.iter_mgh_frames(tmp_path / "short.mgh"))


def test_mgh_with_wrong_version(tmp_path):
    raw = bytearray(gzip.decompress((DATA / "lh.curv.fwhm10.fsaverage.mgz").read_bytes()))
    raw[0:4] = (7).to_bytes(4, "big")
    (tmp_path / "bad.mgh").write_bytes(bytes(raw))
    with pytest.raises(sio.InputFileError, match=r"bad\.mgh: not an MGH/MGZ file: version field 7"):
        sio.read_map(tmp_path / "bad.mgh")


def test_garbage_gifti(tmp_path):
    (tmp_path / "x.shape.gii").write_text("<?xml version='1.0'?><GIFTI><DataArray>")
    with pytest.raises(sio.InputFileError, match=r"x\.shape\.gii: truncated or corrupt GIfTI"):
        sio.read_map(tmp_path / "x.shape.gii")
    (tmp_path / "y.func.gii").write_bytes(b"\x00\x01binary")
    with pytest.raises(sio.InputFileError, match=r"y\.func\.gii: not a GIfTI file"):
        sio.read_map(tmp_path / "y.func.gii")


def test_map_length_matching_no_sphere(tmp_path):
    sphere = sio.write_surface(tmp_path / "lh.sphere.reg", _sphere(2562))
    out = tmp_path / "out.mgz"
    with pytest.raises(sio.InputFileError, match=r"lh\.thickness has 149244 values but sphere .*lh\.sphere\.reg "
                                                 r"has 2562 vertices"):
        resample_file(DATA / "lh.thickness", out, sphere=sphere, level=5)
    assert not out.exists()


def test_map_length_matching_no_ico_level(tmp_path):
    with pytest.raises(ValueError, match=r"lh\.thickness .*has 149244 vertices, which matches no icosahedral level"):
        resample_file(DATA / "lh.thickness", tmp_path / "out.mgz", level=5)
    assert not any(tmp_path.iterdir())


def test_lh_and_rh_mixed(tmp_path):
    sphere = sio.write_surface(tmp_path / "rh.sphere.reg", _sphere(2562))
    with pytest.raises(sio.InputFileError, match=r"left and right hemispheres are mixed: .*lh\.thickness is lh.*"
                                                 r"rh\.sphere\.reg is rh"):
        resample_file(DATA / "lh.thickness", tmp_path / "lh.out.mgz", sphere=sphere, level=5)
    assert [p.name for p in tmp_path.iterdir()] == ["rh.sphere.reg"]


def test_nan_in_sphere(tmp_path):
    s = _sphere(642)
    v = s.vertices.copy()
    v[3] = np.inf
    path = sio.write_surface(tmp_path / "lh.sphere.reg", sio.Surface(v, s.faces))
    with pytest.raises(sio.InputFileError, match=r"lh\.sphere\.reg: 1 vertices have NaN/inf coordinates"):
        resample_file(sio.write_map(tmp_path / "lh.x.mgz", np.ones(642)), tmp_path / "lh.y.mgz", sphere=path, level=3)
    assert not (tmp_path / "lh.y.mgz").exists()


def test_sphere_that_is_not_a_sphere(tmp_path):
    out = tmp_path / "lh.thickness.fsaverage5.mgz"
    with pytest.raises(SphereError, match=r"lh\.white\.gz is not a sphere"):
        resample_file(DATA / "lh.thickness", out, sphere=DATA / "lh.white.gz", level=5)
    assert not out.exists()


def test_missing_subject_in_covariates(tmp_path):
    roi = tmp_path / "lh.aparc.thickness.tsv"
    roi.write_text("lh.aparc.thickness\tlh_bankssts_thickness\nsub-01\t2.5\nsub-02\t2.6\n")
    cov = tmp_path / "cov.csv"
    cov.write_text("participant_id,site,age\nsub-01,A,30\n")
    with pytest.raises(sio.InputTableError, match=r"cov\.csv: no row for 1 id\(s\) of .*\[\['sub-02'\]\]"):
        Cohort.from_roi_table(roi, cov)


def test_duplicate_ids(tmp_path):
    table = pd.DataFrame({"subject": ["s1", "s2", "s1"], "site": ["A", "B", "A"]})
    with pytest.raises(CohortError, match=r"duplicate scan id\(s\) \['s1'\]"):
        Cohort(np.zeros((3, 642), np.float32), table)
    # same subject, two sessions: valid
    Cohort(np.zeros((3, 642), np.float32), table.assign(session=["1", "1", "2"]))


def test_fsgd_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.fsgd"
    bad.write_text("GroupDescriptorFile 1\nClass A\nVariables age\nInput s1 A 30\nInput s2 B 31\n")
    with pytest.raises(sio.InputFileError, match=r"bad\.fsgd:5: subject s2 has class 'B', not declared"):
        sio.read_fsgd(bad)
    bad.write_text("GroupDescriptorFile 1\nClass A\nVariables age sex\nInput s1 A 30\n")
    with pytest.raises(sio.InputFileError,
                       match=r"bad\.fsgd:4: 'Input' line has 3 fields, expected subject, class and 2"):
        sio.read_fsgd(bad)
    bad.write_text("Class A\nInput s1 A\n")
    with pytest.raises(sio.InputFileError, match="not an FSGD file"):
        sio.read_fsgd(bad)


def _sphere(n_vertices: int) -> sio.Surface:
    from spherical_ops import icosphere, level_of

    ico = icosphere(level_of(n_vertices))
    return sio.Surface(100 * ico.vertices, ico.faces.copy())
