"""One model-file format and one loader: files of the previous release load and give the same output;
damaged files and impossible values are refused naming the file and the parameter."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import surfharm.harmonize as H
from surfharm.errors import ModelFileError, SurfharmError

FIXTURES = Path(__file__).parents[1] / "data" / "models_v0_1_0"
SIDE = json.loads((FIXTURES / "side.json").read_text())
SITES = np.array(SIDE["sites"])
COVARIATES = pd.read_csv(FIXTURES / "covariates.csv")

#: Model files written by surfharm 0.1.0: (file, class, input, side data).
OLD_FILES = {
    "combat.npz": ("ComBat", "X", {"covariates": COVARIATES}),
    "combat_ref_smooth.npz": ("ComBat", "X", {"covariates": COVARIATES}),
    "combat_long.npz": ("LongComBat", "X_complete",
                        {"covariates": COVARIATES.assign(time=SIDE["time"]), "subjects": np.array(SIDE["subjects"])}),
    "combat_long_slope.npz": ("LongComBat", "X_complete",
                              {"covariates": COVARIATES.assign(time=SIDE["time"]),
                               "subjects": np.array(SIDE["subjects"])}),
    "mean_std.npz": ("MeanStd", "X", {}),
    "mean_shift.npz": ("MeanShift", "X", {}),
    "global_scaling.npz": ("GlobalScaling", "X", {}),
    "raw.npz": ("Raw", "X", {}),
    "zscore.npz": ("ZScore", "V", {}),
    "white_stripe.npz": ("WhiteStripe", "V", {}),
    "nyul.npz": ("Nyul", "V", {}),
    "mica.npz": ("MICA", "V", {}),
    "global_scaling_vol.npz": ("GlobalScaling", "V", {}),
    "voxel_combat.npz": ("VoxelComBat", "V", {}),
    "s2sgan.safetensors": ("S2SGAN", "S", {}),
}


@pytest.mark.parametrize("name", sorted(OLD_FILES))
def test_model_files_of_the_previous_release_load_and_give_the_same_output(name):
    cls_name, data, side = OLD_FILES[name]
    model = H.load(FIXTURES / name)
    assert type(model).__name__ == cls_name
    sites = np.array(["a"] * 4 + ["b"] * 4) if name.startswith("s2sgan") else SITES
    out = np.asarray(model.transform(np.load(FIXTURES / f"{data}.npy"), sites=sites, **side))
    expected = np.load(FIXTURES / name.replace(".npz", ".out.npy").replace(".safetensors", ".out.npy"))
    np.testing.assert_array_equal(out, expected)


def test_a_class_loader_refuses_another_method_and_points_to_load():
    with pytest.raises(ModelFileError, match="MeanStd.*surfharm.harmonize.load"):
        H.ComBat.load(FIXTURES / "mean_std.npz")
    assert isinstance(H.LongComBat.load(FIXTURES / "combat_long.npz"), H.LongComBat)
    assert isinstance(H.ComBat.load(FIXTURES / "combat_long.npz"), H.LongComBat)  # a LongComBat is a ComBat


def _rewrite_npz(source: Path, target: Path, *, arrays=None, metadata=None, drop=()):
    """Copy a model file, replacing arrays or metadata (what a damaged or tampered file looks like)."""
    with np.load(source) as npz:
        content = {k: npz[k] for k in npz.files if k != "metadata.json" and k not in drop}
    with zipfile.ZipFile(source) as zf:
        meta = json.loads(zf.read("metadata.json"))
    content.update(arrays or {})
    meta.update(metadata or {})
    with open(target, "wb") as fh:
        np.savez(fh, **content)
    with zipfile.ZipFile(target, "a") as zf:
        zf.writestr("metadata.json", json.dumps(meta))
    return target


def _array(name, key):
    with np.load(FIXTURES / name) as npz:
        return npz[key].copy()


@pytest.mark.parametrize("key, value, message", [
    ("gamma_star_", np.nan, r"'gamma_star_' holds 1 non-finite"),
    ("delta_star_", 0.0, r"'delta_star_' holds 1 value\(s\) <= 0"),
    ("var_pooled_", np.inf, r"'var_pooled_' holds 1 non-finite"),
])
def test_impossible_combat_parameters_are_refused_at_load(tmp_path, key, value, message):
    bad = _array("combat.npz", key)
    bad.flat[7] = value
    path = _rewrite_npz(FIXTURES / "combat.npz", tmp_path / "bad.npz", arrays={key: bad})
    with pytest.raises(ModelFileError, match=rf"bad\.npz: parameter {message}"):
        H.load(path)


def test_a_nan_network_weight_is_refused_at_load(tmp_path):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(FIXTURES / "s2sgan.safetensors"), framework="np") as handle:
        header = handle.metadata()
    tensors = load_file(str(FIXTURES / "s2sgan.safetensors"))
    key = next(k for k in tensors if k.startswith("generator_yx.") and tensors[k].dtype.kind == "f")
    tensors[key] = tensors[key].copy()
    tensors[key].flat[0] = np.nan
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=header)
    with pytest.raises(ModelFileError, match=rf"bad\.safetensors: parameter '{key}' holds 1 non-finite"):
        H.load(tmp_path / "bad.safetensors")


def test_damaged_model_files_are_refused_naming_file_and_what_is_wrong(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.npz is empty \(0 bytes\)"):
        H.load(empty)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelFileError, match=r"garbage\.npz is not a surfharm model file"):
        H.load(garbage)
    missing = _rewrite_npz(FIXTURES / "combat.npz", tmp_path / "missing.npz", drop=("gamma_star_",))
    with pytest.raises(ModelFileError, match=r"missing\.npz lacks 'gamma_star_'"):
        H.load(missing)
    wrong_shape = _rewrite_npz(FIXTURES / "combat.npz", tmp_path / "shape.npz",
                               arrays={"delta_star_": np.ones((2, 3))})
    with pytest.raises(ModelFileError, match=r"shape\.npz: parameter 'delta_star_' has shape \(2, 3\)"):
        H.load(wrong_shape)
    no_method = _rewrite_npz(FIXTURES / "combat.npz", tmp_path / "nomethod.npz", metadata={"method": ""})
    with pytest.raises(ModelFileError, match=r"nomethod\.npz: the model metadata names no method"):
        H.load(no_method)
    unknown = _rewrite_npz(FIXTURES / "combat.npz", tmp_path / "unknown.npz", metadata={"method": "magic"})
    with pytest.raises(ModelFileError, match=r"unknown\.npz holds a model of method 'magic'"):
        H.load(unknown)
    bad_param = _rewrite_npz(FIXTURES / "combat.npz", tmp_path / "param.npz",
                             metadata={"params": {"eb": True, "colour": "red"}})
    with pytest.raises(ModelFileError, match=r"param\.npz: parameters \['colour'\]"):
        H.load(bad_param)
    with pytest.raises(ModelFileError, match=r"must end in \.npz or \.safetensors"):
        H.load(FIXTURES / "side.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        H.load(tmp_path / "nowhere.npz")


def test_model_file_errors_belong_to_the_package_error_class():
    assert issubclass(ModelFileError, SurfharmError) and issubclass(ModelFileError, ValueError)
    assert issubclass(H.HarmonizerInputError, SurfharmError) and issubclass(H.NotFittedError, SurfharmError)


def test_saving_needs_the_methods_own_suffix(tmp_path):
    model = H.load(FIXTURES / "combat.npz")
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        model.save(tmp_path / "model.safetensors")
