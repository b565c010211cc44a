"""The size-shift summary of docs/results.md (issue 29), generated from the ablation data files, with the fix rule.

    python -m benchmarks.size_shift            # rewrite the table between <!-- results-size-shift --> markers
    python -m benchmarks.size_shift --check    # exit 1 if the table differs from what the data give

Runs come from the data files of `benchmarks.ablation` (docs/data/ablation/<key>.json: one record per trainer and
fold, the cases below Dice 0.3 per run in its size bins) and from `size-shift-isic-transcribed.json` (runs whose work
folder was lost before their section was written). A (trainer, fold) found in more than one file counts once, from
the first file listed for its test; the others are replicates, shown beside the table and kept out of the rule.

The rule (docs/study-log.md, section size-shift-fix-plan, written before the runs): a candidate passes a size-shift
test when, over three runs on the folds default also ran, its mean Dice >= default's - 1 point, its cases below 0.3
in total <= default's and its mean HD95 <= default's x 1.03; on the standard test cases when its mean Dice >=
default's. The issue's own goal (Dice >= default's, HD95 not worse) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.headline import dice, hd95, points
from benchmarks.report import read_section, section_text, write_section

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data" / "ablation"
RESULTS = REPO / "docs" / "results.md"
KEY = "results-size-shift"
DEFAULT = "nnUNetTrainer_bench"
CANDIDATES = ("nnUNetTrainerDALE_omegaEvery4_bench", "nnUNetTrainerDALE_noOmega_bench")
NAMES = {
    DEFAULT: "default nnU-Net",
    "nnUNetTrainerDALE_bench": "DALE, ω on every iteration",
    "nnUNetTrainerDALE_omegaEvery4_bench": "DALE, ω on every 4th iteration",
    "nnUNetTrainerDALE_noOmega_bench": "DALE without ω",
}
SHORT = {DEFAULT: "default", "nnUNetTrainerDALE_bench": "DALE", "nnUNetTrainerDALE_noOmega_bench": "`_noOmega`"}
# test -> (its name, whether it is a size-shift test, its data files in order of preference)
TESTS = {
    "ISIC": (
        "trained on the ISIC 2017 subset's smaller lesions (≤ 9.8 % of the image), tested on its 29 largest",
        True,
        [
            "ablation-isic2017-64px-seed0-largest",
            "size-shift-isic-transcribed",
            "ablation-isic2017-64px-seed0-largest-fix-fold2",
            "ablation-isic2017-64px-seed0-largest-fix-fold1",
        ],
    ),
    "bench 2×": (
        "the built-in benchmark, data seed 4, 200 test cases with 2× lesions",
        True,
        ["ablation-benchmark-seed4-fix-test200-scale2", "ablation-benchmark-seed4-test200-scale2"],
    ),
    "bench": (
        "the same runs, 200 standard test cases",
        False,
        ["ablation-benchmark-seed4-fix-test200", "ablation-benchmark-seed4-sizeshift-test200"],
    ),
}
RUNS_FOR_RULE = 3


@dataclass(frozen=True)
class Run:
    trainer: str
    fold: int
    dice: float
    hd95: float
    collapses: int | None  # cases below Dice 0.3 (None: not recorded)
    source: str


def read_runs(path: Path) -> list[Run]:
    """The runs of one data file, each with its cases below Dice 0.3 (from the size bins, per run in fold order)."""
    data = json.loads(path.read_text())
    per_run = {m: v["collapses_per_run"] for m, v in data.get("size_bins", {}).get("methods", {}).items()}
    runs = []
    for record in data["runs"]:
        if "below_0.3" in record:
            collapses = record["below_0.3"]
        else:
            folds = sorted(r["fold"] for r in data["runs"] if r["trainer"] == record["trainer"])
            counts = per_run.get(record["trainer"])
            collapses = None if counts is None else int(counts[folds.index(record["fold"])])
        runs.append(Run(record["trainer"], record["fold"], record["Dice"], record["HD95"], collapses, data["key"]))
    return runs


def gather(files: list[str], folder: Path = DATA) -> tuple[dict[str, dict[int, Run]], list[Run]]:
    """Per trainer its runs by fold (the first file listing a fold wins) and the replicates; missing files skipped."""
    kept: dict[str, dict[int, Run]] = {}
    replicates = []
    for name in files:
        path = folder / f"{name}.json"
        for run in read_runs(path) if path.is_file() else []:
            if run.fold in kept.setdefault(run.trainer, {}):
                replicates.append(run)
            else:
                kept[run.trainer][run.fold] = run
    return kept, replicates


def passes(candidate: list[Run], default: list[Run], size_shift: bool) -> dict[str, bool]:
    """The fix rule on paired runs (same folds): per condition (Dice, cases, HD95), whether it holds."""
    d_dice, c_dice = (statistics.fmean(r.dice for r in runs) for runs in (default, candidate))
    if not size_shift:
        return {"Dice": c_dice >= d_dice}
    d_hd, c_hd = (statistics.fmean(r.hd95 for r in runs) for runs in (default, candidate))
    d_cases, c_cases = (sum(r.collapses for r in runs) for runs in (default, candidate))
    return {
        "Dice": c_dice >= d_dice - 0.01,
        "cases": c_cases <= d_cases,
        "HD95": c_hd <= 1.03 * d_hd,
    }


def _cell(runs: dict[int, Run] | None) -> str:
    """A trainer's runs on one test: mean Dice / mean HD95 / cases below Dice 0.3 per run (in fold order)."""
    if not runs:
        return "—"
    ordered = [runs[f] for f in sorted(runs)]
    cases = "+".join("–" if r.collapses is None else str(r.collapses) for r in ordered)
    mean_dice, mean_hd95 = statistics.fmean(r.dice for r in ordered), statistics.fmean(r.hd95 for r in ordered)
    return f"{dice(mean_dice)} / {hd95(mean_hd95)} / {cases}"


