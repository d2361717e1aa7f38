"""``surfharm combat fit|apply`` on a stacked MGH + FSGD and on an ROI table."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surfharm.cli import main
from surfharm.harmonize import ComBat
from surfharm.io import read_maps, write_fsgd, write_mgh

DK_CSV = Path(__file__).parents[1] / "data" / "openneuro_dk" / "dk_thickness_4sites.csv"


@pytest.fixture(autouse=True)
def only_combat_subcommand(monkeypatch):
    # Test this subcommand in isolation from the others registered in the dispatcher.
    import surfharm.cli

    monkeypatch.setattr(surfharm.cli, "_SUBCOMMAND_MODULES", ("combat",))


@pytest.fixture
def roi_inputs(tmp_path):
    data = pd.read_csv(DK_CSV)
    data["subject"] = data["dataset"] + "_" + data["subject"]  # ids repeat across datasets
    roi = [c for c in data.columns if c.endswith("_thickness")]
    data[["subject"] + roi].to_csv(tmp_path / "thickness.tsv", sep="\t", index=False)
    data[["subject", "dataset", "age", "sex"]].rename(columns={"dataset": "site"}).to_csv(
        tmp_path / "participants.csv", index=False)
    return tmp_path, data, roi


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["combat", "fit", "--help"])
    assert "surfharm combat fit --mgh" in capsys.readouterr().out


def test_fit_and_apply_on_an_roi_table_match_the_python_api(roi_inputs):
    folder, data, roi = roi_inputs
    model_path, out_path = folder / "combat.npz", folder / "harmonized.csv"
    code = main(["combat", "fit", "--roi-table", str(folder / "thickness.tsv"), "--participants",
                 str(folder / "participants.csv"), "--keep", "age", "sex", "--model", str(model_path),
                 "--output", str(out_path)])
    assert code == 0
    written = pd.read_csv(out_path)
    expected = ComBat().fit_transform(data[roi].to_numpy(np.float32), sites=data["dataset"],
                                      covariates=data[["age", "sex"]])
    assert np.allclose(written[roi].to_numpy(), expected, atol=1e-4)
    # apply the saved model to the same scans: same numbers
    again = folder / "applied.csv"
    assert main(["combat", "apply", "--model", str(model_path), "--roi-table", str(folder / "thickness.tsv"),
                 "--participants", str(folder / "participants.csv"), "--output", str(again)]) == 0
    assert np.allclose(pd.read_csv(again)[roi].to_numpy(), written[roi].to_numpy(), atol=1e-5)


def test_fit_on_stacked_mgh_and_fsgd(tmp_path):
    rng = np.random.default_rng(0)
    n, n_vertices = 24, 642
    table = pd.DataFrame({"subject": [f"s{i:02d}" for i in range(n)], "site": np.repeat(["A", "B", "C"], 8),
                          "age": rng.uniform(20, 70, n)})
    maps = (2.5 + rng.normal(0, 0.2, (n, n_vertices))
            + np.repeat([0.0, 0.3, -0.2], 8)[:, None]).astype(np.float32)
    write_mgh(tmp_path / "lh.thickness.mgh", maps)
    write_fsgd(tmp_path / "study.fsgd", table, class_column="site", variables=["age"])
    out = tmp_path / "lh.thickness.harmonized.mgh"
    code = main(["combat", "fit", "--mgh", str(tmp_path / "lh.thickness.mgh"), "--fsgd", str(tmp_path / "study.fsgd"),
                 "--keep", "age", "--smooth", "age", "--spline-df", "4", "--model", str(tmp_path / "m.npz"),
                 "--output", str(out)])
    assert code == 0
    harmonized = read_maps(out)
    harmonized = harmonized if harmonized.shape == maps.shape else harmonized.T
    before = pd.DataFrame(maps).groupby(table["site"]).mean().mean(axis=1)
    after = pd.DataFrame(harmonized).groupby(table["site"]).mean().mean(axis=1)
    assert after.std() < 0.2 * before.std()


def test_clear_errors(roi_inputs, capsys):
    folder, _, _ = roi_inputs
    code = main(["combat", "fit", "--roi-table", str(folder / "thickness.tsv"), "--participants",
                 str(folder / "participants.csv"), "--keep", "handedness", "--model", str(folder / "m.npz")])
    assert code == 2 and "handedness" in capsys.readouterr().err
    code = main(["combat", "fit", "--model", str(folder / "m.npz")])
    assert code == 2 and "exactly one input" in capsys.readouterr().err
    before = (folder / "thickness.tsv").read_bytes()
    code = main(["combat", "fit", "--roi-table", str(folder / "thickness.tsv"), "--participants",
                 str(folder / "participants.csv"), "--model", str(folder / "m.npz"),
                 "--output", str(folder / "." / "thickness.tsv")])
    assert code == 2 and "one of the inputs" in capsys.readouterr().err
    assert (folder / "thickness.tsv").read_bytes() == before


def test_longitudinal_fit_with_a_random_slope_matches_the_python_api(tmp_path):
    from surfharm.harmonize import LongComBat

    rng = np.random.default_rng(0)
    n_subjects, n_rois = 30, 6
    visits = rng.integers(2, 5, n_subjects)
    subjects = np.repeat([f"sub{i:02d}" for i in range(n_subjects)], visits)
    session = np.concatenate([np.arange(v) for v in visits])
    years = session + rng.uniform(-0.1, 0.1, session.size)
    site = np.where(session >= 2, "B", "A")
    codes = pd.factorize(subjects)[0]
    rois = [f"roi{k}_thickness" for k in range(n_rois)]
    maps = (2.5 + rng.normal(0, 0.2, (n_subjects, n_rois))[codes]
            + rng.normal(0, 0.05, (n_subjects, n_rois))[codes] * years[:, None]
            + rng.normal(0, 0.05, (subjects.size, n_rois)) + 0.2 * (site == "B")[:, None])
    table = pd.DataFrame({"subject": subjects, "session": [f"ses{v}" for v in session], "site": site, "years": years})
    table[["subject", "session"]].join(pd.DataFrame(maps, columns=rois)).to_csv(tmp_path / "thickness.csv", index=False)
    table.to_csv(tmp_path / "participants.csv", index=False)
    inputs = ["--roi-table", str(tmp_path / "thickness.csv"), "--participants", str(tmp_path / "participants.csv")]
    out = tmp_path / "harmonized.csv"
    code = main(["combat", "fit", *inputs, "--longitudinal", "--random-slope", "years",
                 "--model", str(tmp_path / "m.npz"), "--output", str(out)])
    assert code == 0
    expected = LongComBat(random_slope="years").fit_transform(maps.astype(np.float32), sites=site,
                                                            covariates=table[["years"]], subjects=subjects)
    assert np.allclose(pd.read_csv(out)[rois].to_numpy(), expected, atol=1e-4)
    again = tmp_path / "applied.csv"
    assert main(["combat", "apply", "--model", str(tmp_path / "m.npz"), *inputs, "--output", str(again)]) == 0
    assert np.allclose(pd.read_csv(again)[rois].to_numpy(), expected, atol=1e-4)


def test_random_slope_needs_longitudinal(roi_inputs, capsys):
    folder, _, _ = roi_inputs
    code = main(["combat", "fit", "--roi-table", str(folder / "thickness.tsv"), "--participants",
                 str(folder / "participants.csv"), "--random-slope", "age", "--model", str(folder / "m.npz")])
    assert code == 2 and "--random-slope needs --longitudinal" in capsys.readouterr().err
