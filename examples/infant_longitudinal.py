"""A longitudinal infant cohort with a scanner change: three ComBat variants compared.
===================================================================================

3 sites, 3 sessions per infant over 0-24 months, site A's scanner replaced mid-study (A2), traveling
infants on every scanner.

Compares ComBat with a linear log-age term, ComBat with a smooth (spline) log-age term and
longitudinal ComBat (subject random intercept) on the common benchmark: cross-validated site
AUROC, age effect kept against the site-free truth, traveling infants held out.

    python examples/infant_longitudinal.py         # level 5, 30 infants per site
    python examples/infant_longitudinal.py --quick # level 3, 8 infants per site
"""
from _common import parse_args

from surfharm.evaluate import MethodSpec, run_benchmark, to_markdown
from surfharm.evaluate.scenarios import simulated_data
from surfharm.simulate import preset

args = parse_args(__doc__.partition("\n")[0], "example-output/infant")
config = preset("infant", level=3, n_per_site=8, n_traveling=3) if args.quick else preset("infant")
data = simulated_data(config, name="infant longitudinal, scanner change")
print(f"{len(data.table)} scans, scanners {sorted(data.table['site'].unique())}")

methods = [MethodSpec("raw"),
           MethodSpec("combat", label="combat (linear log-age)"),
           MethodSpec("combat", label="combat (smooth log-age)", options={"smooth_terms": ["log_age"]}),
           MethodSpec("combat-long", label="longitudinal combat", column_kwargs={"subjects": "subject"})]
result = run_benchmark(data, methods, n_splits=2 if args.quick else 5)
columns = ["method", "site_auroc", "age_r2_ratio", "age_beta_r", "tr_mae_truth", "tr_icc"]
print(result.table[[c for c in columns if c in result.table.columns]].to_string(index=False, float_format="%.3f"))
path = f"{args.out}/infant_benchmark.md"
with open(path, "w") as handle:
    handle.write(to_markdown(result))
print(f"full table: {path}")
