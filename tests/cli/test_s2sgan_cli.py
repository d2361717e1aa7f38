"""``surfharm s2sgan train|apply`` on a stacked MGH + FSGD."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from surfharm.cli import main
from surfharm.harmonize import S2SGAN
from surfharm.io import read_maps, write_fsgd, write_mgh


@pytest.fixture(autouse=True)
def only_s2sgan_subcommand(monkeypatch):
    import surfharm.cli

    monkeypatch.setattr(surfharm.cli, "_SUBCOMMAND_MODULES", ("s2sgan",))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(1)
    n, n_vertices = 15, 642
    table = pd.DataFrame({"subject": [f"s{i:02d}" for i in range(n)], "site": np.repeat(["A", "B", "C"], 5),
                          "age": rng.uniform(20, 70, n)})
    maps = (2.5 + rng.normal(0, 0.2, (n, n_vertices)) + np.repeat([0.0, 0.3, -0.2], 5)[:, None]).astype(np.float32)
    write_mgh(tmp_path / "lh.thickness.mgh", maps)
    write_fsgd(tmp_path / "study.fsgd", table, class_column="site", variables=["age"])
    return tmp_path, maps, table


def _read(path, shape):
    values = read_maps(path)
    return values if values.shape == shape else values.T


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["s2sgan", "train", "--help"])
    assert "surfharm s2sgan train --mgh" in capsys.readouterr().out


@pytest.mark.slow
def test_train_then_apply_matches_the_python_api(study):
    tmp, maps, table = study
    common = ["--mgh", str(tmp / "lh.thickness.mgh"), "--fsgd", str(tmp / "study.fsgd")]
    model_path = tmp / "m.safetensors"
    code = main(["s2sgan", "train", *common, "--source", "B", "--target", "A", "--max-steps", "3",
                 "--depth", "2", "--base-channels", "4", "--validation-fraction", "0", "--quiet",
                 "--model", str(model_path), "--output", str(tmp / "trained.mgh")])
    assert code == 0 and model_path.exists() and model_path.with_suffix(".json").exists()
    model = S2SGAN.load(model_path)
    assert model.sites_ == ["B", "A"] and model.output_mean_ is None
    ab = table["site"].isin(["A", "B"]).to_numpy()
    trained = _read(tmp / "trained.mgh", (ab.sum(), maps.shape[1]))
    np.testing.assert_array_equal(trained, model.transform(maps[ab], sites=table["site"][ab].to_numpy()))

    # apply on A and B scans only (site C is not in the model)
    pair = table[ab].reset_index(drop=True)
    write_mgh(tmp / "pair.mgh", maps[ab])
    write_fsgd(tmp / "pair.fsgd", pair, class_column="site", variables=["age"])
    code = main(["s2sgan", "apply", "--mgh", str(tmp / "pair.mgh"), "--fsgd", str(tmp / "pair.fsgd"),
                 "--model", str(model_path), "--output", str(tmp / "applied.mgh")])
    assert code == 0
    np.testing.assert_array_equal(_read(tmp / "applied.mgh", trained.shape), trained)


def test_clear_errors(study, capsys):
    tmp, _, _ = study
    common = ["--mgh", str(tmp / "lh.thickness.mgh"), "--fsgd", str(tmp / "study.fsgd")]
    code = main(["s2sgan", "train", *common, "--source", "B", "--target", "Z", "--model", str(tmp / "m.safetensors")])
    assert code == 2
    assert "--target 'Z' is not a site" in capsys.readouterr().err
    code = main(["s2sgan", "apply", *common, "--model", str(tmp / "missing.safetensors"), "-o", str(tmp / "o.mgh")])
    assert code == 2
    assert "missing.safetensors does not exist" in capsys.readouterr().err
    code = main(["s2sgan", "apply", *common, "--model", str(tmp / "m.safetensors"),
                 "-o", str(tmp / "lh.thickness.mgh")])
    assert code == 2
    assert "is one of the inputs" in capsys.readouterr().err


@pytest.mark.slow
def test_train_with_calibration_and_kept_covariates(study):
    tmp, _, _ = study
    path = tmp / "calibrated.safetensors"
    code = main(["s2sgan", "train", "--mgh", str(tmp / "lh.thickness.mgh"), "--fsgd", str(tmp / "study.fsgd"),
                 "--source", "B", "--target", "A", "--max-steps", "1", "--depth", "2", "--base-channels", "4",
                 "--calibrate", "--keep-covariates", "age", "--quiet", "--model", str(path)])
    assert code == 0
    model = S2SGAN.load(path)
    assert model.output_mean_ is not None and model.calibrate is True
    assert model.keep_covariates == ("age",) and np.abs(model.keep_beta_).max() > 0
