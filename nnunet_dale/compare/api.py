"""`compare(runs, out_dir)`: methods evaluated on the same cases compared, written to comparison.md/.json/.png."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_dale.compare.figure import FIGURE_COLUMNS, render_figure
from nnunet_dale.compare.stats import (
    DEFAULT_METRICS,
    LOWER_IS_BETTER,
    check_case_sets,
    format_table,
    load_run,
    method_statistics,
    select_labels,
)
from nnunet_dale.files import atomic_write, check_output_folder, json_safe

__all__ = ["compare"]


def compare(
    runs: Mapping[str, Sequence[Path]],
    out_dir: Path,
    baseline: str | None = None,
    images_dir: Path | None = None,
    omega_dir: Path | None = None,
    num_examples: int = 4,
    metrics: Sequence[str] = DEFAULT_METRICS,
    label: str | None = None,
    split_patch: Sequence[int] | None = None,
) -> dict:
    """Compare methods evaluated on the same cases; write comparison.md/.json/.png to out_dir; return the comparison.

    `runs` maps a method name to its evaluation folders (each with summary.json; several = several runs). The baseline
    is the first method unless named. Metrics absent from some summary are skipped (listed in "skipped_metrics").
    The figure's fuzzy map splits with `split_patch` (a trainer's split patch, e.g. the trained model's
    `split_patch_size`), or, without it, with the evaluation's fuzzy-region patches; its title says which.
    Raises FileNotFoundError for a folder without summary.json and ValueError when the methods' case sets differ.
    The returned dict equals json.load of comparison.json (NaN as None).
    """
    if not isinstance(runs, Mapping) or len(runs) < 2:
        raise ValueError("compare needs at least two methods (name -> evaluation folders)")
    check_output_folder(Path(out_dir), "output folder (-o)")
    loaded: dict[str, list[dict]] = {}
    for method, folders in runs.items():
        if not str(method) or str(method) in FIGURE_COLUMNS or "|" in str(method):
            raise ValueError(f"invalid method name {method!r}: empty, containing '|', or one of {FIGURE_COLUMNS}")
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        if not folders:
            raise ValueError(f"method {method!r} has no evaluation folder")
        loaded[str(method)] = [load_run(Path(f)) for f in folders]
    baseline = next(iter(loaded)) if baseline is None else str(baseline)
    if baseline not in loaded:
        raise ValueError(f"baseline {baseline!r} is not one of the methods {list(loaded)}")
    if num_examples < 0:
        raise ValueError("num_examples must be >= 0")
    cases = check_case_sets(loaded)
    labels = select_labels(loaded, label)

    compared, skipped = [], {}
    for metric in dict.fromkeys(metrics):
        lacking = [
            str(run["summary_path"])
            for rs in loaded.values()
            for run in rs
            if any(metric not in run["cases"][c]["metrics"][lb] for c in cases for lb in labels)
        ]
        if lacking:
            skipped[metric] = f"missing in {lacking[0]}" + (f" and {len(lacking) - 1} more" if len(lacking) > 1 else "")
        else:
            compared.append(metric)
    if not compared:
        raise ValueError(f"none of the metrics {list(metrics)} is in every summary: {skipped}")

    per_case, stats, comparisons = method_statistics(loaded, cases, labels, compared, baseline)
    # baseline first in every listing
    order = [baseline, *[m for m in loaded if m != baseline]]
    loaded = {m: loaded[m] for m in order}
    comparison = {
        "baseline": baseline,
        "methods": {m: {"n_runs": len(loaded[m]), "folders": [str(r["folder"]) for r in loaded[m]]} for m in loaded},
        "cases": cases,
        "labels": labels,
        "metrics": compared,
        "skipped_metrics": skipped,
        "lower_is_better": [m for m in compared if m in LOWER_IS_BETTER],
        "stats": {lb: {m: stats[lb][m] for m in order} for lb in labels},
        "comparisons": comparisons,
        "per_case": {lb: {m: per_case[lb][m] for m in order} for lb in labels},
    }
    comparison = json_safe(comparison)

    out_dir = Path(out_dir)
    png, info = render_figure(comparison, loaded, images_dir, omega_dir, num_examples, split_patch)
    comparison["figure"] = {"file": "comparison.png", **info}
    markdown = format_table(comparison)

    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(comparison, indent=2, allow_nan=False) + "\n"
    atomic_write(out_dir / "comparison.png", lambda f: f.write(png), binary=True)
    atomic_write(out_dir / "comparison.json", lambda f: f.write(text))
    atomic_write(out_dir / "comparison.md", lambda f: f.write(markdown))
    return json.loads(text)
