"""The label-noise study (issue 31): Dice and HD95 against a controlled label-noise level, per trainer, at equal wall
time.

    python -m benchmarks.noise_study --dry-run          # the plan: every run, and which are recorded already
    python -m benchmarks.noise_study                    # all of it (resumable: finished steps and runs are reused)
    python -m benchmarks.noise_study --datasets isic2017 --levels mixed0 mixed0.5 --roles default dale --folds 0
    python -m benchmarks.noise_study --report-only      # the figure and the table again, from the JSON alone

Datasets: `isic2017` and `busi` (the subsets in ../shared/data, converted at --max-size px with a seeded 30 % hold-out
as benchmarks.real_data does it), each copied by `nnunet-dale label-noise` (nnunet_dale.label_noise: its test split
untouched) at the levels alpha = 0, 0.5 mixed, 0.5 biased and 0.8 mixed (`--levels mixed0 mixed0.5 biased0.5
mixed0.8`); `benchmark`: the built-in benchmark (50 training / 20 test cases, data seed --benchmark-seed) with its own
annotator at --noise 0, 1 and 2 (`annotator0 annotator1 annotator2`: kind "annotator", alpha = the --noise value).
Roles (`--roles`): `default` nnUNetTrainer_bench, `dale` nnUNetTrainerDALE_bench, `default_same_time`
nnUNetTrainer_benchShippedTime (default nnU-Net for the shipped DALE's measured wall time), `gce`
nnUNetTrainer_GCE_bench (generalised cross-entropy, a standard robust loss). Runs: `--folds` (default 0 1 2: nnU-Net's
own initialisation and train/validation split each, the same test cases).

Each (dataset, level) has its own work folder `<output>/<dataset>/<level>/` with the demo's pipeline
(nnunet_dale.demo: planning, training, prediction of the test cases, evaluation against their clean labels); a
finished training, prediction or evaluation is reused when the script is run again. Each run's record goes into
`docs/data/noise_study.json` (--data) as soon as it is evaluated, replacing an earlier record of the same dataset,
level, role and run: a JSON list of {"dataset", "kind", "alpha", "role", "trainer", "run", "dice", "hd95", "wall_s",
"label_dice"}, where dice and hd95 are the means over the run's test cases (HD95 over the cases where it is finite),
wall_s the training's wall time and label_dice the mean Dice(noisy, clean) of the training labels. From that JSON alone
it then writes the figure `docs/figures/noise-study.png` (--figure) and the table between `<!-- noise-study -->`
markers in docs/study-log.md (--log). Run nothing else meanwhile: two trainings on 2 cores slow each other many times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks.ablation import run_record as evaluation_means
from benchmarks.real_data import DATASETS as REAL_DATASETS
from benchmarks.real_data import SHARED_DATA, RealData, RealDataBenchmark
from benchmarks.report import portable_path, write_section
from benchmarks.trainers import add_study_trainers
from nnunet_dale.cli import USER_ERRORS
from nnunet_dale.demo import Demo, DemoError, DemoSettings, RawDatasetDemo, training_minutes
from nnunet_dale.files import atomic_write, json_safe
from nnunet_dale.label_noise import RECORD_KEY, add_label_noise
from nnunet_dale.nnunet_env import FOLDER_VARIABLES

REPO = Path(__file__).resolve().parents[1]
SECTION = "noise-study"

ROLES = {
    "default": "nnUNetTrainer_bench",
    "dale": "nnUNetTrainerDALE_bench",
    "default_same_time": "nnUNetTrainer_benchShippedTime",
    "gce": "nnUNetTrainer_GCE_bench",
}
DATASETS = ("isic2017", "busi", "benchmark")
FIELDS = ("dataset", "kind", "alpha", "role", "trainer", "run", "dice", "hd95", "wall_s", "label_dice")
RECORD_KEY_FIELDS = ("dataset", "kind", "alpha", "role", "run")  # a record with the same values replaces the old one
BENCHMARK_CASES = (50, 20)  # training / test cases of the built-in benchmark, as benchmarks.ablation


@dataclass(frozen=True)
class Level:
    """A noise level: the label-noise tool's kind and alpha, or the benchmark annotator's --noise (kind annotator)."""

    kind: str
    alpha: float

    @property
    def name(self) -> str:
        return f"{self.kind}{self.alpha:g}"


LEVELS = {
    "isic2017": (Level("mixed", 0.0), Level("mixed", 0.5), Level("biased", 0.5), Level("mixed", 0.8)),
    "busi": (Level("mixed", 0.0), Level("mixed", 0.5), Level("biased", 0.5), Level("mixed", 0.8)),
    "benchmark": (Level("annotator", 0.0), Level("annotator", 1.0), Level("annotator", 2.0)),
}
FIRST_ID = {"isic2017": 830, "busi": 840, "benchmark": 850}  # the noisy datasets' ids: FIRST_ID + the level's index


@dataclass(frozen=True)
class Cell:
    """One dataset at one noise level: a work folder and an nnU-Net dataset of its own."""

    dataset: str
    level: Level

    @property
    def dataset_id(self) -> int:
        return FIRST_ID[self.dataset] + LEVELS[self.dataset].index(self.level)

    def folder(self, root: Path) -> Path:
        return Path(root) / self.dataset / self.level.name


@dataclass(frozen=True)
class PlannedRun:
    cell: Cell
    role: str
    fold: int

    @property
    def trainer(self) -> str:
        return ROLES[self.role]

    def key(self) -> tuple:
        return (self.cell.dataset, self.cell.level.kind, self.cell.level.alpha, self.role, self.fold)


# ----------------------------------------------------------------------------------------------------------------------
# records: building, merging, reading
# ----------------------------------------------------------------------------------------------------------------------


def run_record(run: PlannedRun, evaluation: Path, wall_s: float, label_dice: float | None) -> dict[str, Any]:
    """The JSON record of a finished run: its evaluation folder's means over the test cases (the first foreground
    label; HD95 over the cases where it is finite), the training wall time and the training labels' Dice."""
    means = evaluation_means(run.trainer, run.fold, evaluation, wall_s / 60)
    return {
        "dataset": run.cell.dataset,
        "kind": run.cell.level.kind,
        "alpha": run.cell.level.alpha,
        "role": run.role,
        "trainer": run.trainer,
        "run": run.fold,
        "dice": means["Dice"],
        "hd95": means["HD95"],
        "wall_s": round(wall_s, 1),
        "label_dice": label_dice,
    }


