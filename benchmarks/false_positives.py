"""Spurious blobs in predictions: far false positives and connected components per case, several methods side by side.

    python -m benchmarks.false_positives REF_DIR NAME=PRED_DIR [NAME=PRED_DIR ...] [--margin 3]

For every reference file in REF_DIR and the file of the same name in each PRED_DIR (foreground = any label > 0):
the predicted foreground farther than --margin (spacing units; pixels for PNG) from the reference foreground
(`metrics.far_false_positives`) and the number of connected components of the prediction
(`metrics.component_count`). Prints a markdown table: per method the mean over cases, the share of cases with a far
false positive, and a paired t-test over cases against the first method. These are the blobs that raise HD95 while
Dice hardly moves.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy import stats

from nnunet_dale.files import read_segmentation, supported_endings
from nnunet_dale.metrics import component_count, far_false_positives

__all__ = ["case_counts", "main", "summarise"]


def case_counts(ref_dir: Path, pred_dir: Path, margin: float) -> dict[str, tuple[int, int]]:
    """Per reference file: (far false-positive voxels, predicted components) of the same-named prediction."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    endings = supported_endings()
    refs = sorted(f for f in ref_dir.iterdir() if f.is_file() and any(f.name.lower().endswith(e) for e in endings))
    if not refs:
        raise FileNotFoundError(f"no segmentation files with a supported ending in {ref_dir}")
    missing = [f.name for f in refs if not (pred_dir / f.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{pred_dir} lacks {len(missing)} of the references, e.g. {missing[0]}")
    ending = next(e for e in endings if refs[0].name.lower().endswith(e))
    reader = determine_reader_writer_from_file_ending(ending, str(refs[0]), allow_nonmatching_filename=True)()
    counts = {}
    for ref_file in refs:
        ref, spacing = read_segmentation(reader, ref_file)
        pred, _ = read_segmentation(reader, pred_dir / ref_file.name)
        counts[ref_file.name] = (far_false_positives(pred > 0, ref > 0, spacing, margin), component_count(pred > 0))
    return counts


def summarise(cases: dict[str, dict[str, tuple[int, int]]]) -> dict[str, dict[str, float]]:
    """Per method: mean far false positives, mean components, share of cases with a far false positive, and for
    every method after the first the paired t-test p over cases against the first (NaN when all differences are 0)."""
    methods = list(cases)
    names = sorted(cases[methods[0]])
    if any(sorted(cases[m]) != names for m in methods):
        raise ValueError("every method must have predictions for the same cases")
    columns = {m: np.array([cases[m][n] for n in names], dtype=float) for m in methods}
    table = {}
    for m in methods:
        far, comp = columns[m][:, 0], columns[m][:, 1]
        row = {
            "far_fp": float(far.mean()),
            "components": float(comp.mean()),
            "cases_with_far_fp": float((far > 0).mean()),
        }
        if m != methods[0]:
            for key, col in (("p_far_fp", 0), ("p_components", 1)):
                diff = columns[m][:, col] - columns[methods[0]][:, col]
                row[key] = (
                    math.nan
                    if not diff.any()
                    else float(stats.ttest_rel(columns[m][:, col], columns[methods[0]][:, col]).pvalue)
                )
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
    print("| method | far false-positive voxels per case | cases with one | components per case | p far / components |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in table.items():
        p = f"{row['p_far_fp']:.3g} / {row['p_components']:.3g}" if "p_far_fp" in row else "—"
        print(f"| {name} | {row['far_fp']:.1f} | {row['cases_with_far_fp']:.2f} | {row['components']:.2f} | {p} |")


if __name__ == "__main__":
    main()
