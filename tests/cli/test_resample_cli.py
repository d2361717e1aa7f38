"""``surfharm resample``: native sphere -> icosahedral level and back, from the command line."""
import argparse
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from spherical_ops import icosphere
from surfharm import io as sio
from surfharm.cli import resample as resample_cli

DATA = Path(__file__).parents[1] / "data" / "fs_subject1"


def _run(argv) -> int:
    parser = argparse.ArgumentParser(prog="surfharm")
    resample_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["resample", *map(str, argv)])
    return args.func(args)


@pytest.fixture()
def subject(tmp_path):
    n = 4000
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    v = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], axis=1)
    sphere = sio.write_surface(tmp_path / "lh.sphere.reg", sio.Surface(100 * v, ConvexHull(v).simplices))
    thickness = sio.write_map(tmp_path / "lh.thickness", (2.5 + 0.3 * v[:, 0]).astype(np.float32))
    return tmp_path, sphere, thickness, v


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        _run(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "surfharm resample lh.thickness" in out


def test_native_to_fsaverage5_and_back(subject, capsys):
    folder, sphere, thickness, v = subject
    out = folder / "lh.thickness.fsaverage5.mgz"
    assert _run([thickness, out, "--sphere", sphere, "--level", "5"]) == 0
    assert "wrote" in capsys.readouterr().out
    ico_values = sio.read_map(out)
    assert ico_values.shape == (10242,)
    assert np.abs(ico_values - (2.5 + 0.3 * icosphere(5).vertices[:, 0])).max() < 1e-3
    back = folder / "lh.thickness.back"
    assert _run([out, back, "--sphere", sphere, "--to-native"]) == 0
    assert np.abs(sio.read_map(back) - sio.read_map(thickness)).max() < 1e-3


def test_cortex_label_sets_the_medial_wall_to_nan(subject):
    folder, sphere, thickness, v = subject
    cortex = np.flatnonzero(v[:, 2] < 0.8)
    (folder / "lh.cortex.label").write_text(
        f"#!ascii label\n{cortex.size}\n" + "".join(f"{i} 0 0 0 0\n" for i in cortex))
    out = folder / "lh.thickness.fsaverage5.shape.gii"
    _run([thickness, out, "--sphere", sphere, "--level", "5", "--cortex", folder / "lh.cortex.label"])
    values, z = sio.read_map(out), icosphere(5).vertices[:, 2]
    assert np.isnan(values[z > 0.83]).all() and np.isfinite(values[z < 0.77]).all()


def test_annotation_is_resampled_as_labels(subject):
    folder, sphere, _, v = subject
    labels = (v[:, 0] > 0).astype(np.int64) + 1
    annot = sio.Annotation(labels=labels, names=["unknown", "west", "east"],
                           ctab=np.array([[0, 0, 0, 0, 0], [255, 0, 0, 0, 255], [0, 0, 255, 0, 16711680]]))
    src = sio.write_annot(folder / "lh.halves.annot", annot)
    out = folder / "lh.halves.fsaverage5.annot"
    _run([src, out, "--sphere", sphere, "--level", "5", "--label-mode", "majority"])
    result = sio.read_annot(out)
    assert result.names == annot.names
    x = icosphere(5).vertices[:, 0]
    np.testing.assert_array_equal(result.labels[np.abs(x) > 0.05], (x[np.abs(x) > 0.05] > 0) + 1)


def test_fsaverage_map_cut_to_fsaverage5_without_sphere(tmp_path):
    out = tmp_path / "lh.curv.fsaverage5.mgz"
    _run([DATA / "lh.curv.fwhm10.fsaverage.mgz", out, "--level", "5"])
    np.testing.assert_array_equal(sio.read_map(out), sio.read_map(DATA / "lh.curv.fwhm10.fsaverage.mgz")[:10242])


def test_registered_in_the_surfharm_command():
    from surfharm import cli

    assert "resample" in cli._SUBCOMMAND_MODULES


def test_bad_input_through_the_dispatcher_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from surfharm import cli

    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("resample",))  # this command alone
    out = tmp_path / "lh.thickness.fsaverage5.mgz"
    code = cli.main(["resample", str(DATA / "lh.thickness"), str(out), "--sphere", str(DATA / "lh.white.gz"),
                     "--level", "5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "surfharm resample: error:" in err and "lh.white.gz is not a sphere" in err
    assert not out.exists()


def test_fill_value_replaces_nan_in_the_output(subject):
    folder, sphere, thickness, v = subject
    cortex = np.flatnonzero(v[:, 2] < 0.8)
    (folder / "lh.cortex.label").write_text(
        f"#!ascii label\n{cortex.size}\n" + "".join(f"{i} 0 0 0 0\n" for i in cortex))
    out = folder / "lh.thickness.fsaverage4.mgz"
    _run([thickness, out, "--sphere", sphere, "--level", "4", "--cortex", folder / "lh.cortex.label",
          "--fill-value", "0"])
    values, z = sio.read_map(out), icosphere(4).vertices[:, 2]
    assert np.isfinite(values).all() and (values[z > 0.85] == 0).all() and (values[z < 0.75] > 2).all()
