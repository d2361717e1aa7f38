"""S2SGAN on the demo cohort: map scans of the new scanner (A2) to the old one (A).
================================================================================

The cohort is the one of ``surfharm demo`` (simulated infants on fsaverage5 anatomy, scanner
replaced mid-study, traveling infants scanned on both). Train on the study scans, save the model
(safetensors + JSON), load it back and compare each traveling infant's A2 scan with the same
infant's A scan, before and after.

    python examples/s2sgan_demo_cohort.py          # level 5, 200 steps (several minutes on a CPU)
    python examples/s2sgan_demo_cohort.py --quick  # level 3, 3 steps (seconds): checks the plumbing only
"""
from _common import parse_args

import numpy as np

from surfharm.evaluate import metrics
from surfharm.harmonize import S2SGAN
from surfharm.pipeline.demo import CHANGED, TARGET, DemoSettings, demo_data

args = parse_args(__doc__.partition("\n")[0], "example-output/s2sgan")
settings = DemoSettings(level=3, n_subjects=12, n_traveling=3) if args.quick else DemoSettings()
data, cortex = demo_data(settings)
study, table = data.study, data.table
sites = table["site"].to_numpy()
covariates = table[["log_age"]]

model = S2SGAN(source=CHANGED, target=TARGET, condition_on=("log_age",), depth=3 if args.quick else 4,
               base_channels=8, max_steps=3 if args.quick else 200, batch_size=2, progress=True)
model.fit(data.X[study], sites=sites[study], covariates=covariates[study].reset_index(drop=True))
path = model.save(f"{args.out}/s2sgan_{CHANGED}_to_{TARGET}.safetensors")
print(f"model written to {path} (metadata: {path.with_suffix('.json')})")

model = S2SGAN.load(path)
harmonized = model.transform(data.X, sites=sites, covariates=covariates)
# Row numbers of each traveling infant's scan on each scanner: (n_traveling, 2) table.
rows = table[table["traveling"]].reset_index().pivot(index="subject", columns="site", values="index")
source, target = rows[CHANGED].to_numpy(), rows[TARGET].to_numpy()
for name, maps in (("raw", data.X), ("s2sgan", harmonized)):
    a, b = maps[source][:, cortex], maps[target][:, cortex]
    print(f"{name:7s} traveling infants, {CHANGED} vs {TARGET}: MAE {np.mean(metrics.mae(a, b)):.3f} mm, "
          f"PSNR {np.mean(metrics.psnr(a, b)):.1f} dB")
