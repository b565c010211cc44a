"""Comparison statistics: evaluation summaries loaded and matched by case, per-metric statistics, paired tests and
the markdown table.

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

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from nnunet_dale.files import folder_problem, short_repr

__all__ = [
    "DEFAULT_METRICS",
    "KNOWN_ENDINGS",
    "LOWER_IS_BETTER",
    "as_float",
    "case_name",
    "check_case_sets",
    "describe",
    "format_p",
    "format_table",
    "load_run",
    "method_statistics",
    "nanmean",
    "paired_test",
    "relative_change",
    "select_labels",
]

DEFAULT_METRICS = ("Dice", "IoU", "HD95", "ASD", "Dice_fuzzy")
LOWER_IS_BETTER = ("HD95", "ASD")
KNOWN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl", ".png", ".bmp", ".tiff", ".tif")


# --------------------------------------------------------------------------------------------------------- loading
def case_name(path: str | os.PathLike) -> str:
    """File base name without its segmentation ending (.nii.gz, .png, ...; else the last suffix)."""
    name = Path(str(path)).name
    for ending in KNOWN_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def _summary_path(folder: Path) -> Path:
    folder = Path(folder)
    if folder.is_file() and folder.name.endswith(".json"):
        return folder
    path = folder / "summary.json"
    if not path.is_file():
        what = folder_problem(folder) or "has no summary.json"
        raise FileNotFoundError(f"evaluation folder {folder} {what} (run `nnunet-dale evaluate` on it first)")
    return path


def load_run(folder: Path) -> dict:
    """One evaluation folder: {"folder", "summary_path", "cases": {case: {"metrics", "prediction_file", ...}}}."""
    path = _summary_path(folder)
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    per_case = summary.get("metric_per_case") if isinstance(summary, dict) else None
    if not isinstance(per_case, list) or not per_case:
        raise ValueError(f"{path} has no 'metric_per_case' list: not an evaluation summary")
    cases: dict[str, dict] = {}
    for i, record in enumerate(per_case):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: metric_per_case[{i}] is {short_repr(record)}, not an object with metrics")
        source = record.get("reference_file") or record.get("prediction_file")
        if not source or not isinstance(record.get("metrics"), dict):
            raise ValueError(f"{path}: metric_per_case[{i}] lacks reference_file/prediction_file or metrics")
        _check_metric_values(path, i, record["metrics"])
        name = case_name(source)
        if name in cases:
            raise ValueError(f"{path}: case {name!r} appears twice in metric_per_case")
        cases[name] = record
    return {"folder": Path(folder), "summary_path": path, "cases": cases}


def _check_metric_values(path: Path, index: int, metrics: dict) -> None:
    """Every label's metrics are an object of numbers, null (NaN) or NaN; anything else is a ValueError naming the
    file, case and metric, not a value silently counted as NaN."""
    for label, values in metrics.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: metric_per_case[{index}] label {label}: {short_repr(values)} is not an object")
        for metric, value in values.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                where = f"{path}: metric_per_case[{index}] label {label} {metric}"
                raise ValueError(f"{where} is {short_repr(value)}: expected a number or null (NaN)")


def _names(items, limit: int = 10) -> str:
    items = sorted(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_case_sets(loaded: dict[str, list[dict]]) -> list[str]:
    every = set().union(*(run["cases"] for runs in loaded.values() for run in runs))
    problems = []
    for method, runs in loaded.items():
        for run in runs:
            missing = every - set(run["cases"])
            if missing:
                problems.append(f"{method} ({run['summary_path']}) lacks {len(missing)}: {_names(missing)}")
    if problems:
        raise ValueError(
            "the methods were evaluated on different case sets (cases are matched by file base name); "
            + "; ".join(problems)
        )
    return sorted(every)


def as_float(x) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def select_labels(loaded: dict[str, list[dict]], label: str | int | None) -> list[str]:
    runs = [run for rs in loaded.values() for run in rs]
    common = None
    for run in runs:
        for record in run["cases"].values():
            keys = set(record["metrics"])
            common = keys if common is None else common & keys
    common = {k for k in (common or set()) if k not in ("0", "background")}
    if label is not None:
        label = str(label)
        if label not in common:
            raise ValueError(f"label {label!r} is not evaluated in every summary; common labels: {_names(common)}")
        return [label]
    if not common:
        raise ValueError("the summaries share no foreground label")

    def key(k: str):
        return (0, int(k), k) if k.lstrip("-").isdigit() else (1, 0, k)

    return sorted(common, key=key)


# ------------------------------------------------------------------------------------------------------ statistics
def nanmean(values: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def describe(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else math.nan,
        "sd": float(finite.std(ddof=1)) if n >= 2 else math.nan,
        "n": n,
        "n_nan": int(values.size - n),
    }


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided paired t-test of b vs a over the pairs where both are finite."""
    from scipy.stats import ttest_rel

    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    n = int(both.sum())
    out = {"p": math.nan, "t": math.nan, "n": n, "mean_difference": float((b - a).mean()) if n else math.nan}
    if n < 2:
        out["note"] = f"n/a (n={n})"
        return out
    diff = b - a
    if np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):
        out["note"] = "n/a (identical differences)"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_rel(b, a)
    out["p"], out["t"] = float(res.pvalue), float(res.statistic)
    return out


def relative_change(method_mean: float, baseline_mean: float) -> float:
    if not (math.isfinite(method_mean) and math.isfinite(baseline_mean)) or baseline_mean == 0:
        return math.nan
    return (method_mean - baseline_mean) / abs(baseline_mean)


