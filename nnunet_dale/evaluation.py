"""The evaluation folder runner: every reference of a folder against the same-named prediction, scored with
`nnunet_dale.metrics` (Dice, IoU, HD95, ASD per class, Dice inside the reference's fuzzy regions), written to
per_case.csv and summary.json. The metric conventions are in `nnunet_dale.metrics` and docs/evaluation.md.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_dale.files import (
    atomic_write,
    check_output_folder,
    folder_problem,
    json_safe,
    read_segmentation,
    supported_endings,
)
from nnunet_dale.metrics import (
    FUZZY_METRIC,
    METRICS,
    case_metrics,
    reference_fuzzy_mask,
    surface_distances,
)

__all__ = [
    "LABELS_SEEN",
    "check_label_values",
    "evaluate_folders",
    "paired_files",
    # re-exported from nnunet_dale.metrics and nnunet_dale.files, where they live (docs/evaluation.md imports them
    # from here)
    "FUZZY_METRIC",
    "METRICS",
    "case_metrics",
    "read_segmentation",
    "reference_fuzzy_mask",
    "supported_endings",
    "surface_distances",
]


def _guess_file_ending(ref_dir: Path) -> str:
    endings = supported_endings()
    found = set()
    for f in ref_dir.iterdir():
        if f.is_file():
            ending = next((e for e in endings if f.name.lower().endswith(e)), None)
            if ending is not None:
                found.add(ending)
    if not found:
        raise FileNotFoundError(f"no segmentation files with a supported ending {endings} in {ref_dir}")
    if len(found) > 1:
        raise ValueError(f"{ref_dir} holds several file endings {sorted(found)}; pass file_ending")
    return found.pop()


LABELS_SEEN = "_label_values"  # a case's label values in prediction or reference; dropped before the summary


def _evaluate_case(reader_class, pred_file: Path, ref_file: Path, labels: Sequence[int], fuzzy: bool) -> dict:
    reader = reader_class()
    ref, spacing = read_segmentation(reader, ref_file)
    pred, pred_spacing = read_segmentation(reader, pred_file)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch for {pred_file.name}: prediction {pred.shape}, reference {ref.shape}")
    if not np.allclose(pred_spacing, spacing, rtol=1e-3):
        warnings.warn(
            f"{pred_file.name}: prediction spacing {pred_spacing} differs from the reference's {spacing}; "
            "using the reference's",
            stacklevel=2,
        )
    check_label_values(pred, ref, labels, pred_file)
    fuzzy_mask = reference_fuzzy_mask(ref, spacing) if fuzzy else None
    metrics = case_metrics(pred, ref, labels, spacing, fuzzy_mask)
    return {
        "prediction_file": str(pred_file),
        "reference_file": str(ref_file),
        "spacing": list(spacing),
        "n_voxels": int(ref.size),
        "metrics": {str(k): v for k, v in metrics.items()},
        LABELS_SEEN: sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref))),
    }


def check_label_values(pred, ref, labels, pred_file: Path) -> None:
    """A prediction may hold 0, the evaluated labels and its reference's own labels; anything else (a 0/255 mask, a
    swapped or foreign folder) is a ValueError naming the file, instead of a silent Dice of 0."""
    allowed = {0, *(int(v) for v in labels)} | {int(v) for v in np.unique(ref)}
    stray = sorted({int(v) for v in np.unique(pred)} - allowed)
    if stray:
        raise ValueError(
            f"prediction {pred_file} holds label values {stray} that are neither background (0), an evaluated label "
            f"{sorted(int(v) for v in labels)} nor in its reference: is it a 0/255 mask or the wrong folder? "
            "Predictions and references must hold the dataset's integer labels"
        )


def _summarise(cases: list[dict], labels: Sequence[int], metric_names: Sequence[str]) -> dict:
    means: dict[str, dict] = {}
    for label in labels:
        key = str(label)
        entry: dict = {}
        n_nan: dict[str, int] = {}
        for m in metric_names:
            values = np.array([c["metrics"][key][m] for c in cases], dtype=np.float64)
            finite = ~np.isnan(values)
            entry[m] = float(values[finite].mean()) if finite.any() else math.nan
            n_nan[m] = int((~finite).sum())
        entry["n_cases"] = len(cases)
        entry["n_nan"] = n_nan
        means[key] = entry
    foreground_mean = {}
    foreground = [str(label) for label in labels if label != 0]
    for m in metric_names:
        values = np.array([means[k][m] for k in foreground], dtype=np.float64)
        values = values[~np.isnan(values)]
        foreground_mean[m] = float(values.mean()) if values.size else math.nan
    return {"mean": means, "foreground_mean": foreground_mean}


def paired_files(
    pred_dir: Path, ref_dir: Path, file_ending: str | None = None
) -> tuple[list[Path], list[Path], type, str]:
    """Every reference in `ref_dir` ending in `file_ending` (guessed from `ref_dir` when None), the same-named
    prediction in `pred_dir`, nnU-Net's reader class for that ending, and the ending; a missing folder, reference or
    prediction is one clear FileNotFoundError."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for name, folder in (("prediction", pred_dir), ("reference", ref_dir)):
        if problem := folder_problem(folder):
            raise FileNotFoundError(f"{name} folder {folder} {problem}")
    if file_ending is None:
        file_ending = _guess_file_ending(ref_dir)
    ref_files = sorted(f for f in ref_dir.iterdir() if f.is_file() and f.name.endswith(file_ending))
    if not ref_files:
        raise FileNotFoundError(f"no reference files ending in {file_ending!r} in {ref_dir}")
    pred_files = [pred_dir / f.name for f in ref_files]
    missing = [p.name for p in pred_files if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"prediction {missing[0]} missing in {pred_dir} for reference {ref_dir / missing[0]}{more}"
        )
    reader_class = determine_reader_writer_from_file_ending(
        file_ending, str(ref_files[0]), allow_nonmatching_filename=True, verbose=False
    )
    return pred_files, ref_files, reader_class, file_ending


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    labels: Sequence[int] | None = None,
    file_ending: str | None = None,
    fuzzy: bool = True,
    num_processes: int = 1,
) -> dict:
    """Evaluate every reference in `ref_dir` against the same-named prediction in `pred_dir` (case_metrics per class).

    Files are read with nnU-Net's reader for `file_ending` (guessed from `ref_dir` when None); spacing comes from the
    reader (PNG: 1, so distances are in pixels). `labels` defaults to the union of the labels in the references, minus
    0. With `fuzzy`, Dice_fuzzy is computed inside `reference_fuzzy_mask` of each reference. Writes
    out_dir/per_case.csv (one row per case and label) and out_dir/summary.json ({"mean": {label: {metric: nanmean,
    "n_cases", "n_nan": {metric: count}}}, "foreground_mean": {metric: nanmean over labels != 0}, "metric_per_case":
    [...]}), each atomically and only after every case succeeded; NaN is written as null. Returns the summary as
    written (json.load of summary.json).
    """
    out_dir = Path(out_dir)
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"the number of processes (-np) must be an integer >= 1, got {num_processes!r}")
    check_output_folder(out_dir, "output folder (-o)")
    pred_files, ref_files, reader_class, file_ending = paired_files(pred_dir, ref_dir, file_ending)
    if labels is None:
        reader = reader_class()
        present: set[int] = set()
        for f in ref_files:
            present.update(int(v) for v in np.unique(read_segmentation(reader, f)[0]))
        labels = sorted(present - {0})
        if not labels:
            raise ValueError(f"the references in {ref_dir} hold no foreground label; pass labels")
    labels = [int(label) for label in labels]

    jobs = [(reader_class, p, r, labels, fuzzy) for p, r in zip(pred_files, ref_files, strict=True)]
    if num_processes > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            cases = pool.starmap(_evaluate_case, jobs)
    else:
        cases = [_evaluate_case(*job) for job in tqdm(jobs, desc="evaluating", disable=not sys.stderr.isatty())]
    seen = set().union(*(case.pop(LABELS_SEEN) for case in cases))
    absent = sorted(set(labels) - seen)
    if absent:
        raise ValueError(
            f"--labels {absent} occur in no prediction and no reference of {pred_dir} / {ref_dir}: a typo, or the "
            "wrong folders?"
        )

    metric_names = list(METRICS) + ([FUZZY_METRIC] if fuzzy else [])
    summary = _summarise(cases, labels, metric_names)
    summary["metric_per_case"] = cases
    summary = json_safe(summary)

    columns = ["case", "label", *metric_names, "n_ref", "n_pred", "prediction_file", "reference_file"]

    def write_csv(f) -> None:
        writer = csv.writer(f)
        writer.writerow(columns)
        for ref_file, case in zip(ref_files, cases, strict=True):
            case_name = ref_file.name[: -len(file_ending)] if file_ending else ref_file.name
            for label in labels:
                m = case["metrics"][str(label)]
                values = ["nan" if m[k] is None else repr(float(m[k])) for k in metric_names]
                writer.writerow(
                    [
                        case_name,
                        label,
                        *values,
                        m["n_ref"],
                        m["n_pred"],
                        case["prediction_file"],
                        case["reference_file"],
                    ]
                )

    def write_json(f) -> None:
        json.dump(summary, f, indent=2, allow_nan=False)
        f.write("\n")

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "per_case.csv", write_csv)
    atomic_write(out_dir / "summary.json", write_json)
    return summary
