"""The HTML report: self-contained, every figure a decodable PNG, text escaped, run folders read."""
import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from surfharm._atomic import OutputError
from surfharm.viz.mesh import MeshError
from surfharm.viz.report import report_from_run, write_report
from surfharm.viz.run_folder import RunFolderError, read_run


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


def decode_png(src: str) -> np.ndarray:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def cohort():
    """Level-4 maps (2562 vertices) on fsaverage5's anatomy: 3 sites with offsets, an age effect."""
    import nibabel as nib
    from nilearn import datasets

    base = nib.load(datasets.fetch_surf_fsaverage("fsaverage5")["thick_left"]).agg_data()[:2562].astype(float)
    base[base == 0] = np.nan
    rng = np.random.default_rng(1)
    sites = np.repeat(np.array(["site-1", "site-2", "<b>site-3</b>"]), 8)
    age = rng.uniform(20, 80, sites.size)
    offsets = pd.Series({"site-1": 0.0, "site-2": 0.25, "<b>site-3</b>": -0.2})[sites].to_numpy()
    truth = base[None] - 0.005 * age[:, None] + rng.normal(0, 0.05, (sites.size, base.size))
    before = (truth + offsets[:, None]).astype(np.float32)
    after = truth.astype(np.float32)
    table = pd.DataFrame({"subject": [f"sub-{i:02d}" for i in range(sites.size)], "site": sites, "age": age,
                          "sex": np.where(np.arange(sites.size) % 2, "F", "M")})
    return before, after, table


def test_report_embeds_every_figure_and_needs_no_network(tmp_path, cohort):
    before, after, table = cohort
    metrics = pd.DataFrame({"site_auroc": [0.97, 0.51], "age_r2": [0.42, 0.41]}, index=["raw", "combat"])
    out = write_report(tmp_path / "report.html", before, {"combat": after}, table=table, metrics=metrics,
                       model={"method": "combat", "eb": True}, command="surfharm harmonize --method combat",
                       hemi="lh")
    page = parse(out)
    # site and biology charts, one scan (3D viewer's fallback), distributions, PCA, age, site maps, site test,
    # covariance heterogeneity
    assert len(page.images) == 9
    for img in page.images:
        image = decode_png(img["src"])
        assert image.shape[0] > 100 and image.shape[1] > 200
        assert image.astype(float).std() > 5, f"uniform image: {img['alt']}"
    assert all(link.startswith("data:") for link in page.links)
    text = " ".join(page.text)
    assert "surfharm harmonize --method combat" in text
    assert "0.97" in text and "0.51" in text and '"eb": true' in text
    assert np.__version__ in text and pd.__version__ in text


def test_report_escapes_labels(tmp_path, cohort):
    before, after, table = cohort
    out = write_report(tmp_path / "r.html", before, after, table=table, render=False, command="x")
    html_text = out.read_text(encoding="utf-8")
    assert "&lt;b&gt;site-3&lt;/b&gt;" in html_text
    assert "<b>site-3</b>" not in html_text


def test_report_says_why_a_figure_is_missing(tmp_path, cohort):
    before, after, table = cohort
    out = write_report(tmp_path / "r.html", before, after, table=table.drop(columns=["age"]), render=False,
                       command="x")
    assert "age trajectories: not drawn (the scan table has no &#x27;age&#x27; column)" in out.read_text()


def test_report_refuses_mismatched_inputs(tmp_path, cohort):
    before, after, table = cohort
    with pytest.raises(MeshError, match="23 rows but the maps 24 scans"):
        write_report(tmp_path / "r.html", before, after, table=table.iloc[:-1])
    with pytest.raises(MeshError, match=r"shape \(24, 100\) but the raw maps \(24, 2562\)"):
        write_report(tmp_path / "r.html", before, after[:, :100], table=table)
    with pytest.raises(MeshError, match="no 'site' column"):
        write_report(tmp_path / "r.html", before, after, table=table.drop(columns=["site"]))
    assert not (tmp_path / "r.html").exists()


