"""Compare evaluated methods (e.g. default nnU-Net vs DALE): per-metric statistics, paired tests, a figure.

Modules: `stats` (loading, statistics and the table; its docstring defines every statistic), `figure` (the PNG),
`api` (`compare`: the files). See docs/usage-compare.md.
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
