"""Plain names of the metrics and the verdicts of the report's first screen ("did it work?").

One mapping, :data:`METRICS`, gives every metric column that surfharm writes (``metrics.csv`` of
``surfharm harmonize``, ``results.csv`` of ``surfharm benchmark``, the demo) a plain name, the
direction in which it is better, a one-line meaning and the criterion it belongs to (site removal,
biology, traveling subjects). The report's tables, plots and glossary use it; raw column names stay
in the CSV files.

Each harmonized method gets up to three verdicts, each coloured green, amber or red:

========================  ===========================  ===============================  ==============================
criterion                 green                        amber                            red
========================  ===========================  ===============================  ==============================
site effect (site AUROC)  within 0.05 of 0.5:          0.05-0.15 above 0.5 (residual),  more than 0.15 above 0.5
                          scanners cannot be told      or 0.40-0.45 (mild               (site still present), or
                          apart                        over-correction)                 below 0.40 (over-corrected)
site effect (no AUROC:    at most 5% of the map        5-20% of the map                 more than 20% of the map
share of vertices with    (about the false discovery
a site effect)            rate allowed)
biology (age R² against   within 10% of the truth's    10-25% away                      more than 25% away
the site-free truth)
biology (age R² against   at least 90% of raw's        75-90% of raw's                  below 75% of raw's
raw, no truth known)      (higher is fine: site
                          noise removed)
traveling subjects (MAE   reduced by at least 50%      reduced by 20-50%                reduced by less than 20%
to the target scanner)                                                                  (or increased)
========================  ===========================  ===============================  ==============================

Why these numbers. A cross-validated AUROC of a few dozen scans moves by about +-0.05 between fold
splits, so within 0.05 of chance is "no site signal left"; beyond 0.15 a classifier still finds
the scanner reliably. An AUROC far *below* 0.5 is not success: the harmonizer's estimation error
marks training and held-out scans with opposite signs, so the site is still encoded, inverted
(over-correction). Biology within 10% of its reference is inside the spread of the estimate on
small cohorts; losing a quarter of the age effect changes what a study concludes. Against raw
(real data, no truth), the age R² may rise, since the site's variance no longer dilutes it; only
a fall is a loss. Traveling subjects are the same brains on two scanners: halving their difference
is what a location/scale correction does on additive and multiplicative site effects; under 20%
means the scanners' difference is mostly still there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

GOOD, WARN, BAD, NONE = "good", "warn", "bad", "none"
#: Colours of the verdicts (background, border), also used by the report's CSS.
COLOURS = {GOOD: ("#e3f4e6", "#2e8b46"), WARN: ("#fff3dc", "#d28a00"), BAD: ("#fde6e4", "#c8372d"),
           NONE: ("#f2f2f2", "#9a9a9a")}
SYMBOLS = {GOOD: "\u2714", WARN: "!", BAD: "\u2716", NONE: "\u2013"}

# -- thresholds (see the module docstring) --------------------------------------------------------
AUROC_CHANCE = 0.5
AUROC_NO_SIGNAL = 0.05     # |AUROC - 0.5| <= this: no site signal
AUROC_RESIDUAL = 0.15      # above 0.5 by more than this: site effect present
AUROC_MILD_OVER = 0.45     # below this (but >= AUROC_OVER): mild over-correction
AUROC_OVER = 0.40          # below this: over-corrected
SITE_SHARE_GOOD = 0.05     # share of the map with a site effect (no AUROC available)
SITE_SHARE_WARN = 0.20
BIOLOGY_GOOD = 0.10        # |ratio - 1| to the truth's age R^2
BIOLOGY_WARN = 0.25
RAW_BIOLOGY_GOOD = 0.90    # age R^2 / raw's, no truth known
RAW_BIOLOGY_WARN = 0.75
TRAVEL_GOOD = 0.50         # relative reduction of the traveling-subject MAE
TRAVEL_WARN = 0.20

#: The thresholds as rows (criterion, green, amber, red) for the page.
THRESHOLD_ROWS = (
    ("Site effect: site AUROC (0.5 = chance)",
     f"within {AUROC_NO_SIGNAL:g} of 0.5",
     f"{0.5 + AUROC_NO_SIGNAL:g}-{0.5 + AUROC_RESIDUAL:g} (residual) or {AUROC_OVER:.2f}-{AUROC_MILD_OVER:.2f} "
     "(mild over-correction)",
     f"above {0.5 + AUROC_RESIDUAL:g} (present) or below {AUROC_OVER:.2f} (over-corrected)"),
    ("Site effect, when no AUROC: share of the map with a site effect",
     f"at most {SITE_SHARE_GOOD:.0%}", f"{SITE_SHARE_GOOD:.0%}-{SITE_SHARE_WARN:.0%}",
     f"more than {SITE_SHARE_WARN:.0%}"),
    ("Biology: age effect against the site-free truth",
     f"within {BIOLOGY_GOOD:.0%}", f"{BIOLOGY_GOOD:.0%}-{BIOLOGY_WARN:.0%} away",
     f"more than {BIOLOGY_WARN:.0%} away"),
    ("Biology, when no truth: age effect against raw",
     f"at least {RAW_BIOLOGY_GOOD:.0%} of raw's (higher is fine)",
     f"{RAW_BIOLOGY_WARN:.0%}-{RAW_BIOLOGY_GOOD:.0%}", f"below {RAW_BIOLOGY_WARN:.0%}"),
    ("Traveling subjects: error to the target scanner",
     f"reduced by {TRAVEL_GOOD:.0%} or more", f"reduced by {TRAVEL_WARN:.0%}-{TRAVEL_GOOD:.0%}",
     f"reduced by less than {TRAVEL_WARN:.0%}"),
)

SITE, BIOLOGY, TRAVEL, OTHER = "site", "biology", "travel", "other"
#: Criteria in page order: key -> heading.
CRITERIA = {SITE: "Site effect removed?", BIOLOGY: "Biology kept?", TRAVEL: "Traveling subjects agree?"}
GROUP_TITLES = {SITE: "Site removal", BIOLOGY: "Biology", TRAVEL: "Traveling subjects", OTHER: "Other"}


@dataclass(frozen=True)
class Metric:
    """What a metric column means: plain ``name``, ``better`` ("high", "low", "truth" or a target
    number such as 0.5), one-line ``meaning``, and ``group`` (site, biology, travel, other)."""

    name: str
    better: str | float
    meaning: str
    group: str


def _m(name, better, meaning, group) -> Metric:
    return Metric(name, better, meaning, group)


#: Metric column -> plain name, direction, meaning, group. The one place where columns are named.
METRICS: dict[str, Metric] = {
    "site_auroc": _m("site AUROC", 0.5, "how well a classifier tells the scanners apart from the maps, "
                     "cross-validated: 0.5 = no better than chance; well below 0.5 = over-corrected", SITE),
    "site_auroc_sd": _m("site AUROC spread", "", "standard deviation of the site AUROC over repeated fold "
                        "splits", SITE),
    "site_balanced_accuracy": _m("site classification accuracy", "low", "share of scans whose scanner is "
                                 "guessed right (balanced over sites), cross-validated; chance = 1 / sites", SITE),
    "frac_sig_anova": _m("map with a site effect on the mean", "low", "share of vertices (or regions) whose mean "
                         "differs between sites, after the kept covariates (FDR 5%)", SITE),
    "frac_sig_kruskal": _m("map with a site effect (rank test)", "low", "the same with a rank test "
                           "(Kruskal-Wallis), robust to outliers", SITE),
    "frac_sig_levene": _m("map with a site effect on the spread", "low", "share of vertices whose spread "
                          "differs between sites (Levene, FDR 5%)", SITE),
    "site_eta2_median": _m("variance explained by site", "low", "median share of each vertex's variance "
                           "explained by the site", SITE),
    "kbet_rejection": _m("neighbourhoods rejecting site mixing (kBET)", "low", "share of scans whose nearest "
                         "neighbours' sites differ from the cohort's mix (kBET on principal components; about 0.05 "
                         "= no site effect)", SITE),
    "ilisi": _m("sites mixed among neighbours (iLISI)", "high", "effective number of sites among each scan's "
                "neighbours: the number of sites = fully mixed", SITE),
    "manova_pillai": _m("site effect on the main patterns (MANOVA)", "low", "Pillai's trace of site on the first "
                        "10 principal components of the maps (0 = none)", SITE),
    "manova_p": _m("site effect on the main patterns: p-value", "high", "p-value of that MANOVA (high = no "
                   "detectable site effect)", SITE),
    "cov_het_frac": _m("map where site changes local covariance", "low", "share of vertices whose covariance "
                       "with their neighbours differs between sites (Box's M, FDR 5%)", SITE),
    "age_r2": _m("age effect (R²)", "truth", "how much of each vertex's variance age explains (mean over "
                 "vertices); should stay as large as the truth's", BIOLOGY),
    "age_r2_ratio": _m("age effect vs truth", 1.0, "age effect divided by the site-free truth's: 1 = kept "
                       "entirely", BIOLOGY),
    "age_r2_ratio_target": _m("age effect vs truth at the target scanner", 1.0, "age effect divided by that of "
                              "the truth as the target scanner acquires it", BIOLOGY),
    "age_beta": _m("age slope", "truth", "mean change of the measure per unit of age", BIOLOGY),
    "age_beta_r": _m("age-slope map vs truth (r)", "high", "correlation of the map of age slopes with the "
                     "truth's: is the spatial pattern of ageing kept?", BIOLOGY),
    "age_beta_mae": _m("age-slope map error", "low", "mean absolute difference of the age-slope map from the "
                       "truth's", BIOLOGY),
    "sex_d": _m("sex effect (Cohen's d)", "truth", "mean standardised difference female - male", BIOLOGY),
    "sex_d_r": _m("sex-effect map vs truth (r)", "high", "correlation of the map of sex effects with the "
                  "truth's", BIOLOGY),
    "age_mae": _m("age prediction error (years)", "low", "mean absolute error of age predicted from the maps, "
                  "cross-validated", BIOLOGY),
    "age_pred_r2": _m("age prediction R²", "high", "R² of age predicted from the maps, cross-validated: the "
                      "age information a later analysis can use", BIOLOGY),
    "tr_mae_target": _m("error to target scanner (mm)", "low", "traveling subjects: mean absolute difference "
                        "from the same brain scanned on the target scanner", TRAVEL),
    "tr_mae_target_cortex": _m("error to target scanner, cortex (mm)", "low", "the same over cortex only "
                               "(medial wall left out)", TRAVEL),
    "tr_psnr_target": _m("PSNR to target scanner (dB)", "high", "traveling subjects: peak signal-to-noise "
                         "ratio against the target scan (higher = closer)", TRAVEL),
    "tr_psnr_target_cortex": _m("PSNR to target scanner, cortex (dB)", "high", "the same over cortex only",
                                TRAVEL),
    "tr_r_target": _m("correlation with target scanner", "high", "traveling subjects: Pearson r with the "
                      "target scan", TRAVEL),
    "tr_ssim_target": _m("similarity to target scanner (SSIM)", "high", "traveling subjects: structural "
                         "similarity with the target scan on the sphere (1 = identical patterns)", TRAVEL),
    "tr_icc": _m("agreement across scanners (ICC)", "high", "traveling subjects: intraclass correlation "
                 "(absolute agreement) over all scanners", TRAVEL),
    "tr_mae_truth": _m("error to truth (mm)", "low", "traveling subjects: mean absolute difference from the "
                       "site-free truth", TRAVEL),
    "tr_psnr_truth": _m("PSNR to truth (dB)", "high", "traveling subjects: PSNR against the site-free truth",
                        TRAVEL),
    "tr_r_truth": _m("correlation with truth", "high", "traveling subjects: Pearson r with the site-free truth",
                     TRAVEL),
    "tr_ssim_truth": _m("similarity to truth (SSIM)", "high", "traveling subjects: SSIM with the site-free "
                        "truth", TRAVEL),
    "implausible_values": _m("values outside the plausible range", "low", "harmonized values outside the "
                             "measure's plausible range (e.g. thickness below 0 mm)", OTHER),
    "fit_seconds": _m("fit time (s)", "low", "time to fit and transform the study scans once", OTHER),
}


def metric_info(column: str) -> Metric:
    """The :class:`Metric` of a column; unknown columns get their name with spaces and no direction."""
    found = METRICS.get(str(column))
    if found is not None:
        return found
    return Metric(str(column).replace("_", " "), "", "", OTHER)


def plain_name(column: str) -> str:
    return metric_info(column).name


def direction_text(better) -> str:
    if better == "high":
        return "higher is better"
    if better == "low":
        return "lower is better"
    if better == "truth":
        return "best near the truth's"
    if isinstance(better, (int, float)) and not isinstance(better, bool):
        return f"best near {better:g}"
    return ""


# -- reference rows -------------------------------------------------------------------------------

RAW_NAMES = ("raw", "unharmonized", "none")


def is_truth(name) -> bool:
    return str(name).lower().startswith("truth")


def is_raw(name) -> bool:
    return str(name).lower() in RAW_NAMES


def truth_row(table: pd.DataFrame) -> str | None:
    """The site-free truth row (``truth (site-free)`` of the benchmark), else any row named truth..."""
    names = [m for m in table.index if is_truth(m)]
    site_free = [m for m in names if "site-free" in str(m).lower()]
    return (site_free or names or [None])[0]


def raw_row(table: pd.DataFrame) -> str | None:
    return next((m for m in table.index if is_raw(m)), None)


def method_rows(table: pd.DataFrame) -> list:
    """The harmonized methods: every row but raw and the truth rows (and rows that failed)."""
    rows = []
    for m in table.index:
        if is_truth(m) or is_raw(m):
            continue
        if "error" in table.columns and isinstance(table.at[m, "error"], str) and table.at[m, "error"].strip():
            continue
        rows.append(m)
    return rows


# -- verdicts -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """One criterion of one method: ``level`` (good, warn, bad, none), a short ``headline`` and the
    ``detail`` sentence with the numbers (before -> after)."""

    criterion: str
    level: str
    headline: str
    detail: str

    @property
    def colour(self) -> str:
        return COLOURS[self.level][1]


def _value(table: pd.DataFrame, row, column: str) -> float:
    if row is None or column not in table.columns:
        return math.nan
    try:
        return float(table.at[row, column])
    except (TypeError, ValueError):
        return math.nan


def _ok(*values) -> bool:
    return all(np.isfinite(v) for v in values)


def site_verdict(table: pd.DataFrame, method) -> Verdict:
    raw = raw_row(table)
    auc, auc_raw = _value(table, method, "site_auroc"), _value(table, raw, "site_auroc")
    if _ok(auc):
        numbers = f"site AUROC {auc_raw:.2f} \u2192 {auc:.2f}" if _ok(auc_raw) else f"site AUROC {auc:.2f}"
        gap = auc - AUROC_CHANCE
        if abs(gap) <= AUROC_NO_SIGNAL:
            return Verdict(SITE, GOOD, "removed", f"{numbers}: scanners can no longer be told apart")
        if auc < AUROC_OVER:
            return Verdict(SITE, BAD, "over-corrected", f"{numbers}: far below chance, the site is still encoded "
                                                        "(inverted): over-correction")
        if auc < AUROC_CHANCE:
            return Verdict(SITE, WARN, "mildly over-corrected", f"{numbers}: below chance, mild over-correction")
        if gap <= AUROC_RESIDUAL:
            return Verdict(SITE, WARN, "residual", f"{numbers}: some site signal remains")
        return Verdict(SITE, BAD, "still present", f"{numbers}: scanners can still be told apart")
    share, share_raw = _value(table, method, "frac_sig_anova"), _value(table, raw, "frac_sig_anova")
    if _ok(share):
        numbers = (f"site effect in {share_raw:.0%} \u2192 {share:.0%} of the map" if _ok(share_raw)
                   else f"site effect in {share:.0%} of the map")
        if share <= SITE_SHARE_GOOD:
            return Verdict(SITE, GOOD, "removed", f"{numbers}: no more than chance findings")
        if share <= SITE_SHARE_WARN:
            return Verdict(SITE, WARN, "residual", f"{numbers}: some site effect remains")
        return Verdict(SITE, BAD, "still present", f"{numbers}: the site effect is still widespread")
    return Verdict(SITE, NONE, "not measured", "no site metric in this table")


def biology_verdict(table: pd.DataFrame, method) -> Verdict:
    truth, raw = truth_row(table), raw_row(table)
    r2, r2_truth, r2_raw = (_value(table, row, "age_r2") for row in (method, truth, raw))
    ratio = _value(table, method, "age_r2_ratio")
    if not _ok(ratio) and _ok(r2, r2_truth) and r2_truth > 0:
        ratio = r2 / r2_truth
    if _ok(ratio):
        off = ratio - 1.0
        text = f"age effect {ratio:.0%} of the truth's"
        if abs(off) <= BIOLOGY_GOOD:
            return Verdict(BIOLOGY, GOOD, "kept", f"{text}: kept")
        word = "inflated" if off > 0 else "partly lost"
        if abs(off) <= BIOLOGY_WARN:
            return Verdict(BIOLOGY, WARN, word, f"{text}: {word}")
        word = "inflated" if off > 0 else "lost"
        return Verdict(BIOLOGY, BAD, word, f"{text}: {word}")
    for column, label in (("age_r2", "age R²"), ("age_pred_r2", "age prediction R²")):
        value, before = _value(table, method, column), _value(table, raw, column)
        if _ok(value, before) and before > 0:
            kept = value / before
            text = f"{label} {before:.2f} \u2192 {value:.2f}"
            if kept >= RAW_BIOLOGY_GOOD:
                extra = " (up: the site's variance no longer dilutes it)" if kept > 1 + BIOLOGY_GOOD else ""
                return Verdict(BIOLOGY, GOOD, "kept", f"{text}: kept{extra}")
            if kept >= RAW_BIOLOGY_WARN:
                return Verdict(BIOLOGY, WARN, "partly lost", f"{text}: {kept:.0%} of raw's, partly lost")
            return Verdict(BIOLOGY, BAD, "lost", f"{text}: {kept:.0%} of raw's, lost")
    return Verdict(BIOLOGY, NONE, "not measured", "no age effect measured (no age column)")


def _travel_columns(table: pd.DataFrame) -> tuple[str | None, str | None]:
    mae = next((c for c in ("tr_mae_target_cortex", "tr_mae_target") if c in table.columns
                and table[c].notna().any()), None)
    ssim = "tr_ssim_target" if "tr_ssim_target" in table.columns and table["tr_ssim_target"].notna().any() else None
    return mae, ssim


def travel_verdict(table: pd.DataFrame, method) -> Verdict | None:
    """None when the data hold no traveling subjects."""
    mae_col, ssim_col = _travel_columns(table)
    if mae_col is None:
        return None
    raw = raw_row(table)
    mae, mae_raw = _value(table, method, mae_col), _value(table, raw, mae_col)
    if not _ok(mae):
        return Verdict(TRAVEL, NONE, "not measured", "no traveling-subject result for this method")
    parts = [f"error to the target scanner {mae_raw:.2f} \u2192 {mae:.2f} mm" if _ok(mae_raw)
             else f"error to the target scanner {mae:.2f} mm"]
    if ssim_col is not None:
        ssim, ssim_raw = _value(table, method, ssim_col), _value(table, raw, ssim_col)
        if _ok(ssim, ssim_raw):
            parts.append(f"SSIM {ssim_raw:.2f} \u2192 {ssim:.2f}")
    text = ", ".join(parts)
    if not _ok(mae_raw) or mae_raw <= 0:
        return Verdict(TRAVEL, NONE, "no reference", f"{text} (no raw row to compare with)")
    reduction = 1.0 - mae / mae_raw
    change = f"{-reduction:+.0%}".replace("-", "\u2212")
    if reduction >= TRAVEL_GOOD:
        return Verdict(TRAVEL, GOOD, "agree", f"{text} ({change}): the two scanners now agree")
    if reduction >= TRAVEL_WARN:
        return Verdict(TRAVEL, WARN, "closer", f"{text} ({change}): closer, not yet alike")
    return Verdict(TRAVEL, BAD, "still differ", f"{text} ({change}): the scanners still differ")


def method_verdicts(table: pd.DataFrame) -> dict:
    """``{method: {criterion: Verdict}}`` for every harmonized method of a metrics table (rows = methods)."""
    out = {}
    for method in method_rows(table):
        verdicts = {SITE: site_verdict(table, method), BIOLOGY: biology_verdict(table, method)}
        travel = travel_verdict(table, method)
        if travel is not None:
            verdicts[TRAVEL] = travel
        out[method] = verdicts
    return out


def raw_summary(table: pd.DataFrame) -> dict[str, str]:
    """What raw looks like on each criterion (the "before" of every verdict), as plain text."""
    raw = raw_row(table)
    out = {}
    if raw is None:
        return out
    auc = _value(table, raw, "site_auroc")
    share = _value(table, raw, "frac_sig_anova")
    if _ok(auc):
        told = "scanners told apart" if abs(auc - AUROC_CHANCE) > AUROC_RESIDUAL else "little site signal"
        out[SITE] = f"site AUROC {auc:.2f}: {told}"
    elif _ok(share):
        out[SITE] = f"site effect in {share:.0%} of the map"
    truth = truth_row(table)
    r2, r2_truth = _value(table, raw, "age_r2"), _value(table, truth, "age_r2")
    if _ok(r2, r2_truth) and r2_truth > 0:
        out[BIOLOGY] = f"age effect {r2 / r2_truth:.0%} of the truth's"
    elif _ok(r2):
        out[BIOLOGY] = f"age R² {r2:.2f}"
    mae_col, _ = _travel_columns(table)
    if mae_col is not None and _ok(_value(table, raw, mae_col)):
        out[TRAVEL] = f"error to the target scanner {_value(table, raw, mae_col):.2f} mm"
    return out


def best_methods(table: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``{criterion: (method, why)}``: the best harmonized method on each criterion (at least two methods
    needed for "best" to mean something, but one is reported too)."""
    methods = method_rows(table)
    out: dict[str, tuple[str, str]] = {}
    if not methods:
        return out

    def pick(score, why):
        scores = {m: score(m) for m in methods}
        scores = {m: s for m, s in scores.items() if np.isfinite(s)}
        if scores:
            best = min(scores, key=scores.get)
            return best, why(best)
        return None

    if "site_auroc" in table.columns:
        found = pick(lambda m: abs(_value(table, m, "site_auroc") - AUROC_CHANCE),
                     lambda m: f"site AUROC {_value(table, m, 'site_auroc'):.2f}, closest to 0.5")
    else:
        found = pick(lambda m: _value(table, m, "frac_sig_anova"),
                     lambda m: f"site effect in {_value(table, m, 'frac_sig_anova'):.0%} of the map")
    if found:
        out[SITE] = found
    truth = truth_row(table)
    r2_truth = _value(table, truth, "age_r2")
    if _ok(r2_truth) and r2_truth > 0 and "age_r2" in table.columns:
        found = pick(lambda m: abs(_value(table, m, "age_r2") / r2_truth - 1),
                     lambda m: f"age effect {_value(table, m, 'age_r2') / r2_truth:.0%} of the truth's")
    elif "age_r2" in table.columns:
        found = pick(lambda m: -_value(table, m, "age_r2"), lambda m: f"age R² {_value(table, m, 'age_r2'):.2f}")
    else:
        found = None
    if found:
        out[BIOLOGY] = found
    mae_col, _ = _travel_columns(table)
    if mae_col is not None:
        found = pick(lambda m: _value(table, m, mae_col),
                     lambda m: f"error to the target scanner {_value(table, m, mae_col):.2f} mm")
        if found:
            out[TRAVEL] = found
    return out
