"""Expected best validation score as a function of the search budget (Dodge et al. 2019, "Show Your Work:
Improved Reporting of Experimental Results", EMNLP, Sec. 3).

With N trial scores v_1..v_N of one method and F their empirical CDF, the best of k trials drawn i.i.d. from
F has the distribution P(max <= v) = F(v)^k, so

    E[max_k] = sum_v v (F(v)^k - F(v-)^k)           (v over the distinct scores, F(v-) = P(V < v))

which for distinct sorted scores is sum_i v_(i) ((i/N)^k - ((i-1)/N)^k); its spread is
sqrt(E[max_k^2] - E[max_k]^2). For a metric to minimise the same holds for the minimum (the maximum of -v).
A curve that is still rising at k = N says the budget was too small to rank the methods.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def expected_max(scores, k: int, higher_is_better: bool = True) -> tuple[float, float]:
    """(mean, std) of the best of k i.i.d. draws from the empirical distribution of `scores`."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0 or k < 1:
        raise ValueError("expected_max needs at least one score and k >= 1")
    sign = 1.0 if higher_is_better else -1.0
    distinct, counts = np.unique(sign * values, return_counts=True)
    cdf = np.cumsum(counts) / values.size
    below = np.concatenate([[0.0], cdf[:-1]])
    weights = cdf ** k - below ** k  # P(best of k == v)
    mean = float(np.sum(weights * distinct))
    spread = float(np.sqrt(max(np.sum(weights * distinct ** 2) - mean ** 2, 0.0)))
    return sign * mean, spread


def curves(scores_by_method: dict[str, list[float]], higher_is_better: bool = True) -> pd.DataFrame:
    """One row per method and budget k = 1..N: the expected best score and its std."""
    rows = [{"method": method, "k": k, "n_trials": len(scores),
             **dict(zip(("expected_best", "std"), expected_max(scores, k, higher_is_better)))}
            for method, scores in scores_by_method.items() if scores for k in range(1, len(scores) + 1)]
    return pd.DataFrame(rows, columns=["method", "k", "n_trials", "expected_best", "std"])


def plot(table: pd.DataFrame, path: Path, metric: str) -> None:
    """Expected best score against the number of trials, one line per method, a band of one std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in table.groupby("method", sort=False):
        ax.plot(rows["k"], rows["expected_best"], marker="o", markersize=3, label=method)
        ax.fill_between(rows["k"], rows["expected_best"] - rows["std"], rows["expected_best"] + rows["std"], alpha=0.2)
    ax.set_xlabel("trials (k)")
    ax.set_ylabel(f"expected best {metric}")
    ax.set_title("Expected best over k trials (Dodge et al. 2019)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