def verdict(trainer: str, runs: dict[str, dict[int, Run]], size_shift: bool) -> str:
    """The rule's conditions for a candidate against default on the same folds, or how many runs it has."""
    folds = sorted(set(runs.get(trainer, {})) & set(runs.get(DEFAULT, {})))
    if len(folds) < RUNS_FOR_RULE:
        return f"{len(folds)} of {RUNS_FOR_RULE} runs, waits"
    candidate, default = ([runs[t][f] for f in folds] for t in (trainer, DEFAULT))
    checks = passes(candidate, default, size_shift)
    delta = 100 * (statistics.fmean(r.dice for r in candidate) - statistics.fmean(r.dice for r in default))
    detail = " ".join(f"{c} {'✓' if ok else '✗'}" for c, ok in checks.items())
    return f"{'passes' if all(checks.values()) else 'fails'} (Δ Dice {points(delta)}; {detail})"


def table(folder: Path = DATA) -> str:
    """The results page's size-shift section: one row per test, one column per trainer (mean Dice / mean HD95 / cases
    below Dice 0.3 per run), the replicates, the rule per candidate."""
    rows, replicates, verdicts = [], [], {t: [] for t in CANDIDATES}
    for test, (_, size_shift, files) in TESTS.items():
        runs, extra = gather(files, folder)
        counts = {len(runs[t]) for t in NAMES if t in runs}
        rows.append(
            f"| {test} | {'/'.join(map(str, sorted(counts)))} | " + " | ".join(_cell(runs.get(t)) for t in NAMES) + " |"
        )
        replicates += [f"{test} {SHORT.get(r.trainer, r.trainer)} fold {r.fold} {dice(r.dice)}" for r in extra]
        for t in CANDIDATES:
            if t in runs:
                verdicts[t].append(f"{test} {verdict(t, runs, size_shift)}")
    out = [
        "| test | runs | " + " | ".join(NAMES.values()) + " |",
        "|---|---|" + "---|" * len(NAMES),
        *rows,
        "",
        "Cells: mean Dice / mean HD95 (px) / cases below Dice 0.3 per run. Tests: "
        + "; ".join(f"*{test}*: {name}" for test, (name, _, _) in TESTS.items())
        + ". 40 × 25 iterations, 64 px; runs are folds of the training set.",
    ]
    if replicates:
        out[-1] += " Replicates (a fold run again; not in the table or rule): " + "; ".join(replicates) + "."
    out += [
        "",
        "The fix rule (study log, *size-shift-fix-plan*), over three runs against default on the same folds: on a "
        "size-shift test Dice ≥ default's − 1 point, cases below 0.3 ≤ default's, HD95 ≤ default's × 1.03; on bench "
        "Dice ≥ default's.",
        "",
    ]
    out += [f"- {NAMES[t]}: {'; '.join(v)}." for t, v in verdicts.items() if v]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the table differs")
    args = parser.parse_args(argv)
    if args.check:
        if read_section(RESULTS, KEY) != section_text(table()):
            print(f"{RESULTS.relative_to(REPO)} <!-- {KEY} --> differs: run python -m benchmarks.size_shift")
            return 1
        return 0
    write_section(RESULTS, KEY, table())
    print(f"wrote {RESULTS.relative_to(REPO)} <!-- {KEY} -->\n\n{table()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
