"""The label-noise study's readings (issue 31), generated from docs/data/noise_study.json by the rules written before
its runs (docs/study-log.md, section noise-study-plan), into README.md and docs/results.md (the same table).

    python -m benchmarks.noise_readings            # rewrite the tables between their <!-- key --> markers
    python -m benchmarks.noise_readings --check    # exit 1 if a table differs from what the data give

Per dataset and noise level, over the runs both compared roles have (a reading needs READING_RUNS of them):
- DALE *helps at equal time* where its mean Dice >= default-at-DALE's-time's + 1 point and its mean HD95 <= that
  default's; *helps at equal iterations* the same against default at the study schedule;
- DALE is *safe on clean labels* where, at alpha 0, its Dice >= default's - 0.5 points;
- DALE *beats the robust loss* where its Dice >= GCE's + 1 point, is *level* within +-1 point, else *behind*.
The issue's goal is met if DALE helps at equal time on every dataset at every noisy level, is safe at alpha 0 and
beats GCE at every noisy level. A cell with fewer runs is shown and has no reading.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.headline import dice, hd95, points
from benchmarks.noise_study import DATASETS, ROLES, load_records
from benchmarks.report import generate_sections, stale_sections

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data" / "noise_study.json"
README = REPO / "README.md"
RESULTS = REPO / "docs" / "results.md"
READING_RUNS = 3
HELPS_POINTS, SAFE_POINTS, ROBUST_POINTS = 1.0, 0.5, 1.0
DATASET_NAMES = {"isic2017": "ISIC 2017", "busi": "BUSI", "benchmark": "benchmark"}


@dataclass(frozen=True)
class Pair:
    """DALE against another role over the runs both have: the mean Dice difference (points), the HD95 change
    (relative), and how many runs."""

    runs: int
    dice_points: float
    hd95_change: float

    @property
    def readable(self) -> bool:
        return self.runs >= READING_RUNS

    def helps(self) -> bool:
        return self.dice_points >= HELPS_POINTS and self.hd95_change <= 0


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def pair(cell: dict[str, list[dict]], role: str, other: str) -> Pair | None:
    """`role` against `other` on their common runs (None if they have none)."""
    mine, theirs = ({r["run"]: r for r in cell.get(k, [])} for k in (role, other))
    runs = sorted(set(mine) & set(theirs))
    if not runs:
        return None
    d = statistics.fmean(mine[r]["dice"] for r in runs) - statistics.fmean(theirs[r]["dice"] for r in runs)
    hd_runs = [r for r in runs if _finite(mine[r]["hd95"]) and _finite(theirs[r]["hd95"])]
    if hd_runs:
        a, b = (statistics.fmean(side[r]["hd95"] for r in hd_runs) for side in (mine, theirs))
        change = a / b - 1
    else:
        change = math.nan
    return Pair(len(runs), round(100 * d, 9), change)  # rounded: the rules' margins are not float noise


def cells(records: list[dict[str, Any]]) -> dict[tuple, dict[str, list[dict]]]:
    """(dataset, kind, alpha) -> role -> its records, datasets in the study's order, alpha 0 first."""
    out: dict[tuple, dict[str, list[dict]]] = {}
    order = sorted(records, key=lambda r: (DATASETS.index(r["dataset"]), r["alpha"], r["kind"], r["run"]))
    for r in order:
        out.setdefault((r["dataset"], r["kind"], r["alpha"]), {}).setdefault(r["role"], []).append(r)
    return out


def reading(key: tuple, cell: dict[str, list[dict]]) -> str:
    """The cell's reading by the rules, or what it waits for."""
    dale = cell.get("dale", [])
    if len(dale) < READING_RUNS:
        return f"{len(dale)} of {READING_RUNS} runs: no reading yet"
    parts = []
    if key[2] == 0:
        safe = pair(cell, "dale", "default")
        if safe and safe.readable:
            parts.append(f"safe on clean labels: {'yes' if safe.dice_points >= -SAFE_POINTS else 'no'}")
    for role, name in (("default_same_time", "helps at equal time"), ("default", "at equal iterations")):
        p = pair(cell, "dale", role)
        if p and p.readable:
            parts.append(f"{name}: {'yes' if p.helps() else 'no'}")
    robust = pair(cell, "dale", "gce")
    if robust and robust.readable:
        beats = robust.dice_points >= ROBUST_POINTS
        parts.append("vs GCE: " + ("beats" if beats else "level" if robust.dice_points > -ROBUST_POINTS else "behind"))
    return "; ".join(parts) or "no reading yet"


def _mean(records: list[dict], metric: str, fmt) -> str:
    values = [r[metric] for r in records if _finite(r[metric])]
    return fmt(statistics.fmean(values)) if values else "—"


