"""Statistics over seeds: the one implementation behind sweep comparisons, `divrun-compare` and the tables.

Everything comes from scipy: the mean's confidence interval is Student's t interval (`scipy.stats.t`), a
paired difference uses `ttest_rel` (its interval and p-value) and `wilcoxon`, unpaired groups Welch's
`ttest_ind(equal_var=False)`. Holm's step-down correction is the one formula scipy lacks
(`false_discovery_control` is Benjamini-Hochberg, which controls a different error rate); it is written out
below and tested on hand-computed values.

    describe(values)                 -> Summary(n, mean, std, ci_low, ci_high, median, min, max)
    describe_groups(frame, by, cols) -> the same per group and column, as rows of a DataFrame (one pass)
    Summary.from_moments(m, s, n)    -> the same from a mean, a sample std and n (a paper's numbers, a table)
    confidence_interval(m, s, n)     -> (low, high), numpy-broadcast (curves' bands use it per epoch)
    difference(treatment, baseline, paired) -> Difference(kind, n, mean, ci, p_t, p_wilcoxon, note)
    holm(p_values)                   -> Holm-adjusted p-values, same order
    power_law(xs, ys)                -> (k, stderr) of y ~ x^k: linregress of log y on log x (lr* against batch)

Fewer than MIN_SEEDS_TO_TEST values (pairs, or per group for Welch) are "too few to test": the difference and
its interval are given where they exist, the p-values are not.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
MIN_SEEDS_TO_TEST = 3
EXACT_WILCOXON_MAX, PERMUTATIONS = 13, 9999  # scipy.stats.wilcoxon's limits for its exact permutation test


def finite_or_none(value) -> float | None:
    """A plain float, or None for a value that does not exist (NaN, infinite, None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def confidence_interval(mean, std, n, level: float = LEVEL):
    """Student's t interval of a mean from the sample std and n (arrays broadcast); NaN where n < 2."""
    mean, std, n = np.asarray(mean, float), np.asarray(std, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + level / 2, np.where(n > 1, n - 1, np.nan)) * std / np.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Summary:
    """One group's values of one metric. std is the sample std (n - 1); std and the interval are None for
    n = 1; median, min and max are None when only the moments are known (from_moments)."""
    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    median: float | None = None
    min: float | None = None
    max: float | None = None

    @classmethod
    def from_moments(cls, mean: float, std: float | None, n: int, **extremes) -> "Summary":
        low, high = confidence_interval(mean, math.nan if std is None else std, n)
        return cls(n, float(mean), finite_or_none(std), finite_or_none(low), finite_or_none(high), **extremes)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.2f}" + (f" +- {self.std:.2f}" if self.std is not None else "") + f" (n={self.n})"


SUMMARY_COLUMNS = ["n", "mean", "std", "ci_low", "ci_high", "median", "min", "max"]


def describe_groups(frame: pd.DataFrame, by: str, columns: list[str]) -> pd.DataFrame:
    """The Summary of each (group, column) over its finite values, as rows: `by`, metric, n, mean, std (n - 1),
    ci_low, ci_high, median, min, max. A group without a finite value of a column has no row for it."""
    long = frame[[by, *columns]].melt(id_vars=by, var_name="metric", value_name="_value")
    long["_value"] = pd.to_numeric(long["_value"], errors="coerce")
    long = long[np.isfinite(long["_value"])]
    out = long.groupby([by, "metric"], sort=False)["_value"].agg(["count", "mean", "std", "median", "min", "max"])
    out = out.rename(columns={"count": "n"})
    out["ci_low"], out["ci_high"] = confidence_interval(out["mean"], out["std"], out["n"])
    return out.reset_index()[[by, "metric", *SUMMARY_COLUMNS]]


def describe(values) -> Summary | None:
    """n, mean, sample std, 95% CI of the mean, median, min and max of the finite values; None without any."""
    rows = describe_groups(pd.DataFrame({"group": 0, "value": np.asarray(values, float)}), "group", ["value"])
    if rows.empty:
        return None
    row = rows.iloc[0]
    return Summary(int(row["n"]), *(finite_or_none(row[c]) for c in SUMMARY_COLUMNS[1:]))