def write_run(folder, cohort, *, with_metrics=True):
    before, after, table = cohort
    (folder / "maps").mkdir(parents=True)
    table.to_csv(folder / "table.csv", index=False)
    np.save(folder / "maps" / "raw.npy", before)
    np.save(folder / "maps" / "mean-shift.npy", after)
    if with_metrics:
        pd.DataFrame({"method": ["raw", "mean-shift"], "site_auroc": [0.9, 0.55]}).to_csv(folder / "metrics.csv",
                                                                                         index=False)
    (folder / "model.json").write_text(json.dumps({"method": "mean-shift", "reference": "pooled"}))
    (folder / "run.json").write_text(json.dumps({"command": ["surfharm", "benchmark", "--preset", "quick"],
                                                 "hemi": "lh", "versions": {"surfharm": "9.9.9"}}))
    return folder


def test_report_from_run_folder(tmp_path, cohort):
    run = write_run(tmp_path / "run", cohort)
    data = read_run(run)
    assert list(data.after) == ["mean-shift"] and data.before.shape == (24, 2562)
    assert data.command == "surfharm benchmark --preset quick"
    out = report_from_run(run, render=False, report_command="surfharm report run")
    assert out == run / "report.html"
    text = " ".join(parse(out).text)
    assert "surfharm benchmark --preset quick" in text and "surfharm report run" in text
    assert "9.9.9" in text and "pooled" in text
    # a second report replaces the first (it is an output, not an input)
    assert report_from_run(run, render=False) == out
    with pytest.raises(OutputError, match="it is an input file"):
        report_from_run(run, run / "table.csv", render=False)


