"""Peak memory of building a large Cohort from a stacked MGH + FSGD (default 2000 scans x 163842 vertices).

The stacked file (1.3 GB for the default size) is written once into a temporary folder; each way of
loading it runs in a fresh process and reports its peak resident memory (``ru_maxrss``) next to the
size of one float32 copy of the data. Peak RSS counts the pages of a memory-map that are resident
(page cache the kernel can drop); the heap peak (tracemalloc, which numpy reports to) counts what
the process allocated:

* ``in memory``: ``Cohort.from_stacked_mgh(mgh, fsgd)``: one (n_scans, V) float32 array, filled
  frame chunk by frame chunk (expected peak: one copy + a chunk);
* ``memmap``: ``Cohort.from_stacked_mgh(mgh, fsgd, out="maps.npy")``: streamed into a ``.npy``
  memory-map (expected peak: far below one copy, pages are written back to disk);
* ``iterate``: the memmap cohort walked with ``iter_chunks(64)`` computing per-vertex means.

    python benchmarks/bench_cohort_memory.py [--scans 2000] [--level 7] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child(mode: str, folder: Path) -> None:
    from surfharm import Cohort

    import tracemalloc

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # interpreter + imports
    tracemalloc.start()  # numpy reports its buffers to tracemalloc; memory-mapped pages are not heap
    t0 = time.perf_counter()
    if mode == "in memory":
        cohort = Cohort.from_stacked_mgh(folder / "lh.thickness.stack.mgh", folder / "study.fsgd")
    else:
        cohort = Cohort.from_stacked_mgh(folder / "lh.thickness.stack.mgh", folder / "study.fsgd",
                                         out=folder / "maps.npy")
    if mode == "iterate":
        total = np.zeros(cohort.n_vertices)
        for chunk in cohort.iter_chunks(64):
            total += np.nansum(chunk.maps, axis=0)
        del total
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    heap_peak_mb = tracemalloc.get_traced_memory()[1] / 2 ** 20
    print(json.dumps({"mode": mode, "seconds": elapsed, "peak_mb": peak_mb, "baseline_mb": baseline_mb,
                      "heap_peak_mb": heap_peak_mb, "shape": list(cohort.maps.shape)}))


def _write_inputs(folder: Path, n_scans: int, level: int) -> None:
    from spherical_ops import n_vertices
    from surfharm.io import write_fsgd
    import nibabel as nib
    import pandas as pd

    n_vert = n_vertices(level)
    # Written frame block by frame block (nibabel would need the whole array in memory).
    header = nib.freesurfer.mghformat.MGHHeader()
    header.set_data_shape((n_vert, 1, 1, n_scans))
    header.set_data_dtype(np.float32)
    rng = np.random.default_rng(0)
    with open(folder / "lh.thickness.stack.mgh", "wb") as fh:
        header.writehdr_to(fh)
        for start in range(0, n_scans, 100):
            n = min(100, n_scans - start)
            fh.write(rng.normal(2.5, 0.4, size=(n, n_vert)).astype(">f4").tobytes())
        header.writeftr_to(fh)
    table = pd.DataFrame({"subject": [f"s{i:05d}" for i in range(n_scans)],
                          "site": [f"site{i % 8}" for i in range(n_scans)],
                          "age": rng.uniform(20, 80, n_scans).round(1)})
    write_fsgd(folder / "study.fsgd", table, class_column="site", variables=["age"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--level", type=int, default=7)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return 0
    from spherical_ops import n_vertices

    one_copy_mb = args.scans * n_vertices(args.level) * 4 / 2 ** 20
    with tempfile.TemporaryDirectory(prefix="surfharm-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        _write_inputs(folder, args.scans, args.level)
        print(f"# {args.scans} scans x {n_vertices(args.level)} vertices; one float32 copy = {one_copy_mb:.0f} MB; "
              f"inputs written in {time.perf_counter() - t0:.1f} s")
        print("| load | time (s) | peak RSS (MB) | RSS after imports (MB) | heap peak (MB) | heap peak / one copy |")
        print("|---|---|---|---|---|---|")
        for mode in ("in memory", "memmap", "iterate"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(folder)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {mode} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['baseline_mb']:.0f} | "
                  f"{r['heap_peak_mb']:.0f} | {r['heap_peak_mb'] / one_copy_mb:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
