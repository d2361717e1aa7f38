"""``surfharm doctor``: what is installed and usable, one line each, with the fix when something is missing.

Checks, in order: surfharm and Python; the core packages (numpy, scipy, pandas, scikit-learn,
nibabel, nilearn, matplotlib, tqdm); the ``[deep]`` extra (torch and whether it sees a CUDA device,
safetensors); the ``[viz]`` extra (pyvista, and a tiny off-screen rendering in a subprocess with a
timeout, naming the rendering backend); Chromium (used by the report's browser tests). Exit code 0
when the core is usable (extras may be missing), 1 otherwise. ``--selfcheck`` then runs
``surfharm selfcheck``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

EPILOG = """examples:
  surfharm doctor                 # seconds: versions, torch device, off-screen rendering, chromium
  surfharm doctor --no-render     # skip the test rendering
  surfharm doctor --selfcheck     # then a spherical U-Net forward pass on fsaverage5 (needs torch)
"""

TORCH_PIN = "torch==2.13.0"
CORE = (("numpy", "numpy"), ("scipy", "scipy"), ("pandas", "pandas"), ("scikit-learn", "sklearn"),
        ("nibabel", "nibabel"), ("nilearn", "nilearn"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm"))
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
RENDER_TIMEOUT_S = 60

# A sphere drawn off-screen: prints the rendering window's class and the image's contrast.
_RENDER_PROBE = """
import os, sys
from surfharm.viz.grid import _prefer_egl_without_display
_prefer_egl_without_display()
import pyvista as pv
p = pv.Plotter(off_screen=True, window_size=(64, 64))
p.add_mesh(pv.Sphere(), color="red")
img = p.screenshot(return_img=True)
print(type(p.ren_win).__name__, float(img.std()))
p.close()
"""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        status = "OK     " if self.ok else ("MISSING" if self.required else "missing")
        text = f"{status} {self.name:<22} {self.detail}"
        if not self.ok and self.fix:
            text += f"\n        fix: {self.fix}"
        return text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="report what is installed and usable (and how to fix what is missing)",
        description="One line per component: surfharm, Python, the core packages, the [deep] extra (torch, "
                    "its CPU/CUDA device, safetensors), the [viz] extra (pyvista and an off-screen test "
                    "rendering), and Chromium; each OK or missing, with the command that fixes it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-render", action="store_true", help="skip the off-screen test rendering")
    parser.add_argument("--selfcheck", action="store_true", help="then run 'surfharm selfcheck'")
    parser.set_defaults(func=run)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> str | None:
    """None when ``module`` imports, else the error's text."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install raises anything
        return f"{type(exc).__name__}: {exc}"
    return None


def find_chromium() -> str | None:
    given = os.environ.get("SURFHARM_CHROMIUM")
    if given:
        return shutil.which(given) or (given if os.path.isfile(given) else None)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def check_core() -> list[Check]:
    import surfharm

    checks = [Check("surfharm", True, f"{surfharm.__version__} ({os.path.dirname(surfharm.__file__)})"),
              Check("python", sys.version_info >= (3, 10), f"{sys.version.split()[0]} ({sys.executable})",
                    "use Python 3.10 or newer")]
    for dist, module in CORE:
        version = _version(dist)
        error = _importable(module) if version else "not installed"
        checks.append(Check(dist, error is None, version if error is None else error,
                            f'pip install -e "." (or pip install {dist})'))
    return checks


def check_deep() -> list[Check]:
    fix = f'pip install {TORCH_PIN} then pip install -e ".[deep]"'
    version = _version("torch")
    if version is None or _importable("torch"):
        torch_check = Check("torch [deep]", False, "not installed: spherical CNNs, S2SGAN and selfcheck need it",
                            fix, required=False)
    else:
        import torch

        if torch.cuda.is_available():
            device = f"CUDA device: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "Apple MPS device"
        else:
            device = "CPU only (no CUDA device visible)"
        torch_check = Check("torch [deep]", True, f"{version}; {device}", required=False)
    safetensors = _version("safetensors")
    return [torch_check,
            Check("safetensors [deep]", safetensors is not None, safetensors or "not installed: S2SGAN model files",
                  'pip install -e ".[deep]"', required=False)]


def check_render(timeout: float = RENDER_TIMEOUT_S) -> Check:
    """A 64 x 64 off-screen rendering in a subprocess (a broken OpenGL stack may crash or hang)."""
    fix = ('pip install -e ".[viz]"; without a display install EGL or OSMesa (Debian: apt-get install '
           "libegl1 libgl1), or run under xvfb-run")
    try:
        result = subprocess.run([sys.executable, "-c", _RENDER_PROBE], capture_output=True, text=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Check("off-screen rendering", False, f"no picture within {timeout:.0f} s", fix, required=False)
    words = result.stdout.split()
    if result.returncode != 0 or len(words) < 2:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("off-screen rendering", False, f"failed: {last[:200]}", fix, required=False)
    backend, contrast = words[-2], float(words[-1])
    if contrast <= 0:
        return Check("off-screen rendering", False, f"{backend} drew a blank image", fix, required=False)
    return Check("off-screen rendering", True, f"works ({backend})", required=False)


def check_viz(render: bool = True) -> list[Check]:
    version = _version("pyvista")
    checks = [Check("pyvista [viz]", version is not None and _importable("pyvista") is None,
                    f"{version}; VTK {_version('vtk')}" if version else "not installed: renderings, the demo's figures",
                    'pip install -e ".[viz]"', required=False)]
    if not render:
        checks.append(Check("off-screen rendering", True, "not tested (--no-render)", required=False))
    elif checks[0].ok:
        checks.append(check_render())
    chromium = find_chromium()
    checks.append(Check("chromium", chromium is not None,
                        chromium or "not found: only the report's browser tests need it (set SURFHARM_CHROMIUM "
                                     "to use another binary)",
                        "apt-get install chromium (Debian/Ubuntu), or any Chrome/Chromium on PATH", required=False))
    return checks


def run(args: argparse.Namespace) -> int:
    checks = check_core() + check_deep() + check_viz(render=not args.no_render)
    for check in checks:
        print(check.line())
    core_ok = all(c.ok for c in checks if c.required)
    missing = [c.name for c in checks if not c.ok and not c.required]
    if not core_ok:
        print("surfharm is NOT usable: fix the MISSING lines above")
    elif missing:
        print(f"surfharm is usable; optional parts missing: {', '.join(missing)}")
    else:
        print("everything is installed and usable")
    if args.selfcheck and core_ok:
        deep = next(c for c in checks if c.name == "torch [deep]")
        if not deep.ok:
            print(f"selfcheck skipped: it needs torch ({deep.fix})")
        else:
            from surfharm.cli import selfcheck

            return selfcheck.run(args)
    return 0 if core_ok else 1
