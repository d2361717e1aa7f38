"""``surfharm selfcheck``: a quick check that the installation works, on embedded data only."""
from __future__ import annotations

import argparse
import time

EPILOG = """example:
  surfharm selfcheck            # level-5 sphere + spherical U-Net forward pass on fsaverage5 thickness
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "selfcheck", help="check the installation on embedded data (seconds)",
        description="Build the level-5 icosahedral sphere, check it against nilearn's fsaverage5 sphere, "
                    "and run a spherical U-Net forward pass on the real fsaverage5 thickness map.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np
    import torch
    from nilearn import datasets

    import spherical_ops as so

    start = time.perf_counter()
    fsaverage5 = datasets.fetch_surf_fsaverage("fsaverage5")
    sphere = nib.load(fsaverage5["sphere_left"])
    ref_vertices = sphere.darrays[0].data.astype(np.float64)
    ref_vertices /= np.linalg.norm(ref_vertices, axis=1, keepdims=True)
    ico = so.icosphere(5)
    same_faces = np.array_equal(ico.faces, sphere.darrays[1].data)
    max_dist = float(np.abs(ico.vertices - ref_vertices).max())
    print(f"icosphere(5): {ico.n_vertices} vertices, {ico.n_faces} faces; fsaverage5 order "
          f"{'identical' if same_faces else 'DIFFERENT'}, max coordinate difference {max_dist:.1e}")

    thickness = np.asarray(nib.load(fsaverage5["thick_left"]).darrays[0].data, dtype=np.float32)
    torch.manual_seed(0)
    net = so.IcoUNet(1, 1, level=5, depth=5, base_channels=16).eval()
    x = torch.from_numpy(thickness.copy()).view(1, 1, -1)
    with torch.inference_mode():
        t0 = time.perf_counter()
        y = net(x)
        forward_ms = (time.perf_counter() - t0) * 1e3
    n_params = sum(p.numel() for p in net.parameters())
    print(f"IcoUNet(1, 1, level=5): {n_params:,} parameters; forward pass on fsaverage5 thickness "
          f"({thickness.size} vertices, mean {thickness.mean():.2f} mm) -> output {tuple(y.shape)} "
          f"in {forward_ms:.0f} ms")
    ok = same_faces and max_dist < 1e-4 and bool(torch.isfinite(y).all())
    print(f"selfcheck {'passed' if ok else 'FAILED'} in {time.perf_counter() - start:.1f} s")
    return 0 if ok else 1