def record_key(record: dict[str, Any]) -> tuple:
    return tuple(record[field] for field in RECORD_KEY_FIELDS)


def _order(record: dict[str, Any]) -> tuple:
    dataset = DATASETS.index(record["dataset"]) if record["dataset"] in DATASETS else len(DATASETS)
    role = list(ROLES).index(record["role"]) if record["role"] in ROLES else len(ROLES)
    return (dataset, record["dataset"], record["alpha"], record["kind"], role, record["role"], record["run"])


def merge_records(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` with the records of `new` added; a new record replaces an old one with the same dataset, kind, alpha,
    role and run (a re-run, or the role trained with another class). Sorted by dataset, level, role and run."""
    merged = {record_key(r): r for r in old}
    merged.update({record_key(r): r for r in new})
    return sorted(merged.values(), key=_order)


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of the study's JSON file ([] if there is none yet); a ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(records, list) or not all(isinstance(r, dict) and set(FIELDS) <= set(r) for r in records):
        raise ValueError(f"{path} is not a list of noise-study records with the fields {', '.join(FIELDS)}")
    return records


def save_records(path: Path, records: list[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(records), indent=1)  # NaN as null: strict JSON
    atomic_write(path, lambda f: f.write(text + "\n"))


# ----------------------------------------------------------------------------------------------------------------------
# the table and the figure, from the records alone
# ----------------------------------------------------------------------------------------------------------------------


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean_sd(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{digits}f}{sd}"


def _groups(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """(dataset, alpha, kind, role) -> its records, in the records' order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in sorted(records, key=_order):
        groups.setdefault((r["dataset"], r["alpha"], r["kind"], r["role"]), []).append(r)
    return groups


def _paired_change(ours: list[dict], base: list[dict], metric: str) -> tuple[float, float] | None:
    """(mean of ours - mean of base, and that change relative to base's mean) over the runs both have."""
    base_by_run = {r["run"]: r[metric] for r in base}
    pairs = [(r[metric], base_by_run[r["run"]]) for r in ours if r["run"] in base_by_run]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return None
    a, b = statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)
    return a - b, (a - b) / b if b else math.nan


TABLE_HEADER = (
    "| dataset | noise | label Dice | role | trainer | runs | Dice | Δ Dice vs default (points) | HD95 ↓ (px) "
    "| Δ HD95 vs default | train min/run |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def format_table(records: list[dict[str, Any]]) -> str:
    """One row per dataset, noise level and role: mean ± sd over runs of the run means, the change against `default`
    on the same runs (Dice in points, HD95 in %), the training labels' Dice(noisy, clean) and the median minutes."""
    groups = _groups(records)
    rows = [TABLE_HEADER]
    for (dataset, alpha, kind, role), runs in groups.items():
        base = groups.get((dataset, alpha, kind, "default"), [])
        dice_change = _paired_change(runs, base, "dice") if role != "default" else None
        hd_change = _paired_change(runs, base, "hd95") if role != "default" else None
        label = _finite(r.get("label_dice") for r in runs)
        minutes = _finite(r["wall_s"] / 60 if r["wall_s"] is not None else None for r in runs)
        cells = [
            dataset,
            f"{kind} {alpha:g}",
            f"{statistics.fmean(label):.3f}" if label else "—",
            role,
            f"`{runs[0]['trainer']}`" + (" …" if len({r["trainer"] for r in runs}) > 1 else ""),
            ", ".join(str(r["run"]) for r in runs),
            _mean_sd(_finite(r["dice"] for r in runs), 3),
            "—" if dice_change is None else f"{100 * dice_change[0]:+.1f}",
            _mean_sd(_finite(r["hd95"] for r in runs), 2),
            "—" if hd_change is None or not math.isfinite(hd_change[1]) else f"{100 * hd_change[1]:+.0f} %",
            f"{statistics.median(minutes):.1f}" if minutes else "—",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


ROLE_COLOURS = {"default": "tab:blue", "dale": "tab:red", "default_same_time": "tab:purple", "gce": "tab:green"}
KIND_STYLES = {"mixed": "-", "annotator": "-", "biased": "--", "eroded": ":", "missed": "-."}


def plot_study(records: list[dict[str, Any]], output: Path, dpi: int = 100) -> Path:
    """Dice (top) and HD95 (bottom) against the noise level, one column per dataset, one colour per role, one line
    style per kind of noise (each line starts at the dataset's clean level, alpha 0); points are the means over runs
    and error bars their standard deviation. Written from the records alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not records:
        raise ValueError("no noise-study records to plot")
    datasets = sorted({r["dataset"] for r in records}, key=lambda d: (DATASETS + (d,)).index(d))
    roles = sorted({r["role"] for r in records}, key=lambda x: (list(ROLES) + [x]).index(x))
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.2 * len(datasets), 6.4), squeeze=False)
    for column, dataset in enumerate(datasets):
        mine = [r for r in records if r["dataset"] == dataset]
        alphas = sorted({r["alpha"] for r in mine})
        span = (max(alphas) - min(alphas)) or 1.0
        kinds = sorted({r["kind"] for r in mine if r["alpha"] != 0}) or sorted({r["kind"] for r in mine})
        for row, (metric, label) in enumerate((("dice", "Dice"), ("hd95", "HD95 (px)"))):
            ax = axes[row][column]
            for i, role in enumerate(roles):
                shift = (i - (len(roles) - 1) / 2) * 0.012 * span  # error bars side by side
                for kind in kinds:
                    points = [r for r in mine if r["role"] == role and (r["kind"] == kind or r["alpha"] == 0)]
                    xs, means, sds = [], [], []
                    for alpha in sorted({r["alpha"] for r in points}):
                        values = _finite(r[metric] for r in points if r["alpha"] == alpha)
                        if values:
                            xs.append(alpha + shift)
                            means.append(statistics.fmean(values))
                            sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
                    if xs:
                        ax.errorbar(xs, means, yerr=sds, color=ROLE_COLOURS.get(role), capsize=3, marker="o",
                                    markersize=4, linestyle=KIND_STYLES.get(kind, "-"), linewidth=1.3)  # fmt: skip
            ax.set_xticks(alphas)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(dataset)
            else:
                ax.set_xlabel("annotator --noise" if kinds == ["annotator"] else "α (share of noisy training labels)")
    handles = [Line2D([], [], color=ROLE_COLOURS.get(r), marker="o", label=r) for r in roles]
    kinds = sorted({r["kind"] for r in records if r["alpha"] != 0})
    handles += [Line2D([], [], color="grey", linestyle=KIND_STYLES.get(k, "-"), label=k) for k in kinds]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Label-noise study: means over runs ± sd (test labels clean)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    return output


def write_report(data: Path, figure: Path, log: Path) -> str:
    """The figure and the study-log section, both from the JSON file `data` alone; returns the section's text."""
    records = load_records(data)
    if not records:
        raise ValueError(f"{data} holds no records yet: nothing to report")
    plot_study(records, figure)
    link = os.path.relpath(Path(figure).resolve(), Path(log).resolve().parent)
    text = "\n".join(
        [
            "## Label-noise study: the runs",
            "",
            f"Generated by `python -m benchmarks.noise_study` from `{portable_path(str(Path(data).resolve()))}` "
            f"({len(records)} runs). Cells: mean ± sd over the runs of each run's mean over its test cases (clean "
            "labels). Δ against `default` on the same runs. Label Dice: mean Dice(noisy, clean) of the training "
            "labels.",
            "",
            format_table(records),
            "",
            f"![Dice and HD95 against the noise level, per role]({link})",
        ]
    )
    write_section(Path(log), SECTION, text)
    return text


# ----------------------------------------------------------------------------------------------------------------------
# the runs
# ----------------------------------------------------------------------------------------------------------------------


def plan(datasets: Sequence[str], levels: Sequence[str] | None, roles: Sequence[str], folds: Sequence[int]):
    """The runs, fold by fold (a stopped study has whole curves with fewer runs), then dataset, level and role."""
    cells = [Cell(d, level) for d in datasets for level in LEVELS[d] if levels is None or level.name in levels]
    return [PlannedRun(cell, role, fold) for fold in folds for cell in cells for role in roles]


class NoiseStudy:
    """The pipelines of the study's cells (built on first use), and the records they produce."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root = Path(args.output).resolve()
        self._pipelines: dict[Cell, Demo] = {}

    def pipeline(self, cell: Cell) -> Demo:
        """The cell's pipeline, with its dataset made, planned and preprocessed."""
        if cell not in self._pipelines:
            demo = self._make_pipeline(cell)
            add_study_trainers(demo.env)
            demo.prepare()
            self._pipelines[cell] = demo
        return self._pipelines[cell]

    def _make_pipeline(self, cell: Cell) -> Demo:
        settings = DemoSettings(baseline=ROLES["default"], dale=ROLES["dale"])
        if cell.dataset == "benchmark":
            num_train, num_test = BENCHMARK_CASES
            return Demo(cell.folder(self.root), DemoSettings(
                dataset_id=cell.dataset_id, num_train=num_train, num_test=num_test, seed=self.args.benchmark_seed,
                noise=cell.level.alpha, baseline=settings.baseline, dale=settings.dale,
            ))  # fmt: skip
        source = self.source(cell.dataset)
        name = f"{source.name.split('_', 1)[1]}_{cell.level.kind}{round(100 * cell.level.alpha)}"
        raw = cell.folder(self.root) / "nnUNet_raw"
        target = raw / f"Dataset{cell.dataset_id:03d}_{name}"
        demo = RawDatasetDemo(cell.folder(self.root), target, settings)
        wanted = {"source": source.name, "alpha": cell.level.alpha, "kind": cell.level.kind,
                  "seed": self.args.noise_seed}  # fmt: skip
        if target.exists():
            made = json.loads((target / "dataset.json").read_text()).get(RECORD_KEY, {})
            if {k: made.get(k) for k in wanted} != wanted:
                raise DemoError(f"{target} was made with other label-noise settings than {wanted}: use another -o")
        else:
            with mock.patch.dict(os.environ, {k: demo.env[k] for k in FOLDER_VARIABLES}):
                add_label_noise(source, cell.dataset_id, cell.level.alpha, kind=cell.level.kind,
                                seed=self.args.noise_seed, name=name, raw_root=raw)  # fmt: skip
        return demo

    def source(self, dataset: str) -> Path:
        """The real dataset converted with its seeded hold-out, once, in `<output>/<dataset>/source`."""
        data = RealData(dataset, SHARED_DATA / REAL_DATASETS[dataset][0], self.args.max_size, 0.3,
                        self.args.hold_out_seed)  # fmt: skip
        if not data.source.exists():
            raise FileNotFoundError(f"{data.source} does not exist (see ../shared/data/README.md)")
        converter = RealDataBenchmark(self.root / dataset / "source", data, DemoSettings())
        with mock.patch.dict(os.environ, {k: converter.env[k] for k in FOLDER_VARIABLES}):
            return converter.make_dataset()

    def run(self, planned: PlannedRun) -> dict[str, Any]:
        """Train (or reuse), predict and evaluate one run; its record."""
        demo = self.pipeline(planned.cell)
        evaluation = demo.train_predict_evaluate(planned.trainer, planned.fold)
        wall_s = 60 * training_minutes(demo, planned.trainer, planned.fold)
        return run_record(planned, evaluation, wall_s, label_dice(demo.dataset))


def label_dice(dataset: Path) -> float | None:
    """Mean Dice(noisy, clean) of a dataset's training labels: the label-noise tool's record in dataset.json, or the
    built-in benchmark's cases.json summary; None if neither is there."""
    made = json.loads((Path(dataset) / "dataset.json").read_text()).get(RECORD_KEY)
    if made:
        return made["mean_dice"]
    cases = Path(dataset) / "cases.json"
    return json.loads(cases.read_text())["summary"]["mean_case_dice"] if cases.is_file() else None


def describe_plan(runs: list[PlannedRun], records: list[dict[str, Any]]) -> str:
    """The --dry-run listing: one line per run, marked when the JSON already holds its record."""
    recorded = {record_key(r) for r in records}
    lines = []
    for run in runs:
        status = "recorded" if run.key() in recorded else "to run"
        lines.append(
            f"{run.cell.dataset:9s} {run.cell.level.name:11s} (dataset {run.cell.dataset_id}) {run.role:17s} "
            f"{run.trainer:32s} fold {run.fold}: {status}"
        )
    todo = sum(run.key() not in recorded for run in runs)
    lines.append(f"{len(runs)} runs, {todo} not recorded yet (finished trainings in the work folder are reused)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = sorted({level.name for levels in LEVELS.values() for level in levels})
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--levels", nargs="+", choices=names, help="default: every level of each dataset")
    parser.add_argument("--roles", nargs="+", choices=list(ROLES), default=list(ROLES))
    parser.add_argument("--folds", type=int, nargs="+", choices=range(5), default=[0, 1, 2])
    parser.add_argument("--max-size", type=int, default=64, help="longer image side in px (real datasets)")
    parser.add_argument("--hold-out-seed", type=int, default=0, help="seed of the 30 %% hold-out (real datasets)")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of nnunet-dale label-noise (real datasets)")
    parser.add_argument("--benchmark-seed", type=int, default=0, help="data seed of the built-in benchmark")
    parser.add_argument("-o", "--output", default="dale_noise_study", help="work folder, reused when re-run")
    parser.add_argument("--data", default=str(REPO / "docs" / "data" / "noise_study.json"), help="the records")
    parser.add_argument("--figure", default=str(REPO / "docs" / "figures" / "noise-study.png"))
    parser.add_argument("--log", default=str(REPO / "docs" / "study-log.md"), help="markdown file for the table")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and what is recorded; run nothing")
    parser.add_argument("--report-only", action="store_true", help="only the figure and the table from --data")
    args = parser.parse_args(argv)
    if args.dry_run and args.report_only:
        parser.error("--dry-run and --report-only exclude each other")
    args.runs = plan(args.datasets, args.levels, args.roles, args.folds)
    if not args.runs and not args.report_only:
        parser.error(f"no level of {' '.join(args.datasets)} among --levels {' '.join(args.levels or [])}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.dry_run:
            print(describe_plan(args.runs, load_records(Path(args.data))))
            return 0
        if not args.report_only:
            study = NoiseStudy(args)
            for planned in args.runs:
                record = study.run(planned)
                save_records(Path(args.data), merge_records(load_records(Path(args.data)), [record]))
                print(f"[noise study] recorded {json.dumps(record)}", flush=True)
        print(write_report(Path(args.data), Path(args.figure), Path(args.log)), flush=True)
    except USER_ERRORS as error:
        print(f"noise_study.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
