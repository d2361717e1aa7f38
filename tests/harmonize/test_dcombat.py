"""Distributed ComBat: equal to pooled ComBat, from summaries that hold no per-scan value."""
import numpy as np
import pandas as pd
import pytest

from surfharm.cli import main
from surfharm.harmonize import ComBat, load
from surfharm.harmonize import distributed as dc

SITES = ("a", "b", "c")
SIZES = (23, 31, 27)          # no site's scan count equals a feature, column or knot count


def _cohort(seed=1, n_features=40):
    rng = np.random.default_rng(seed)
    sites = np.repeat(SITES, SIZES)
    n = sites.size
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    X = 2.5 - 0.01 * age[:, None] + 0.1 * (sex == "M")[:, None] + rng.normal(0, 0.2, (n, n_features))
    X[sites == "b"] = X[sites == "b"] * 1.3 + 0.2
    X[sites == "c"] -= 0.1
    X[:, 5] = 1.25                                   # a constant feature: left unchanged by both
    return X, sites, pd.DataFrame({"age": age, "sex": sex})


def _datasets(X, sites, cov):
    return {s: (X[sites == s], cov[sites == s].reset_index(drop=True)) for s in SITES}


@pytest.mark.parametrize("options", [dict(), dict(reference_site="b"), dict(smooth_terms=("age",)),
                                     dict(smooth_terms=("age",), reference_site="c", parametric=False),
                                     dict(mean_only=True), dict(eb=False)], ids=str)
def test_equals_pooled_combat(options):
    X, sites, cov = _cohort()
    pooled = ComBat(**options).fit(X, sites=sites, covariates=cov)
    knots = {"age": pooled.encoder_.knots["age"]} if options.get("smooth_terms") else None
    model = dc.fit(_datasets(X, sites, cov), knots=knots, **options)
    for s in SITES:
        rows = sites == s
        got = model.transform(X[rows], sites=sites[rows], covariates=cov[rows])
        assert np.abs(got - pooled.transform(X[rows], sites=sites[rows], covariates=cov[rows])).max() < 1e-10
    assert np.abs(model.gamma_star_ - pooled.gamma_star_).max() < 1e-10
    np.testing.assert_array_equal(model.unchanged_, pooled.unchanged_)


def test_default_knots_come_from_the_sites_quantiles():
    X, sites, cov = _cohort()
    plan = dc.make_plan([dc.covariate_summary(c, site=s, smooth_terms=("age",)) for s, (_, c) in
                         _datasets(X, sites, cov).items()])
    knots = np.asarray(plan.meta["covariates"]["knots"]["age"])
    pooled = ComBat(smooth_terms=("age",)).fit(X, sites=sites, covariates=cov).encoder_.knots["age"]
    assert knots[0] == cov["age"].min() and knots[-1] == cov["age"].max()
    assert np.abs(knots - pooled).max() < 5.0       # years: inner knots near the pooled quantiles


def test_summaries_hold_sums_only(tmp_path):
    X, sites, cov = _cohort()
    data = _datasets(X, sites, cov)
    s0 = [dc.covariate_summary(c, site=s, smooth_terms=("age",)) for s, (_, c) in data.items()]
    plan = dc.make_plan(s0)
    s1 = [dc.design_summary(plan, Xs, c, site=s) for s, (Xs, c) in data.items()]
    combined = dc.combine_design(plan, s1)
    s2 = [dc.residual_summary(combined, Xs, c, site=s) for s, (Xs, c) in data.items()]
    encoder = dc.plan_encoder(plan)
    for summary in [*s0, *s1, *s2]:
        path = summary.save(tmp_path / f"{summary.stage}-{summary.site}.npz")
        again = dc.load_summary(path, summary.stage)
        n_scans = again.meta["n_scans"]
        for name, array in again.arrays.items():
            assert n_scans not in array.shape, (summary.stage, name, array.shape)
            np.testing.assert_array_equal(array, summary.arrays[name])
    for (Xs, c), d1, d2 in zip(data.values(), s1, s2):
        C = encoder.transform(c, len(c))
        np.testing.assert_allclose(d1.arrays["y_sum"], Xs.sum(axis=0))
        np.testing.assert_allclose(d1.arrays["cty"], C.T @ Xs)
        np.testing.assert_allclose(d1.arrays["c_sum"], C.sum(axis=0))
        r = Xs - combined.arrays["grand_mean"] - C @ combined.arrays["covariate_coef"]
        np.testing.assert_allclose(d2.arrays["r_sum"], r.sum(axis=0))
        np.testing.assert_allclose(d2.arrays["r2_sum"], (r * r).sum(axis=0))