def _level(dataset: str, kind: str, alpha: float) -> str:
    if kind == "annotator":
        return f"annotator --noise {alpha:g}"
    return "clean (α = 0)" if alpha == 0 else f"α = {alpha:g} {kind}"


def table(records: list[dict[str, Any]]) -> str:
    """One row per dataset and level: runs, Dice and HD95 per role (default / DALE / default at DALE's time / GCE),
    DALE against default at its time, the reading; then the goal line."""
    lines = [
        "| data set, noise | runs | Dice | HD95 px | DALE − default at its time | reading |",
        "|---|---|---|---|---|---|",
    ]
    all_cells = cells(records)
    for (dataset, kind, alpha), cell in all_cells.items():
        runs = "/".join(str(len(cell.get(role, []))) for role in ROLES)
        same = pair(cell, "dale", "default_same_time")
        delta = "—" if same is None else f"{points(same.dice_points)}, HD95 {_percent(same.hd95_change)}"
        lines.append(
            f"| {DATASET_NAMES.get(dataset, dataset)}, {_level(dataset, kind, alpha)} | {runs} | "
            + " / ".join(_mean(cell.get(role, []), "dice", dice) for role in ROLES)
            + " | "
            + " / ".join(_mean(cell.get(role, []), "hd95", hd95) for role in ROLES)
            + f" | {delta} | {reading((dataset, kind, alpha), cell)} |"
        )
    lines += ["", goal(all_cells)]
    return "\n".join(lines)


def _percent(change: float) -> str:
    return "—" if not math.isfinite(change) else f"{100 * change:+.0f} %".replace("-", "−")


def goal(all_cells: dict[tuple, dict[str, list[dict]]]) -> str:
    """The issue's goal over the cells that have their runs, and how many cells wait."""
    noisy = {k: c for k, c in all_cells.items() if k[2] > 0}
    clean = {k: c for k, c in all_cells.items() if k[2] == 0}
    checks, missed = [], False
    for name, group, role, test in (
        ("helps at equal time in", noisy, "default_same_time", Pair.helps),
        ("beats GCE in", noisy, "gce", lambda p: p.dice_points >= ROBUST_POINTS),
        ("is safe on clean labels in", clean, "default", lambda p: p.dice_points >= -SAFE_POINTS),
    ):
        pairs = [p for c in group.values() if (p := pair(c, "dale", role)) and p.readable]
        checks.append(f"{name} {sum(map(test, pairs))} of {len(pairs)} {'noisy' if group is noisy else 'clean'} cells")
        missed = missed or any(not test(p) for p in pairs)
    waiting = sum(min(len(c.get(role, [])) for role in ROLES) < READING_RUNS for c in all_cells.values())
    state = "not met" if missed else "open" if waiting else "met"
    return (
        f"Goal (issue 31): {state}. Over the cells with {READING_RUNS} runs, DALE "
        + "; ".join(checks)
        + (f"; {waiting} of {len(all_cells)} cells wait for runs." if waiting else ".")
    )


def demo_reading(records: list[dict[str, Any]]) -> str:
    """The demo verdict's last part (nnunet_dale.demo.NOISE_STUDY_READING): whether DALE helped at equal time in the
    noisy cells that have their runs, with the range of its Dice against default given its time."""
    readable = {
        key: p
        for key, cell in cells(records).items()
        if key[2] > 0 and (p := pair(cell, "dale", "default_same_time")) and p.readable
    }
    if not readable:
        return "the label-noise study's reading is pending (docs/results.md)"
    names = sorted({DATASET_NAMES.get(k[0], k[0]) for k in readable}, key=list(DATASET_NAMES.values()).index)
    low, high = (points(f([p.dice_points for p in readable.values()])) for f in (min, max))
    return (
        f"in the label-noise study ({', '.join(names)}, {READING_RUNS} runs per cell) DALE helped at equal time in "
        f"{sum(p.helps() for p in readable.values())} of {len(readable)} noisy cells (Dice "
        f"{low if low == high else f'{low} to {high}'} points against default given its time; docs/results.md)"
    )


SECTIONS = {(RESULTS, "results-noise"): table, (README, "headline-noise"): table}


def differences(records: list[dict[str, Any]]) -> list[str]:
    return stale_sections(SECTIONS, records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a table differs")
    args = parser.parse_args(argv)
    records = load_records(DATA)
    return generate_sections(
        SECTIONS, records, args.check, str(DATA.relative_to(REPO)), "python -m benchmarks.noise_readings"
    )


if __name__ == "__main__":
    sys.exit(main())