def test_run_folder_of_metrics_only(tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    pd.DataFrame({"method": ["raw", "combat"], "site_auroc": [0.93, 0.5], "error": ["", ""]}).to_csv(
        folder / "results.csv", index=False)
    (folder / "config.json").write_text(json.dumps({"scenario": "quick", "seed": 0}))
    out = report_from_run(folder)
    page = parse(out)
    assert len(page.images) == 1  # the site-removal chart
    assert "no maps in this run" in " ".join(page.text) and '"scenario": "quick"' in " ".join(page.text)


def test_run_folder_errors(tmp_path, cohort):
    with pytest.raises(FileNotFoundError, match="run folder .*nowhere does not exist"):
        read_run(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunFolderError, match="nothing to report"):
        read_run(empty)
    run = write_run(tmp_path / "run", cohort)
    np.save(run / "maps" / "bad.npy", np.zeros((24, 10)))
    with pytest.raises(RunFolderError, match=r"bad.npy has shape \(24, 10\) but .*raw.npy has \(24, 2562\)"):
        read_run(run)
    (run / "maps" / "bad.npy").unlink()
    (run / "maps" / "raw.npy").unlink()
    with pytest.raises(RunFolderError, match="no raw maps; expected raw.npy"):
        read_run(run)
    np.save(run / "maps" / "raw.npy", np.zeros((5, 2562)))
    with pytest.raises(RunFolderError, match="5 scans but the scan table table.csv has 24 rows"):
        read_run(run)
    with pytest.raises(RunFolderError, match="unknown-method"):
        report_from_run(write_run(tmp_path / "run2", cohort), methods=["unknown-method"])


def test_report_names_a_missing_covariate(tmp_path, cohort):
    before, after, table = cohort
    with pytest.raises(MeshError, match=r"covariate\(s\) \['log_age'\] not in the scan table"):
        write_report(tmp_path / "r.html", before, after, table=table, covariates=["log_age"], render=False)


def test_report_takes_cohorts(tmp_path, cohort):
    from surfharm.cohort import Cohort

    before, after, table = cohort
    raw = Cohort(before, table, hemi="rh", measure="thickness")
    out = write_report(tmp_path / "r.html", raw, {"combat": raw.with_maps(after)}, render=False, command="x")
    text = out.read_text()
    assert "hemisphere: rh" in text and "combat: raw vs harmonized" in text


def test_report_of_raw_maps_only(tmp_path, cohort):
    before, _, table = cohort
    page = parse(write_report(tmp_path / "r.html", before, table=table, command="x"))
    text = " ".join(page.text)
    assert "no harmonized maps given" in text and "Raw data" in text
    assert len(page.images) == 3  # distributions, PCA, age: one panel each
    assert 'id="viewer3d"' in out_text(tmp_path / "r.html")  # the raw scan in 3D


def out_text(path):
    return path.read_text(encoding="utf-8")


# -- the first screen: verdicts, plain names, glossary, 3D viewer --------------------------------

from surfharm.viz import verdicts as V  # noqa: E402
from surfharm.viz.report import build_report_html  # noqa: E402

BENCH = pd.DataFrame({
    "site_auroc": [0.52, 0.99, 0.51, 0.33, 0.60],
    "frac_sig_anova": [0.01, 0.9, 0.02, 0.0, 0.3],
    "age_r2": [0.40, 0.30, 0.39, 0.20, 0.46],
    "tr_mae_target": [np.nan, 0.40, 0.10, 0.36, 0.25],
    "tr_ssim_target": [np.nan, 0.80, 0.95, 0.85, 0.90],
    "fit_seconds": [0.0, 0.0, 0.1, 0.2, 3.0],
}, index=["truth (site-free)", "raw", "good", "overdone", "middling"])


def test_verdicts_from_a_benchmark_table():
    found = V.method_verdicts(BENCH)
    assert list(found) == ["good", "overdone", "middling"]  # raw and truth are references, not methods
    good, over, mid = found["good"], found["overdone"], found["middling"]
    assert good[V.SITE].level == V.GOOD
    assert good[V.SITE].detail == "site AUROC 0.99 \u2192 0.51: scanners can no longer be told apart"
    assert over[V.SITE].level == V.BAD and "over-correction" in over[V.SITE].detail
    assert mid[V.SITE].level == V.WARN and "some site signal remains" in mid[V.SITE].detail
    assert good[V.BIOLOGY].level == V.GOOD and good[V.BIOLOGY].detail == "age effect 98% of the truth's: kept"
    assert over[V.BIOLOGY].level == V.BAD and "50% of the truth's: lost" in over[V.BIOLOGY].detail
    assert mid[V.BIOLOGY].level == V.WARN and "115% of the truth's: inflated" in mid[V.BIOLOGY].detail
    assert good[V.TRAVEL].level == V.GOOD and "0.40 \u2192 0.10 mm" in good[V.TRAVEL].detail
    assert "SSIM 0.80 \u2192 0.95" in good[V.TRAVEL].detail
    assert over[V.TRAVEL].level == V.BAD and mid[V.TRAVEL].level == V.WARN
    best = V.best_methods(BENCH)
    assert best[V.SITE][0] == "good" and best[V.BIOLOGY][0] == "good" and best[V.TRAVEL][0] == "good"
    assert {v.colour for v in (good[V.SITE], mid[V.SITE], over[V.SITE])} == {"#2e8b46", "#d28a00", "#c8372d"}


def test_verdicts_against_raw_without_truth():
    table = pd.DataFrame({"frac_sig_anova": [0.87, 0.02, 0.12], "age_r2": [0.15, 0.14, 0.10]},
                         index=["raw", "combat", "mean-shift"])
    found = V.method_verdicts(table)
    assert found["combat"][V.SITE].detail == "site effect in 87% \u2192 2% of the map: no more than chance findings"
    assert found["combat"][V.SITE].level == V.GOOD and found["mean-shift"][V.SITE].level == V.WARN
    assert found["combat"][V.BIOLOGY].detail == "age R² 0.15 \u2192 0.14: kept"
    assert found["combat"][V.BIOLOGY].level == V.GOOD
    assert found["mean-shift"][V.BIOLOGY].level == V.BAD  # 67% of raw's
    assert V.TRAVEL not in found["combat"]  # no traveling subjects: no verdict


def _first_screen_text(page_html: str) -> str:
    """Visible text up to the 3D viewer (what a 1280 x 800 window shows first)."""
    head = page_html.split('<h2>Explore one scan', 1)[0].split("<body>", 1)[1]
    collector = _Collector()
    collector.feed(head)
    return " ".join(" ".join(collector.text).split())


def test_first_screen_has_verdicts_plain_names_and_thresholds(cohort):
    before, after, table = cohort
    page_html = build_report_html(before, {"combat": after}, table=table, metrics=BENCH, render=False,
                                  command="x")
    first = _first_screen_text(page_html)
    assert "Did it work?" in first
    assert "site AUROC 0.99 \u2192 0.51: scanners can no longer be told apart" in first
    assert "over-correction" in first and "Best at removing the site effect" in first
    assert "Thresholds of the verdicts" in first and "within 0.05 of 0.5" in first
    for column in BENCH.columns:
        assert column not in first, f"raw column name {column!r} on the first screen"
    assert 'class="v-good"' in page_html and 'class="v-warn"' in page_html and 'class="v-bad"' in page_html
    assert "#2e8b46" in page_html and "#d28a00" in page_html and "#c8372d" in page_html


def test_tables_use_plain_names_and_a_glossary(cohort):
    before, after, table = cohort
    page_html = build_report_html(before, {"combat": after}, table=table, metrics=BENCH, render=False, command="x")
    body = page_html.split("<h2>How this was made</h2>")[0]
    collector = _Collector()
    collector.feed(body)
    text = " ".join(collector.text)
    for column in BENCH.columns:
        assert column not in text, f"raw column name {column!r} in the page's text"
    assert "Glossary" in text
    for column in BENCH.columns:
        info = V.METRICS[column]
        assert info.name in text and info.meaning in text
    assert "map with a site effect on the mean" in text and "error to target scanner (mm)" in text
    # one chart per criterion, not one per column
    alts = [img["alt"] for img in collector.images]
    assert "site removal metrics by method" in alts and "biology metrics by method" in alts
    assert "traveling subjects metrics by method" in alts


def test_every_known_metric_has_a_plain_name_and_meaning():
    from surfharm.evaluate.benchmark import COLUMNS
    from surfharm.pipeline.outputs import METRIC_COLUMNS

    for column in [c for c, _, _ in COLUMNS] + list(METRIC_COLUMNS):
        info = V.METRICS[column]
        assert info.name and info.meaning and "_" not in info.name
        assert info.group in V.GROUP_TITLES


def test_3d_viewer_embeds_mesh_and_layers(cohort):
    import re

    before, after, table = cohort
    page_html = build_report_html(before, {"combat": after, "other": after * 0.9}, table=table, render=False,
                                  command="x")
    match = re.search(r'<script type="application/json" class="v3d-data">(.*?)</script>', page_html, re.S)
    assert match
    data = json.loads(match.group(1))
    mesh = data["meshes"][0]
    assert mesh["n"] == 2562 and not mesh["u32"]
    faces = np.frombuffer(base64.b64decode(mesh["f"]), dtype="<u2").reshape(-1, 3)
    assert faces.shape == (5120, 3) and faces.max() == 2561
    assert [layer["key"] for layer in data["layers"]] == ["before", "after:combat", "diff:combat", "after:other",
                                                         "diff:other"]
    codes = np.frombuffer(base64.b64decode(data["layers"][0]["data"][0]), dtype=np.uint8)
    assert codes.size == 2562 and (codes == 255).sum() == np.isnan(before[0]).sum()
    assert data["layers"][2]["clim"][0] == -data["layers"][2]["clim"][1]  # differences centred on 0
    assert "http://" not in page_html.split("<h2>How this was made</h2>")[0].replace("http://www.w3.org", "")
    assert 'data-stage="difference"' in page_html and "static renderings: not drawn" in page_html


def test_3d_viewer_of_both_hemispheres(tmp_path):
    from surfharm.viz.webgl import scene_for_maps

    rng = np.random.default_rng(0)
    data = scene_for_maps(rng.normal(2.5, 0.2, 2 * 642), {"m": rng.normal(2.5, 0.2, 2 * 642)}, hemi="both")
    assert data["hemis"] == ["lh", "rh"] and len(data["meshes"]) == 2
    assert all(len(layer["data"]) == 2 for layer in data["layers"])
