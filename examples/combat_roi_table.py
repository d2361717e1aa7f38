"""ComBat on an ROI table: real Desikan-Killiany thickness from 4 OpenNeuro datasets (scanners).
=============================================================================================

Fit on 80% of the participants, apply the saved model to the other 20% (new subjects of known
sites), and check that site explains less of each ROI's variance while age explains as much.

    python examples/combat_roi_table.py            # writes example-output/combat-roi/
    python examples/combat_roi_table.py --quick

The same from the command line:
    surfharm harmonize --roi-table TABLE.csv --site-column dataset --method combat --out OUT
"""
from _common import REPO, parse_args

import numpy as np
import pandas as pd

from surfharm import Cohort
from surfharm.evaluate import metrics
from surfharm.harmonize import ComBat
from surfharm.pipeline.outputs import numeric_covariates

args = parse_args(__doc__.partition("\n")[0], "example-output/combat-roi")
TABLE = "tests/data/openneuro_dk/dk_thickness_4sites.csv"  # CC0, see tests/data/openneuro_dk/README.md

# Subject ids repeat across datasets: make them unique.
table = pd.read_csv(REPO / TABLE)
table["subject"] = table["dataset"] + "_" + table["subject"]
if args.quick:
    table = table.groupby("dataset", group_keys=False).head(40)
path = f"{args.out}/rois.csv"
table.drop(columns=["scanner_id", "fs_version"]).to_csv(path, index=False)
rois = [c for c in table.columns if c.endswith("_thickness")]  # age and sex stay covariates
cohort = Cohort.from_roi_table(path, site_column="dataset", measure="thickness", features=rois)
print(cohort)

rng = np.random.default_rng(0)
train = rng.random(cohort.n_scans) < 0.8
fit_part, new_part = cohort.subset(train), cohort.subset(~train)
model = ComBat().fit(fit_part.maps, sites=fit_part.sites, covariates=fit_part.covariates(["age", "sex"]))
model_path = model.save(f"{args.out}/combat_dk.npz")
print(f"fitted on {fit_part.n_scans} scans, sites {model.sites_}; model written to {model_path}")

# Later (another session, another machine): load the model and harmonize new subjects.
loaded = ComBat.load(model_path)
harmonized = loaded.transform(new_part.maps, sites=new_part.sites, covariates=new_part.covariates(["age", "sex"]))
written = new_part.with_maps(harmonized).write(f"{args.out}/new_subjects.harmonized.csv", overwrite=True)
print(f"wrote {written[0]}")

covariates = numeric_covariates(new_part.table, ["age", "sex"])
for name, values in (("raw", new_part.maps), ("combat", harmonized)):
    site = metrics.site_effect_tests(values, new_part.sites, covariates)
    age = metrics.covariate_effects(values, covariates, ["age"])
    print(f"{name:7s} held-out scans: median site eta^2 {site['site_eta2_median']:.3f}, "
          f"ROIs with a site effect {site['frac_sig_anova']:.0%}, mean age R^2 {np.nanmean(age['age_r2']):.3f}")
