"""The image-level scenario: a leakage-safe split, and metrics that rank known answers correctly."""
import numpy as np
import pytest

from surfharm.evaluate.deep_image_scenario import (
    build_deep_image_scenario,
    run_deep_image_benchmark,
    score_deep_images,
    summarize,
)
from surfharm.harmonize.base import Harmonizer


@pytest.fixture(scope="module")
def scenario():
    return build_deep_image_scenario(3, 1, 2, 2, 2, contrasts=("t1", "t2"), step=2, seed=5)


class _Lookup(Harmonizer):
    """Returns, for each session, images looked up by subject: the target scanner's scan (``source=
    "target"``, the input where the subject has none) or the truth (``source="truth"``)."""

    multi_contrast = True
    requires_sites = False
    supports_unseen_sites = True
    side_data = ("masks", "subjects")

    def __init__(self, *, cohort=None, target_site="scanner1", source="target"):
        self.cohort = cohort
        self.target_site = target_site
        self.source = source

    def fit(self, X, y=None, *, sites=None, masks=None, subjects=None):
        self.n_features_in_ = 0
        return self

    def transform(self, X, *, sites=None, masks=None, subjects=None):
        table = self.cohort.table
        out = []
        for scan, subject in zip(X, subjects):
            rows = np.flatnonzero(table["subject"] == subject)
            if self.source == "truth":
                out.append({c: self.cohort.truth[c][rows[0]] for c in scan})
                continue
            at_target = [i for i in rows if table["site"].iloc[i] == self.target_site]
            out.append({c: self.cohort.images[c][at_target[0]] if at_target else scan[c] for c in scan})
        return out


def test_split_is_leakage_safe(scenario):
    table = scenario.cohort.table
    train, test = table.iloc[scenario.train_rows], table.iloc[scenario.test_rows]
    unseen = table.iloc[scenario.unseen_rows]
    assert not set(train["subject"]) & set(test["subject"])
    assert not train["held_out"].any() and not test["held_out"].any()
    assert unseen["held_out"].all() and set(unseen["subject"]) <= set(test["subject"])
    assert train["traveling"].any() and test["traveling"].any() and (~test["traveling"]).any()
    assert len(scenario.train_rows) + len(scenario.test_rows) + len(scenario.unseen_rows) < len(table)


def test_raw_is_worse_than_the_truth_and_the_oracle_is_best_on_the_target(scenario):
    cohort = scenario.cohort
    scores = run_deep_image_benchmark(["white-stripe"], scenario, say=lambda _: None)
    scores = summarize(scores).set_index("method")
    truth = summarize(score_deep_images(_Lookup(cohort=cohort, source="truth"), scenario,
                                        name="truth")).set_index("method").loc["truth"]
    oracle = summarize(score_deep_images(_Lookup(cohort=cohort), scenario, name="oracle")).set_index("method")
    oracle = oracle.loc["oracle"]
    raw, ws = scores.loc["raw"], scores.loc["white-stripe"]
    # The truth images score perfectly against the truth and keep the age effect exactly.
    assert truth["ssim_truth"] == pytest.approx(1.0, abs=1e-6) and truth["mae_truth"] == pytest.approx(0, abs=1e-6)
    assert truth["age_slope_ratio_gm_intensity"] == pytest.approx(1.0, abs=1e-6)
    assert raw["ssim_truth"] < ws["ssim_truth"] < truth["ssim_truth"]
    assert raw["mae_truth"] > ws["mae_truth"] > truth["mae_truth"]
    # Returning the target scanner's scan is the best possible answer against that scan.
    assert oracle["ssim_target"] == pytest.approx(1.0, abs=1e-6) and oracle["mae_target"] < 1e-6
    assert oracle["ssim_target_unseen"] == pytest.approx(1.0, abs=1e-6)
    assert oracle["volume_cv"] == pytest.approx(0.0, abs=1e-12)
    for metric in ("ssim_target", "psnr_target_db"):
        assert oracle[metric] >= max(raw[metric], ws[metric], truth[metric])
    assert raw["ssim_target"] < ws["ssim_target"] < oracle["ssim_target"]
    assert raw["volume_cv"] > ws["volume_cv"]
    # The scanners are told apart from the raw images; not from the scanner-free truth.
    assert raw["scanner_auroc"] > 0.9
    assert truth["scanner_auroc"] < raw["scanner_auroc"]
