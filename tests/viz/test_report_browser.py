"""The HTML report opened in a real headless Chromium: every image decodes and the page is drawn.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) or any Chrome/Chromium on PATH
(``SURFHARM_CHROMIUM`` may name the binary); skipped with that reason otherwise.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from surfharm.viz.report import write_report

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium():
    given = os.environ.get("SURFHARM_CHROMIUM")
    if given:
        return shutil.which(given) or (given if os.path.isfile(given) else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found (Debian: apt-get install -y "
                                                           "chromium; or set SURFHARM_CHROMIUM)")

# Runs after every image has loaded: records each image's decoded width (0 = broken) in the DOM.
PROBE = """<script>
window.addEventListener("load", function () {
  var widths = Array.prototype.map.call(document.images, function (img) {
    return img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0; });
  document.body.setAttribute("data-image-widths", widths.join(","));
});
</script>"""


def chromium(tmp_path, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(0)
    sites = np.repeat(np.array(["A", "B"]), 10)
    before = 2.5 + rng.normal(0, 0.1, (20, 642)) + np.where(sites == "B", 0.3, 0.0)[:, None]
    after = before - np.where(sites == "B", 0.3, 0.0)[:, None]
    table = pd.DataFrame({"subject": [f"s{i}" for i in range(20)], "site": sites, "age": rng.uniform(1, 2, 20)})
    metrics = pd.DataFrame({"site_auroc": [0.95, 0.5]}, index=["raw", "mean-shift"])
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report(out, before, {"mean-shift": after}, table=table, metrics=metrics, command="surfharm report run")
    return out


def test_every_image_decodes_in_chromium(tmp_path, report):
    html = report.read_text(encoding="utf-8")
    n_images = html.count("<img ")
    assert n_images == 7
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = chromium(tmp_path, "--dump-dom", probed.as_uri())
    match = re.search(r'data-image-widths="([0-9,]*)"', result.stdout)
    assert match, f"Chromium did not run the probe; stderr: {result.stderr[-2000:]}"
    widths = [int(w) for w in match.group(1).split(",")]
    assert len(widths) == n_images
    assert all(w > 100 for w in widths), f"broken images (width 0) among {widths}"


def test_page_screenshot_is_not_blank(tmp_path, report):
    from PIL import Image

    shot = tmp_path / "page.png"
    result = chromium(tmp_path, "--window-size=1200,3000", f"--screenshot={shot}", report.as_uri())
    assert shot.exists(), f"no screenshot; stderr: {result.stderr[-2000:]}"
    image = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert image.shape[:2] == (3000, 1200)
    drawn = (image < 235).any(axis=2)
    assert drawn.mean() > 0.05, f"only {drawn.mean():.1%} of the page is drawn"
    # coloured pixels (the figures), not only black text on white
    saturation = image.max(axis=2) - image.min(axis=2)
    assert (saturation > 60).mean() > 0.01
