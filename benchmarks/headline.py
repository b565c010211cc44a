"""The summary tables of README.md and docs/results.md, generated from the study's data (docs/data/validity_study.json).

    python -m benchmarks.headline            # rewrite the tables between their <!-- key --> markers
    python -m benchmarks.headline --check    # exit 1 if a table differs from what the data give (e.g. a hand edit)

The data file holds the validity study's tables as they were generated (each under the key of its section in
docs/study-log.md) and which rows the summaries use. A set of runs pooled from two tables (a fold added later) is
pooled by run means: each table's mean weighted by its number of runs. Its Δ Dice is then the difference of the pooled
means (a single table's Δ is the table's own, from the unrounded numbers), and its time ratio uses only the tables
whose wall times were not disturbed by other work. tests/test_docs.py checks that the files equal this output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from benchmarks.report import generate_sections, stale_sections

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data" / "validity_study.json"
README = REPO / "README.md"
RESULTS = REPO / "docs" / "results.md"


def load(path: Path = DATA) -> dict:
    return json.loads(Path(path).read_text())


def _row(study: dict, table: str, trainer: str) -> dict:
    rows = [r for r in study["tables"][table]["rows"] if r["trainer"] == trainer]
    if len(rows) != 1:
        raise ValueError(f"table {table} has {len(rows)} rows of {trainer}")
    return rows[0]


def pool(study: dict, parts: list[dict]) -> dict:
    """One set of runs from its tables: run-weighted means of Dice and HD95, Δ Dice (points), Δ HD95 (%), the
    metrics significantly worse over runs in any table, p over runs (one table only) and DALE's time ratio."""
    pairs = [(_row(study, p["table"], p["default"]), _row(study, p["table"], p["dale"]), p) for p in parts]
    runs = [len(d["folds"]) for d, _, _ in pairs]
    if any(len(s["folds"]) != n for (_, s, _), n in zip(pairs, runs)):
        raise ValueError(f"the trainers of {[p['table'] for p in parts]} have different runs")

    def mean(side: int, metric: str) -> float:  # one table: its value as printed, without float arithmetic
        if len(pairs) == 1:
            return pairs[0][side][metric]
        return sum(n * pair[side][metric] for n, pair in zip(runs, pairs)) / sum(runs)

    out = {"runs": sum(runs), "default": {}, "dale": {}}
    for metric in ("Dice", "HD95"):
        out["default"][metric], out["dale"][metric] = mean(0, metric), mean(1, metric)
    if len(pairs) == 1:
        dale = pairs[0][1]
        out["delta_dice"], out["delta_hd95_pct"], out["p_runs"] = (
            dale["delta_dice"],
            dale["delta_hd95_pct"],
            dale["p_runs"],
        )
    else:
        out["delta_dice"] = round(100 * (out["dale"]["Dice"] - out["default"]["Dice"]), 1)
        out["delta_hd95_pct"] = round(100 * (out["dale"]["HD95"] / out["default"]["HD95"] - 1))
        out["p_runs"] = None
    out["worse"] = sorted({m for _, s, _ in pairs for m in s["worse"]})
    timed = [(n, d, s) for n, (d, s, p) in zip(runs, pairs) if p.get("time_comparable", True) and d["train_min"]]
    out["time_x"] = (
        sum(n * s["train_min"] for n, _, s in timed) / sum(n * d["train_min"] for n, d, _ in timed) if timed else None
    )
    out["time_notes"] = [p["time_note"] for p in parts if not p.get("time_comparable", True)]
    return out


METRIC_NAMES = {"Dice_fuzzy": "fuzzy-region Dice"}


def goal(pooled: dict) -> str:
    """The validity study's goal per set: Dice >= default + 1 point, HD95 not worse, nothing significantly worse
    over runs (the reasons it is not met, in that order)."""
    missed = [m for m, ok in (("Dice", pooled["delta_dice"] >= 1.0), ("HD95", pooled["delta_hd95_pct"] <= 0)) if not ok]
    worse = ", ".join(METRIC_NAMES.get(m, m) for m in pooled["worse"])
    if not missed and not worse:
        return "met"
    return "not met: " + "; ".join(filter(None, [", ".join(missed), worse and f"significantly worse: {worse}"]))


