"""Paired spherical U-Nets (traveling subjects): pairs, refusals, training, save/load, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest

import surfharm.harmonize as H
from surfharm.harmonize.paired import PairedUNet, find_pairs


def tiny(**kwargs) -> PairedUNet:
    return PairedUNet(**{"depth": 2, "base_channels": 4, "max_steps": 3, "batch_size": 2, **kwargs})


@pytest.fixture(scope="module")
def traveling():
    """Eight subjects, each scanned on sites 'a' (reference), 'b' and 'c' at level 2."""
    rng = np.random.default_rng(1)
    n_subj = 8
    truth = 2.5 + rng.normal(0, 0.3, (n_subj, 162))
    sites = np.tile(np.array(["a", "b", "c"], dtype=object), n_subj)
    subjects = np.repeat([f"s{i}" for i in range(n_subj)], 3)
    X = truth[np.repeat(np.arange(n_subj), 3)]
    X = X * np.select([sites == "b", sites == "c"], [1.1, 0.9], 1.0)[:, None] \
        + np.select([sites == "b", sites == "c"], [0.2, -0.1], 0.0)[:, None]
    return X + rng.normal(0, 0.02, X.shape), sites, subjects


def test_pairs_come_from_subjects():
    index = np.array([0, 1, 2, 0, 1, 2])
    subjects = np.array(["x", "x", "x", "y", "y", "z"], dtype=object)
    pairs, unpaired = find_pairs(index, subjects, reference=0)
    assert sorted(map(tuple, pairs.tolist())) == [(1, 0), (2, 0), (4, 3)]
    assert unpaired.tolist() == [5]


def test_fit_transform_maps_to_the_reference(traveling):
    X, sites, subjects = traveling
    model = tiny().fit(X, sites=sites, subjects=subjects)
    assert H.get("paired-unet") is PairedUNet and model.n_pairs_ == 16 and model.reference_ == 0
    assert all(np.isfinite(v) for record in model.history_ for v in record.values())
    out = model.transform(X, sites=sites)
    assert out.shape == X.shape and out.dtype == X.dtype
    np.testing.assert_array_equal(out[sites == "a"], X[sites == "a"])
    # The untrained residual start is per-vertex mean/std matching: already close to the partner scans.
    err_raw = np.abs(X[sites == "b"] - X[sites == "a"]).mean()
    err_out = np.abs(out[sites == "b"] - X[sites == "a"]).mean()
    assert err_out < err_raw


def test_training_lowers_the_pair_loss(traveling):
    X, sites, subjects = traveling
    model = tiny(max_steps=24, epochs=1, lr=3e-3).fit(X, sites=sites, subjects=subjects)
    losses = [r["loss"] for r in model.history_]
    assert losses[-1] < losses[0]


def test_sites_without_pairs_are_refused_by_name(traveling):
    X, sites, subjects = traveling
    lonely = subjects.copy()
    lonely[sites == "c"] = [f"other{i}" for i in range((sites == "c").sum())]
    with pytest.raises(ValueError, match=r"\['c'\] have no pairs"):
        tiny().fit(X, sites=sites, subjects=lonely)
    with pytest.raises(ValueError, match="subjects="):
        tiny().fit(X, sites=sites)


def test_misaligned_scans_are_refused():
    maps = [np.full(162, 2.5), np.full(642, 2.5), np.full(162, 2.4)]
    with pytest.raises(ValueError, match=r"162 vertices \(level 2\).*642 vertices \(level 3\)"):
        tiny().fit(maps, sites=np.array(["a", "b", "a"], dtype=object), subjects=np.array([1, 1, 2]))


def test_unpaired_scans_and_several_channels(traveling, tmp_path):
    X, sites, subjects = traveling
    X3 = np.stack([X, 0.5 * X], axis=1).astype(np.float32)
    extra_subjects = subjects.copy()
    extra_subjects[[1, 4]] = ["u1", "u2"]                     # two 'b' scans without a partner
    model = tiny(unpaired_weight=0.5).fit(X3, sites=sites, subjects=extra_subjects)
    assert model.history_[-1]["unpaired"] > 0
    out = model.transform(X3, sites=sites)
    assert out.shape == X3.shape and np.isfinite(out).all()
    loaded = H.load(model.save(tmp_path / "paired.safetensors"))
    np.testing.assert_array_equal(loaded.transform(X3, sites=sites), out)


def test_unknown_site_refused(traveling):
    X, sites, subjects = traveling
    model = tiny().fit(X, sites=sites, subjects=subjects)
    other = sites.copy()
    other[0] = "d"
    with pytest.raises(ValueError, match="'d'"):
        model.transform(X, sites=other)


def test_interrupted_fit_resumes_to_the_same_model(traveling, tmp_path, monkeypatch):
    X, sites, subjects = traveling
    straight = tiny(max_steps=4).fit(X, sites=sites, subjects=subjects).transform(X, sites=sites)

    from surfharm.training.paired import PairedTrainer
    real_step = PairedTrainer.train_step

    def interrupt_at_2(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(PairedTrainer, "train_step", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt):
        tiny(max_steps=4, checkpoint_dir=tmp_path).fit(X, sites=sites, subjects=subjects)
    monkeypatch.setattr(PairedTrainer, "train_step", real_step)
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["step"] == 2 and saved["format"] == "surfharm-paired-unet-checkpoint"
    resumed = tiny(max_steps=4, checkpoint_dir=tmp_path, resume=True).fit(X, sites=sites, subjects=subjects)
    np.testing.assert_array_equal(resumed.transform(X, sites=sites), straight)
