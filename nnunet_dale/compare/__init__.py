"""Compare evaluated methods (e.g. default nnU-Net vs DALE): per-metric statistics, paired tests, a figure.

Modules: `stats` (loading, statistics, the table), `figure` (the PNG), `api` (`compare`: the files).

Input: for each method, one or more folders written by `evaluation.evaluate_folders` (or nnU-Net's own evaluation:
any folder holding a `summary.json` with `metric_per_case`); several folders of one method are several runs (seeds,
folds trained on the same split, ...). See docs/usage-compare.md.

Statistics, per foreground class and metric, with a method's per-case value = the mean over its runs of the finite
values (NaN when NaN in every run):

* mean ± sd over the cases with a finite value (sd with ddof=1), and how many cases that is;
* relative change of a method vs the baseline: (mean_method - mean_baseline) / |mean_baseline| (for HD95 and ASD
  lower is better, so a negative change is an improvement);
* p (cases): two-sided paired t-test (scipy.stats.ttest_rel) over the cases where both values are finite, with n;
* p (runs): when both methods have >= 2 runs, a paired t-test over run means (each run's mean over its finite cases),
  paired by run index (the first min(#runs) runs); else "n/a (1 run)".
"""

from nnunet_dale.compare.api import compare
from nnunet_dale.compare.figure import FIGURE_COLUMNS, render_figure
from nnunet_dale.compare.stats import (
    DEFAULT_METRICS,
    KNOWN_ENDINGS,
    LOWER_IS_BETTER,
    case_name,
    format_p,
    format_table,
    load_run,
)

__all__ = [
    "DEFAULT_METRICS",
    "FIGURE_COLUMNS",
    "KNOWN_ENDINGS",
    "LOWER_IS_BETTER",
    "case_name",
    "compare",
    "format_p",
    "format_table",
    "load_run",
    "render_figure",
]