@dataclass(frozen=True)
class Difference:
    """treatment - baseline. kind: "paired" (by seed: the mean of the differences, ttest_rel and Wilcoxon's
    signed-rank test) or "welch" (the difference of the means, Welch's t-test). p_holm is filled in by
    `holm` across the groups compared with one baseline."""
    kind: str
    n: int  # pairs, or the smaller group for Welch
    mean: float
    ci_low: float | None
    ci_high: float | None
    p_t: float | None
    p_wilcoxon: float | None
    note: str = ""
    p_holm: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def difference(treatment, baseline, paired: bool) -> Difference | None:
    """treatment - baseline; `paired`: the arrays are aligned by seed. None when either side is empty."""
    treatment, baseline = np.asarray(treatment, float), np.asarray(baseline, float)
    if paired:
        keep = np.isfinite(treatment) & np.isfinite(baseline)
        treatment, baseline = treatment[keep], baseline[keep]
    else:
        treatment, baseline = treatment[np.isfinite(treatment)], baseline[np.isfinite(baseline)]
    if not len(treatment) or not len(baseline):
        return None
    n = len(treatment) if paired else min(len(treatment), len(baseline))
    mean = float(np.mean(treatment - baseline)) if paired else float(np.mean(treatment) - np.mean(baseline))
    kind = "paired" if paired else "welch"
    if n < 2:
        return Difference(kind, n, mean, None, None, None, None, f"too few seeds to test (n={n})")
    with warnings.catch_warnings():  # constant samples: scipy warns and returns NaN, which stays None here
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_rel(treatment, baseline) if paired else \
            stats.ttest_ind(treatment, baseline, equal_var=False)
        low, high = test.confidence_interval(LEVEL)
        p_t, p_w = finite_or_none(test.pvalue), (_wilcoxon(treatment, baseline) if paired else None)
    note = "" if n >= MIN_SEEDS_TO_TEST else f"too few seeds to test (n={n})"
    if note:
        p_t = p_w = None
    return Difference(kind, n, mean, finite_or_none(low), finite_or_none(high), p_t, p_w, note)


def _wilcoxon(treatment: np.ndarray, baseline: np.ndarray) -> float | None:
    """Wilcoxon's signed-rank p-value (two-sided, zero differences dropped); None where it is undefined
    (every difference zero). With ties or zeros among at most 13 pairs, scipy's `wilcoxon` runs the exact
    permutation test over the 2**n sign flips one flip at a time (half a second at n = 10); the same scipy
    `permutation_test` of the same statistic, vectorised over the flips, gives the identical p-value (tested)
    some 25x faster."""
    differences = treatment - baseline
    if np.all(differences == 0):
        return None
    magnitudes = np.abs(differences[differences != 0])
    tied = len(magnitudes) < len(differences) or len(np.unique(magnitudes)) < len(magnitudes)
    if not tied or len(differences) > EXACT_WILCOXON_MAX:
        return finite_or_none(stats.wilcoxon(treatment, baseline).pvalue)
    test = stats.permutation_test((differences,), signed_rank_sum, permutation_type="samples", vectorized=True,
                                  n_resamples=PERMUTATIONS, alternative="two-sided")
    return finite_or_none(test.pvalue)


def signed_rank_sum(differences: np.ndarray, axis: int = -1) -> np.ndarray:
    """Wilcoxon's r+: the sum of the ranks of |d| over the positive d, zeros dropped (scipy's statistic)."""
    differences = np.moveaxis(differences, axis, -1)
    ranks = stats.rankdata(np.where(differences == 0, np.nan, np.abs(differences)), axis=-1, nan_policy="omit")
    return np.nansum(np.where(differences > 0, ranks, 0.0), axis=-1)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment: the k-th smallest of m p-values becomes max over j <= k of
    min(1, (m - j + 1) p_(j)). None (no test) stays None and does not count in m."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[index] = running
    return adjusted


def power_law(xs, ys) -> tuple[float | None, float | None]:
    """The exponent k of y ~ x^k (the least-squares slope of log y on log x, `scipy.stats.linregress`) and its
    standard error; (None, None) with fewer than two distinct x, the error None with two points (no residual)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(np.unique(xs)) < 2:
        return None, None
    fit = stats.linregress(np.log(xs), np.log(ys))
    return float(fit.slope), float(fit.stderr) if len(xs) > 2 else None
