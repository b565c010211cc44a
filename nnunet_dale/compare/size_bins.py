"""Dice by lesion size: each test case's foreground share of the image, binned, and the cases a method collapses on.

A case's lesion share is |R| / N: its reference foreground voxels (over all evaluated foreground labels) over its
voxels. Per bin of shares and per method: the number of cases, the mean over the bin's cases of each case's
foreground Dice (averaged over the method's runs), and the collapses: cases with a non-empty reference whose Dice is
below `floor` (0.3), counted per run and given as the mean over runs. Empty references form their own bin and never
count as collapses. This is the size-shift check of docs/results.md: a method that learnt "a lesion is a small blob"
loses on the large-share bins and collapses there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunet_dale.compare.stats import load_run

__all__ = ["COLLAPSE_DICE", "SIZE_EDGES", "case_shares", "format_size_table", "lesion_share", "size_breakdown"]

SIZE_EDGES = (0.0, 0.05, 0.15, 0.30, 0.50, 1.0)  # bin edges of the lesion share; a bin is (lo, hi]
COLLAPSE_DICE = 0.3  # a non-empty case below this Dice counts as a collapse


def _foreground(record: Mapping) -> dict[str, dict]:
    return {k: v for k, v in record["metrics"].items() if k != "0" and isinstance(v, Mapping)}


def lesion_share(record: Mapping) -> float:
    """|R| / N of one evaluated case (`n_ref` summed over the foreground labels, over `n_voxels`)."""
    n_voxels = record.get("n_voxels")
    if not n_voxels:
        raise ValueError(
            f"case {record.get('reference_file')!r} has no voxel count (n_voxels): re-run `nnunet-dale evaluate` "
            "(summaries written before version 0.3 lack it)"
        )
    return sum(float(m.get("n_ref", 0)) for m in _foreground(record).values()) / float(n_voxels)


def _case_dice(record: Mapping) -> float:
    values = [float(m["Dice"]) for m in _foreground(record).values() if m.get("Dice") is not None]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def case_shares(folder: Path) -> dict[str, float]:
    """Lesion share of every case of an evaluation folder."""
    return {case: lesion_share(record) for case, record in load_run(folder)["cases"].items()}


def _bin_labels(edges: Sequence[float]) -> list[str]:
    return ["empty"] + [f"{100 * lo:g}–{100 * hi:g} %" for lo, hi in zip(edges[:-1], edges[1:])]


def _bin_of(share: float, edges: Sequence[float]) -> int:
    if share <= 0:
        return 0
    for i, hi in enumerate(edges[1:], start=1):
        if share <= hi:
            return i
    return len(edges) - 1


def size_breakdown(
    runs: Mapping[str, Sequence[Path]], edges: Sequence[float] = SIZE_EDGES, floor: float = COLLAPSE_DICE
) -> dict:
    """Per method (its evaluation folders, one per run) and size bin: cases, mean Dice and collapses per run.

    All methods must hold the same cases (the same test set); the shares come from the first method's first run.
    Returns {"bins": [labels], "counts": [n per bin], "methods": {method: {"dice": [...], "collapses": [...],
    "collapses_total": float}}}; a bin without cases has NaN Dice.
    """
    if not runs or any(not folders for folders in runs.values()):
        raise ValueError("size_breakdown needs at least one evaluation folder per method")
    if list(edges) != sorted(edges) or edges[0] != 0 or edges[-1] < 1:
        raise ValueError(f"size bin edges must rise from 0 to at least 1, got {list(edges)}")
    loaded = {m: [load_run(f)["cases"] for f in folders] for m, folders in runs.items()}
    reference = next(iter(loaded.values()))[0]
    cases = sorted(reference)
    for method, method_runs in loaded.items():
        for run in method_runs:
            if sorted(run) != cases:
                raise ValueError(f"{method}: a run's cases differ from the others' (not the same test set)")
    shares = {c: lesion_share(reference[c]) for c in cases}
    bins = {c: _bin_of(shares[c], edges) for c in cases}
    labels = _bin_labels(edges)
    counts = [sum(1 for c in cases if bins[c] == b) for b in range(len(labels))]
    methods = {}
    for method, method_runs in loaded.items():
        dice = np.array([[_case_dice(run[c]) for c in cases] for run in method_runs])  # (runs, cases)
        with warnings.catch_warnings():  # a case whose Dice is NaN in every run stays NaN, without a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            per_case = np.nanmean(dice, axis=0)
        collapsed = (dice < floor) & np.array([bins[c] > 0 for c in cases])[None, :]
        method_dice, method_collapses = [], []
        for b in range(len(labels)):
            in_bin = np.array([bins[c] == b for c in cases])
            finite = in_bin & ~np.isnan(per_case)
            method_dice.append(float(per_case[finite].mean()) if finite.any() else math.nan)
            method_collapses.append(float(collapsed[:, in_bin].sum(1).mean()) if in_bin.any() else 0.0)
        methods[method] = {
            "dice": method_dice,
            "collapses": method_collapses,
            "collapses_total": float(collapsed.sum(1).mean()),
            "collapses_per_run": [int(n) for n in collapsed.sum(1)],
        }
    return {"bins": labels, "counts": counts, "floor": floor, "methods": methods}


def format_size_table(breakdown: Mapping) -> str:
    """Markdown: one row per size bin with cases, then per method its mean Dice (collapses per run)."""
    methods = list(breakdown["methods"])
    header = "| lesion share | cases | " + " | ".join(f"`{m}` Dice (cases < {breakdown['floor']:g})" for m in methods)
    lines = [header + " |", "|" + " --- |" * (2 + len(methods))]
    for b, (label, n) in enumerate(zip(breakdown["bins"], breakdown["counts"])):
        if n == 0:
            continue
        cells = []
        for m in methods:
            entry = breakdown["methods"][m]
            cells.append(f"{entry['dice'][b]:.3f} ({entry['collapses'][b]:g})")
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    totals = []
    for m in methods:
        per_run = breakdown["methods"][m]["collapses_per_run"]
        totals.append(f"{breakdown['methods'][m]['collapses_total']:g} (runs: {', '.join(map(str, per_run))})")
    lines.append(
        f"| all, cases < {breakdown['floor']:g} per run | {sum(breakdown['counts'])} | " + " | ".join(totals) + " |"
    )
    return "\n".join(lines)
