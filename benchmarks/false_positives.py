"""Spurious blobs and missed lesions: far false positives, components and missed reference components per case,
several methods side by side.

    python -m benchmarks.false_positives REF_DIR NAME=PRED_DIR [NAME=PRED_DIR ...] [--margin 3]

For every reference file in REF_DIR and the file of the same name in each PRED_DIR (foreground = any label > 0):
the predicted foreground farther than --margin (spacing units; pixels for PNG) from the reference foreground
(`metrics.far_false_positives`) and the number of connected components of the prediction
(`metrics.component_count`), and the reference components no predicted voxel touches (`metrics.missed_components`).
Prints a markdown table: per method the mean over cases, the share of cases with a far false positive and with a
missed lesion, and paired t-tests over cases against the first method. Blobs and missed lesions are what raise HD95
while Dice hardly moves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nnunet_dale.compare.stats import paired_test
from nnunet_dale.evaluation import paired_files
from nnunet_dale.files import read_segmentation
from nnunet_dale.metrics import component_count, far_false_positives, missed_components

__all__ = ["case_counts", "main", "summarise"]


def case_counts(ref_dir: Path, pred_dir: Path, margin: float) -> dict[str, tuple[int, int, int]]:
    """Per reference file: (far false-positive voxels, predicted components, missed reference components) of the
    same-named prediction."""
    pred_files, ref_files, reader_class, _ = paired_files(pred_dir, ref_dir)
    reader = reader_class()
    counts = {}
    for pred_file, ref_file in zip(pred_files, ref_files, strict=True):
        ref, spacing = read_segmentation(reader, ref_file)
        pred, ref = read_segmentation(reader, pred_file)[0] > 0, ref > 0
        counts[ref_file.name] = (
            far_false_positives(pred, ref, spacing, margin),
            component_count(pred),
            missed_components(pred, ref),
        )
    return counts


def summarise(cases: dict[str, dict[str, tuple[int, int, int]]]) -> dict[str, dict[str, float]]:
    """Per method: mean far false positives, components and missed lesions, the shares of cases with a far false
    positive and with a missed lesion, and for every method after the first the paired t-test p over cases against
    the first (`compare.stats.paired_test`)."""
    methods = list(cases)
    names = sorted(cases[methods[0]])
    if any(sorted(cases[m]) != names for m in methods):
        raise ValueError("every method must have predictions for the same cases")
    columns = {m: np.array([cases[m][n] for n in names], dtype=float) for m in methods}
    baseline = columns[methods[0]]
    table = {}
    for m in methods:
        far, comp, missed = columns[m].T
        row = {
            "far_fp": float(far.mean()),
            "components": float(comp.mean()),
            "missed": float(missed.mean()),
            "cases_with_far_fp": float((far > 0).mean()),
            "cases_with_missed": float((missed > 0).mean()),
        }
        if m != methods[0]:
            for i, key in enumerate(("far_fp", "components", "missed")):
                row[f"p_{key}"] = paired_test(baseline[:, i], columns[m][:, i])["p"]
        table[m] = row
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("predictions", nargs="+", help="NAME=FOLDER, the baseline first")
    parser.add_argument("--margin", type=float, default=3.0, help="distance beyond which a false positive is far")
    args = parser.parse_args(argv)
    if args.margin < 0:
        parser.error("--margin must be >= 0")
    pairs = [p.split("=", 1) for p in args.predictions]
    if any(len(p) != 2 or not p[0] for p in pairs):
        parser.error("predictions are given as NAME=FOLDER")
    try:
        cases = {name: case_counts(args.reference, Path(folder), args.margin) for name, folder in pairs}
    except (OSError, ValueError) as error:
        parser.exit(1, f"false_positives: {error}\n")
    table = summarise(cases)
    n = len(next(iter(cases.values())))
    far = f"more than {args.margin:g} from the reference foreground"
    print(f"{n} cases; far = {far}; p: paired t-test over cases against {pairs[0][0]}\n")
    print(
        "| method | far false-positive voxels per case | cases with one | components per case "
        "| missed lesions per case | cases with one | p far / components / missed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in table.items():
        p = " / ".join(f"{row[f'p_{k}']:.3g}" for k in ("far_fp", "components", "missed")) if "p_far_fp" in row else "—"
        print(
            f"| {name} | {row['far_fp']:.1f} | {row['cases_with_far_fp']:.2f} | {row['components']:.2f} "
            f"| {row['missed']:.2f} | {row['cases_with_missed']:.2f} | {p} |"
        )


if __name__ == "__main__":
    main()