def test_refusals():
    X, sites, cov = _cohort()
    data = _datasets(X, sites, cov)
    plan = dc.make_plan([dc.covariate_summary(c, site=s) for s, (_, c) in data.items()])
    Xa = data["a"][0].copy()
    Xa[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dc.design_summary(plan, Xa, data["a"][1], site="a")
    s1 = [dc.design_summary(plan, Xs, c, site=s) for s, (Xs, c) in data.items()]
    with pytest.raises(ValueError, match=r"missing for \['c'\]"):
        dc.combine_design(plan, s1[:2])
    with pytest.raises(ValueError, match="not in the plan"):
        dc.design_summary(plan, Xa, data["a"][1], site="z")


def test_command_line_rounds(tmp_path, monkeypatch, capsys):
    import surfharm.cli

    monkeypatch.setattr(surfharm.cli, "_SUBCOMMAND_MODULES", ("dcombat",))
    X, sites, cov = _cohort(n_features=12)
    X[:, 5] = 2.0 + 0.01 * np.arange(len(X))                     # no constant feature in a table of maps
    rois = [f"roi{k}_thickness" for k in range(X.shape[1])]
    table = pd.DataFrame(X, columns=rois).assign(subject=[f"s{i}" for i in range(len(X))], site=sites,
                                                 age=cov["age"], sex=cov["sex"])
    for s in SITES:
        table[table.site == s].to_csv(tmp_path / f"{s}.csv", index=False)
    site_args = lambda s: ["--roi-table", str(tmp_path / f"{s}.csv")]  # noqa: E731
    for s in SITES:
        assert main(["dcombat", "site-summary", *site_args(s), "--keep", "age", "sex", "--out",
                     str(tmp_path / f"{s}.0.npz")]) == 0, capsys.readouterr().err
    assert main(["dcombat", "combine", *[str(tmp_path / f"{s}.0.npz") for s in SITES], "--reference-site", "a",
                 "--out", str(tmp_path / "plan.npz")]) == 0
    for stage, source in (("1", "plan.npz"), ("2", "design.npz")):
        for s in SITES:
            assert main(["dcombat", "site-summary", *site_args(s), "--from", str(tmp_path / source), "--out",
                         str(tmp_path / f"{s}.{stage}.npz")]) == 0, capsys.readouterr().err
        target = "design.npz" if stage == "1" else "model.npz"
        assert main(["dcombat", "combine", *[str(tmp_path / f"{s}.{stage}.npz") for s in SITES], "--from",
                     str(tmp_path / source), "--out", str(tmp_path / target)]) == 0, capsys.readouterr().err
    assert main(["dcombat", "apply", "--model", str(tmp_path / "model.npz"), *site_args("b"), "--output",
                 str(tmp_path / "b.harmonized.csv")]) == 0, capsys.readouterr().err
    got = pd.read_csv(tmp_path / "b.harmonized.csv")[rois].to_numpy()
    values = table[rois].to_numpy(np.float32).astype(np.float64)
    pooled = ComBat(reference_site="a").fit(values, sites=sites, covariates=cov)
    rows = sites == "b"
    assert np.abs(got - pooled.transform(values[rows], sites=sites[rows], covariates=cov[rows])).max() < 1e-5
    assert isinstance(load(tmp_path / "model.npz"), ComBat)
