"""How well an audit's case ranking finds corrupted labels, on a dataset with known clean labels (the built-in
benchmark's cases.json, or labelsTr_clean/)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_dale.audit.settings import AuditError
from nnunet_dale.audit.summary import CASE_ROW, CASE_SCORE
from nnunet_dale.files import folder_problem, load_array
from nnunet_dale.metrics import dice

__all__ = [
    "audit_quality",
    "auroc",
    "case_corruption",
    "check_clean_labels",
    "clean_labels_folder",
    "read_case_scores",
]


def clean_labels_folder(audit_folder: str | os.PathLike) -> Path | None:
    """The raw dataset of an audit (nnUNet_raw/<dataset>, from audit.json) if it holds clean training labels."""
    try:
        dataset = json.loads((Path(audit_folder) / "audit.json").read_text())["dataset"]
    except (OSError, ValueError, KeyError):
        return None
    raw = os.environ.get("nnUNet_raw")
    folder = Path(raw) / dataset if raw else None
    return folder if folder is not None and (folder / "labelsTr_clean").is_dir() else None


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n+ n-), ties count half); NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def read_case_scores(audit_csv: str | os.PathLike, column: str = CASE_SCORE) -> dict[str, float]:
    """Per-case values of `column` from the case rows (region "all") of an audit.csv."""
    with open(audit_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["region"] == CASE_ROW]
    if not rows:
        raise AuditError(f"{audit_csv} has no case rows (region '{CASE_ROW}')")
    return {r["case"]: float(r[column]) for r in rows}


def check_clean_labels(raw_dataset_folder: str | os.PathLike) -> Path:
    """The raw dataset folder an audit is measured against (--raw): a folder with cases.json or labelsTr_clean/;
    checked before the audit runs."""
    folder = Path(raw_dataset_folder)
    if problem := folder_problem(folder):
        raise FileNotFoundError(f"raw dataset folder (--raw) {folder} {problem}")
    if not (folder / "cases.json").is_file() and not (folder / "labelsTr_clean").is_dir():
        raise FileNotFoundError(f"{folder} has neither cases.json nor labelsTr_clean/: the clean labels are unknown")
    return folder


def case_corruption(raw_dataset_folder: str | os.PathLike) -> dict[str, float]:
    """1 - Dice(noisy, clean) of every training case: from cases.json (the built-in benchmark) or by comparing
    labelsTr with labelsTr_clean."""
    folder = check_clean_labels(raw_dataset_folder)
    meta_file = folder / "cases.json"
    if meta_file.is_file():
        cases = json.loads(meta_file.read_text())["cases"]
        return {k: 1.0 - float(c["dice_noisy_clean"]) for k, c in cases.items() if "dice_noisy_clean" in c}
    clean_dir = folder / "labelsTr_clean"
    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    out = {}
    for clean_file in sorted(clean_dir.glob(f"*{ending}")):
        case = clean_file.name[: -len(ending)]
        noisy = load_array(folder / "labelsTr" / clean_file.name) > 0
        out[case] = 1.0 - dice(noisy, load_array(clean_file) > 0)
    return out


def audit_quality(
    audit_csv: str | os.PathLike,
    raw_dataset_folder: str | os.PathLike,
    columns: Sequence[str] = (CASE_SCORE, "score", "fuzzy_noisy_share", "prediction_disagreement"),
    top_share: float = 0.1,
) -> dict[str, Any]:
    """How well the audit's case ranking finds corrupted labels, given the clean ones.

    True corruption of a case = 1 - Dice(noisy label, clean label). For the case score ("evidence") and, for
    reference, the other case columns: AUROC against "corruption above the median", Spearman correlation with the
    corruption, and the precision of the top 10 % scored cases (k = ceil(10 % of n)) — the share of them among the k
    most corrupted cases (ties at the k-th corruption included) and the share above the median; `chance_*` are the
    expected precisions of a random ranking.
    """
    from scipy.stats import spearmanr

    corruption = case_corruption(raw_dataset_folder)
    first = read_case_scores(audit_csv, columns[0])
    cases = sorted(set(first) & set(corruption))
    if len(cases) < 2:
        raise AuditError(f"{audit_csv}: fewer than 2 cases with a known clean label in {raw_dataset_folder}")
    c = np.array([corruption[k] for k in cases])
    median = float(np.median(c))
    positive = c > median
    k = max(1, math.ceil(top_share * len(cases)))
    kth = np.sort(c)[::-1][k - 1]
    most_corrupted = c >= kth
    result: dict[str, Any] = {
        "num_cases": len(cases),
        "median_corruption": median,
        "num_above_median": int(positive.sum()),
        "top_k": k,
        "chance_precision_top_in_most_corrupted": float(most_corrupted.mean()),
        "chance_precision_top_above_median": float(positive.mean()),
    }
    for column in columns:
        try:
            values = read_case_scores(audit_csv, column)
        except (KeyError, ValueError):
            continue
        s = np.array([values[k_] for k_ in cases])
        if np.isnan(s).any():
            continue
        order = sorted(range(len(cases)), key=lambda i: (-s[i], cases[i]))[:k]
        constant = np.ptp(s) == 0 or np.ptp(c) == 0
        rho = (float("nan"), float("nan")) if constant else spearmanr(s, c)
        result[column] = {
            "auroc_above_median": auroc(s, positive),
            "spearman": float(rho[0]),
            "spearman_p": float(rho[1]),
            "precision_top_in_most_corrupted": float(most_corrupted[order].mean()),
            "precision_top_above_median": float(positive[order].mean()),
            "top_cases": [cases[i] for i in order],
            "mean_corruption_top": float(c[order].mean()),
        }
    result["mean_corruption_all"] = float(c.mean())
    return result
