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
pytestmark = [pytestmark, pytest.mark.slow]  # opens a browser

# Runs after every image has loaded: records each image's decoded width (0 = broken) in the DOM.
PROBE = """<script>
window.addEventListener("load", function () {
  var widths = Array.prototype.map.call(document.images, function (img) {
    return img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0; });
  document.body.setAttribute("data-image-widths", widths.join(","));
});
</script>"""


def chromium(tmp_path, *args):
    gpu = [] if any(a.startswith("--use-angle") for a in args) else ["--disable-gpu"]
    cmd = [CHROMIUM, "--headless", "--no-sandbox", *gpu, "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(0)
    sites = np.repeat(np.array(["A", "B"]), 10)
    before = 2.5 + rng.normal(0, 0.1, (20, 642)) + np.where(sites == "B", 0.3, 0.0)[:, None]
    after = before - np.where(sites == "B", 0.3, 0.0)[:, None]
    table = pd.DataFrame({"subject": [f"s{i}" for i in range(20)], "site": sites, "age": rng.uniform(1, 2, 20)})
    # mean-shift: site removed (green), age effect at 83% of raw's (amber)
    metrics = pd.DataFrame({"site_auroc": [0.95, 0.5], "age_r2": [0.30, 0.25]}, index=["raw", "mean-shift"])
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report(out, before, {"mean-shift": after}, table=table, metrics=metrics, command="surfharm report run")
    return out


def test_every_image_decodes_in_chromium(tmp_path, report):
    html = report.read_text(encoding="utf-8")
    n_images = html.count("<img ")
    # site and biology charts, one scan, distributions, PCA, age, site maps, site test, covariance heterogeneity
    assert n_images == 9
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


# Runs after load: the page's width at this window size, and the 3D viewer's state.
LAYOUT_PROBE = """<script>
window.addEventListener("load", function () {
  // Wait for the viewer's first frame (a loaded machine may take seconds), then record the layout.
  var tries = 0;
  var timer = setInterval(function () {
    var root = document.documentElement, viewer = document.getElementById("viewer3d");
    var canvas = viewer ? viewer.querySelector("canvas") : null;
    var drawn = canvas ? canvas.getAttribute("data-drawn-pixels") : null;
    var webgl = viewer && viewer.classList.contains("webgl");
    tries += 1;
    if (webgl && drawn === null && tries < 60) return;
    clearInterval(timer);
    document.body.setAttribute("data-layout", [root.scrollWidth, window.innerWidth, webgl ? 1 : 0,
      canvas ? (drawn || "-1") : "-2", canvas ? canvas.width * canvas.height : 0].join(","));
  }, 250);
});
</script>"""


def _layout(tmp_path, report, *flags):
    probed = tmp_path / "layout.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"),
                      encoding="utf-8")
    result = chromium(tmp_path, "--window-size=1280,800", *flags, "--dump-dom", probed.as_uri())
    match = re.search(r'data-layout="([-0-9,]*)"', result.stdout)
    assert match, f"Chromium did not run the probe; stderr: {result.stderr[-2000:]}"
    return [int(v) for v in match.group(1).split(",")]


def test_page_fits_a_1280_pixel_window(tmp_path, report):
    scroll_width, inner_width, _, _, _ = _layout(tmp_path, report)
    assert inner_width == 1280
    assert scroll_width <= 1280, f"horizontal scrollbar: the page is {scroll_width} px wide"


def test_first_screen_shows_the_verdicts(tmp_path, report):
    from PIL import Image

    shot = tmp_path / "first.png"
    result = chromium(tmp_path, "--window-size=1280,800", f"--screenshot={shot}", report.as_uri())
    assert shot.exists(), f"no screenshot; stderr: {result.stderr[-2000:]}"
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (800, 1280)

    def share(rgb):
        return (np.abs(image - np.array(rgb)).max(axis=2) <= 3).mean()

    # the verdict cells: green (site removed) and amber (age partly lost), with their coloured borders
    assert share((0xe3, 0xf4, 0xe6)) > 0.01, "no green verdict on the first screen"
    assert share((0xff, 0xf3, 0xdc)) > 0.01, "no amber verdict on the first screen"
    assert share((0x2e, 0x8b, 0x46)) > 0.0002 and share((0xd2, 0x8a, 0x00)) > 0.0002
    html = report.read_text(encoding="utf-8")
    assert "site AUROC 0.95 \u2192 0.50: scanners can no longer be told apart" in html
    assert "age R² 0.30 \u2192 0.25: 83% of raw&#x27;s, partly lost" in html


WEBGL_FLAGS = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")


def test_3d_viewer_draws_in_webgl(tmp_path, report):
    _, _, webgl, drawn, area = _layout(tmp_path, report, *WEBGL_FLAGS)
    if not webgl:
        pytest.skip("this headless Chromium offers no WebGL (even with SwiftShader): the viewer shows the "
                    "static renderings instead")
    assert area > 0 and drawn > 0.05 * area, f"the 3D viewer drew {drawn} of {area} pixels"