def _minus(text: str) -> str:
    return text.replace("-", "−")


def _fixed(x: float, digits: int) -> str:
    """x with `digits` decimals, halves rounded up as printed (2.745 -> 2.75; binary floats would give 2.74)."""
    return str(Decimal(repr(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def dice(x: float) -> str:
    return _fixed(x, 3)


def hd95(x: float) -> str:
    return _fixed(x, 2)


def points(x: float) -> str:
    return _minus(f"{x:+.1f}")


def percent(x: int) -> str:
    return _minus(f"{x:+d} %")


def p_value(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.1e}" if p < 0.001 else _fixed(p, 2) if p >= 0.01 else _fixed(p, 3))


def times(x: float | None) -> str:
    return "—" if x is None else f"{_fixed(x, 1)} ×"


def set_name(study: dict, s: dict) -> str:
    return f"{study['datasets'][s['dataset']]['name']}, {s['split']}"


def size(study: dict, s: dict) -> str:
    d = study["datasets"][s["dataset"]]
    return f"{d['train']} / {s.get('test', d['test'])}"


def headline_sets(study: dict) -> list[dict]:
    return [s for s in study["sets"] if s.get("headline")]


def time_range(study: dict) -> tuple[float, float]:
    """DALE's training time over default's, lowest and highest over the headline sets (one decimal)."""
    ratios = [pool(study, s["parts"])["time_x"] for s in headline_sets(study)]
    return float(_fixed(min(ratios), 1)), float(_fixed(max(ratios), 1))


def headline(study: dict) -> str:
    """README's table: the sets not chosen on, at the study's schedule, and one generated line of ranges."""
    lines = [
        "| data set (64 px) | train / test images | runs | Dice default | Dice DALE | HD95 px: default → DALE | "
        "DALE's time |",
        "|---|---|---|---|---|---|---|",
    ]
    deltas, hd, ps = [], [], []
    for s in headline_sets(study):
        p = pool(study, s["parts"])
        deltas.append(p["delta_dice"])
        hd.append(p["delta_hd95_pct"])
        ps += [p["p_runs"]] if p["p_runs"] is not None else []
        cells = [
            set_name(study, s),
            size(study, s),
            str(p["runs"]),
            dice(p["default"]["Dice"]),
            dice(p["dale"]["Dice"]),
        ]
        cells.append(f"{hd95(p['default']['HD95'])} → {hd95(p['dale']['HD95'])} ({percent(p['delta_hd95_pct'])})")
        cells.append(times(p["time_x"]))
        lines.append("| " + " | ".join(cells) + " |")
    low, high = time_range(study)
    chosen = [pool(study, s["parts"])["delta_dice"] for s in study["sets"] if s.get("chosen_on")]
    lines += [
        "",
        f"DALE's Dice against default: {points(min(deltas))} to {points(max(deltas))} points, p over runs ≥ "
        f"{math.floor(100 * min(ps)) / 100:.2f} where computed; HD95 {percent(min(hd))} to {percent(max(hd))}; "
        f"{low}–{high} × the training time. Not in the table: the data the configuration was chosen on (ISIC hold-out "
        f"seed 0, {' and '.join(points(d) for d in chosen)} points in two rounds of three runs).",
    ]
    return "\n".join(lines)


def results_sets(study: dict) -> str:
    """docs/results.md's table: every set of the verdict, the goal per set, and the literal reading for reference."""
    lines = [
        "| data set (64 px) | runs | Dice: default → DALE | Δ points | HD95 px: default → DALE | p Dice (runs) | "
        "DALE's time | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    met = 0
    for s in study["sets"]:
        p = pool(study, s["parts"])
        name = set_name(study, s) + (" (chosen on)" if s.get("chosen_on") else "")
        met += goal(p) == "met"
        cells = [
            name,
            str(p["runs"]),
            f"{dice(p['default']['Dice'])} → {dice(p['dale']['Dice'])}",
            points(p["delta_dice"]),
            f"{hd95(p['default']['HD95'])} → {hd95(p['dale']['HD95'])} ({percent(p['delta_hd95_pct'])})",
            p_value(p["p_runs"]) if len(s["parts"]) == 1 else "pooled",
            times(p["time_x"]) + ("¹" if p["time_notes"] else ""),
            goal(p),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    ref = study["reference"]
    p = pool(study, ref["parts"])
    lines.append(
        f"| for reference: {ref['label']} | {p['runs']} | {dice(p['default']['Dice'])} → {dice(p['dale']['Dice'])} | "
        f"{points(p['delta_dice'])} | {hd95(p['default']['HD95'])} → {hd95(p['dale']['HD95'])} "
        f"({percent(p['delta_hd95_pct'])}) | {p_value(p['p_runs'])} | — | {goal(p)} |"
    )
    notes = sorted({n for s in study["sets"] for n in pool(study, s["parts"])["time_notes"]})
    chosen = sum(goal(pool(study, s["parts"])) == "met" for s in study["sets"] if s.get("chosen_on"))
    lines += [
        "",
        f"The goal is met on {met} of these {len(study['sets'])} sets, {chosen} of them on the data chosen on. "
        "Pooled: runs from two tables, by run means.",
        "",
        "¹ Time from the undisturbed table only: " + "; ".join(notes) + ".",
    ]
    return "\n".join(lines)


def table4(study: dict) -> str:
    """The paper's Table-4 ablation on the shipped configuration: Dice, HD95 (and minutes per run) per column."""
    columns = study["table4"]["columns"]
    head = ["variant"]
    for c in columns:
        head += [f"{c['label']}: Dice", "HD95 px"] + (["min/run"] if c.get("time") else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in study["table4"]["rows"]:
        cells = [r["label"]]
        for c in columns:
            found = [row for t in c["tables"] for row in study["tables"][t]["rows"] if row["trainer"] == r["trainer"]]
            if found:
                cells += [dice(found[0]["Dice"]), hd95(found[0]["HD95"])]
                cells += [f"{found[0]['train_min']:.1f}"] if c.get("time") else []
            else:
                cells += ["not run", "—"] + (["—"] if c.get("time") else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget(study: dict) -> str:
    """Default nnU-Net trained for DALE's wall time (100 epochs) beside both at the study's 40 epochs."""
    lines = [
        "| data set (64 px) | runs | default, 40 epochs | DALE, 40 epochs | default, 100 epochs (DALE's time) | "
        "min/run: default / DALE / default 100 |",
        "|---|---|---|---|---|---|",
    ]
    for b in study["budget"]:
        d, s, longer = (_row(study, b["table"], b[k]) for k in ("default", "dale", "longer"))
        lines.append(
            f"| {b['label']} | {len(s['folds'])} | {dice(d['Dice'])} | {dice(s['Dice'])} | {dice(longer['Dice'])} | "
            f"{d['train_min']:.1f} / {s['train_min']:.1f} / {longer['train_min']:.1f} |"
        )
    return "\n".join(lines)


SECTIONS = {  # (file, section key) -> the table's generator
    (README, "headline"): headline,
    (RESULTS, "results-sets"): results_sets,
    (RESULTS, "results-table4"): table4,
    (RESULTS, "results-budget"): budget,
}


def differences(study: dict) -> list[str]:
    """The sections whose text differs from what the data give (missing ones included)."""
    return stale_sections(SECTIONS, study)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a table differs")
    args = parser.parse_args(argv)
    study = load()
    return generate_sections(SECTIONS, study, args.check, str(DATA.relative_to(REPO)), "python -m benchmarks.headline")


if __name__ == "__main__":
    sys.exit(main())