def method_statistics(loaded, cases, labels, metrics, baseline) -> tuple[dict, dict, dict]:
    """(per_case pooled values, per-method stats, comparisons vs the baseline)."""
    per_case: dict = {}
    stats: dict = {}
    comparisons: dict = {}
    for label in labels:
        per_case[label], stats[label], comparisons[label] = {}, {}, {}
        raw: dict[str, dict[str, np.ndarray]] = {}
        for method, runs in loaded.items():
            raw[method] = {}
            per_case[label][method], stats[label][method] = {}, {}
            for metric in metrics:
                values = np.array(
                    [[as_float(run["cases"][c]["metrics"][label].get(metric)) for c in cases] for run in runs],
                    dtype=np.float64,
                )  # (runs, cases)
                raw[method][metric] = values
                pooled = nanmean(values, axis=0)
                per_case[label][method][metric] = pooled.tolist()
                entry = describe(pooled)
                entry["run_means"] = [float(v) for v in nanmean(values, axis=1)]
                entry["n_runs"] = len(runs)
                stats[label][method][metric] = entry
        for method in loaded:
            if method == baseline:
                continue
            comparisons[label][method] = {}
            for metric in metrics:
                b_stats, m_stats = stats[label][baseline][metric], stats[label][method][metric]
                cases_test = paired_test(
                    np.asarray(per_case[label][baseline][metric]), np.asarray(per_case[label][method][metric])
                )
                entry = {
                    "rel_change": relative_change(m_stats["mean"], b_stats["mean"]),
                    "lower_is_better": metric in LOWER_IS_BETTER,
                    "p_cases": cases_test["p"],
                    "t_cases": cases_test["t"],
                    "n_cases": cases_test["n"],
                    "mean_paired_difference": cases_test["mean_difference"],
                }
                if "note" in cases_test:
                    entry["cases_note"] = cases_test["note"]
                n_runs = min(b_stats["n_runs"], m_stats["n_runs"])
                if n_runs >= 2:
                    runs_test = paired_test(
                        np.asarray(b_stats["run_means"][:n_runs]), np.asarray(m_stats["run_means"][:n_runs])
                    )
                    entry.update(p_runs=runs_test["p"], t_runs=runs_test["t"], n_runs=runs_test["n"])
                    if "note" in runs_test:
                        entry["runs_note"] = runs_test["note"]
                else:
                    entry.update(p_runs=math.nan, t_runs=math.nan, n_runs=n_runs, runs_note="n/a (1 run)")
                comparisons[label][method][metric] = entry
    return per_case, stats, comparisons


# ----------------------------------------------------------------------------------------------------------- table
def _num(x) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 100:
        return f"{x:.1f}"
    if a >= 10:
        return f"{x:.2f}"
    return f"{x:.3f}"


def format_p(p) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _mean_sd(entry: dict, n_cases: int) -> str:
    text = f"{_num(entry['mean'])} ± {_num(entry['sd'])}"
    if entry["n"] != n_cases:
        text += f" (n={entry['n']})"
    return text


def format_table(comparison: dict) -> str:
    """The comparison as markdown: one table per compared method and class (metric | baseline | method | ...)."""
    baseline = comparison["baseline"]
    n_cases = len(comparison["cases"])
    runs = ", ".join(f"{m} {info['n_runs']}" for m, info in comparison["methods"].items())
    lines = [
        f"# Comparison against {baseline}",
        "",
        f"{n_cases} cases; runs per method: {runs}. A method's per-case value is the mean over its runs.",
    ]
    if comparison.get("skipped_metrics"):
        skipped = ", ".join(f"{k} ({v})" for k, v in comparison["skipped_metrics"].items())
        lines += ["", f"Not compared: {skipped}."]
    for label in comparison["labels"]:
        for method, by_metric in comparison["comparisons"][label].items():
            lines += [
                "",
                f"## {method} vs {baseline} (label {label})",
                "",
                f"| metric | {baseline} mean ± sd | {method} mean ± sd | rel. change | p (cases) | p (runs) | n |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for metric, c in by_metric.items():
                b = comparison["stats"][label][baseline][metric]
                m = comparison["stats"][label][method][metric]
                name = f"{metric} ↓" if c["lower_is_better"] else metric
                rel = "n/a" if c["rel_change"] is None else f"{100 * c['rel_change']:+.1f}%"
                p_cases = c.get("cases_note") or format_p(c["p_cases"])
                if c.get("runs_note"):
                    p_runs = c["runs_note"]
                else:
                    p_runs = f"{format_p(c['p_runs'])} ({c['n_runs']} runs)"
                cells = [name, _mean_sd(b, n_cases), _mean_sd(m, n_cases), rel, p_cases, p_runs, str(c["n_cases"])]
                lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "↓ lower is better (HD95, ASD): a negative relative change is an improvement; for the other metrics higher is "
        "better. rel. change = (method − baseline) / |baseline| of the means. mean ± sd over the cases with a finite "
        "value (n shown when some are NaN). p (cases): two-sided paired t-test (scipy.stats.ttest_rel) over the n "
        "cases where both values are finite; p (runs): the same over run means, paired by run index.",
    ]
    figure = comparison.get("figure")
    if figure:
        lines += ["", f"Figure: {figure['file']} (examples: {', '.join(figure['examples']) or 'none'})."]
        lines += [f"- {note}" for note in figure.get("notes", [])]
    return "\n".join(lines) + "\n"
