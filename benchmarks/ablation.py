"""The validity study: a list of trainers x runs on one dataset, one Table-4-style table in docs/study-log.md.

    python -m benchmarks.ablation --dataset isic2017 --folds 0 --trainers nnUNetTrainer_bench \\
        nnUNetTrainerDALE_paper_bench nnUNetTrainerDALE_bench            # screening: one run per variant
    python -m benchmarks.ablation --dataset isic2017 --folds 0 1 2 --trainers nnUNetTrainer_bench \\
        nnUNetTrainerDALE_bench                                          # confirmation: three runs
    python -m benchmarks.ablation --dataset isic2017 --hold-out-seed 1 ...   # a hold-out seed not chosen on
    python -m benchmarks.ablation --dataset benchmark --seed 1 ...            # the built-in benchmark, data seed 1
    python -m benchmarks.ablation ... --postprocessed    # the same runs after nnU-Net's own postprocessing
    python -m benchmarks.ablation --dataset benchmark ... --test-cases 200   # the same runs on 200 test cases
    python -m benchmarks.ablation --dataset benchmark ... --test-cases 200 --test-lesion-scale 2  # size shift
    python -m benchmarks.ablation --dataset isic2017 --hold-out-by largest ...  # size shift: test the largest lesions

Datasets: `isic2017` / `busi` (the subsets in ../shared/data, converted at --max-size px with a seeded 30 % hold-out,
as benchmarks.real_data) and `benchmark` (the built-in noisy-label benchmark, 50 training / 20 test cases,
evaluated against the clean labels, as benchmarks.noisy_benchmark). The first trainer is the baseline. Each
(trainer, fold) is trained, predicted and evaluated once and reused when the script is run again with the same work
folder, so a study can be stopped and resumed, and trainers or folds added later. Writes the section
`<!-- ablation-<dataset>-<px>px-seed<S>[-<tag>][-postprocessed] -->` (`ablation-benchmark-seed<S>[-<tag>][-test<N>]` for
the built-in benchmark) of docs/study-log.md (or --results): per trainer the mean ± sd over
runs of Dice, IoU, HD95, ASD and fuzzy-region Dice, the change against the baseline on the same folds, p over cases
(per-case means over runs) and over runs (paired by fold), and the training wall time per run; below it the Dice per
lesion-size bin and the cases below Dice 0.3 (`nnunet_dale.compare.size_bins`). The numbers behind the section go
to `docs/data/ablation/<key>.json` (one record per trainer and run, and the size bins).
Run nothing else meanwhile: two trainings on 2 cores slow each other many times.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from benchmarks.real_data import DATASETS, SHARED_DATA, RealData, RealDataBenchmark
from benchmarks.report import provenance, read_section, write_section
from benchmarks.trainers import add_study_trainers
from nnunet_dale.compare import DEFAULT_METRICS as METRICS
from nnunet_dale.compare import LOWER_IS_BETTER, compare, format_p, load_run
from nnunet_dale.compare.size_bins import format_size_table, size_breakdown
from nnunet_dale.demo import Demo, DemoSettings, training_minutes
from nnunet_dale.files import atomic_write
from nnunet_dale.holdout import HOLD_OUT_BY, check_hold_out

REPO = Path(__file__).resolve().parents[1]


def make_study(args: argparse.Namespace) -> Demo:
    """The dataset's pipeline (RealDataBenchmark or the built-in benchmark's Demo), its trainers from --trainers."""
    baseline, *others = args.trainers
    if args.dataset == "benchmark":
        settings = DemoSettings(
            dataset_id=992, num_train=50, num_test=20, seed=args.seed, baseline=baseline, dale=others[0]
        )
        demo = Demo(args.output, settings)
        add_study_trainers(demo.env)
        return demo
    source = SHARED_DATA / DATASETS[args.dataset][0]
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (see ../shared/data/README.md)")
    data = RealData(args.dataset, source, args.max_size, 0.3, args.hold_out_seed, args.hold_out_by)
    return RealDataBenchmark(args.output, data, DemoSettings(baseline=baseline, dale=others[0]))


def _runs_mean_sd(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    digits = 2 if mean >= 10 else 3
    return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def postprocessing_note(study: Demo, evaluations: dict[str, dict[int, Path]]) -> str:
    """What nnU-Net's postprocessing did per trainer: in how many runs it kept only the largest component."""
    kept = {t: sum(bool(study.postprocessing_chosen(t, f)) for f in runs) for t, runs in evaluations.items()}
    counts = "; ".join(f"`{t}` {kept[t]} of {len(evaluations[t])}" for t in evaluations)
    return (
        " Predictions after nnU-Net's own postprocessing, chosen per run on its validation fold "
        "(nnUNetv2_determine_postprocessing; the test labels play no part) and applied to its test predictions; "
        f"runs in which it keeps only the largest foreground component: {counts}."
    )


def table_row(trainer: str, folds: list[int], comparison: dict | None, minutes: list[float], baseline: str) -> str:
    """One row: mean ± sd over runs per metric, Dice/HD95 change vs the baseline and their p values, wall time."""
    label = comparison["labels"][0]
    stats = comparison["stats"][label][trainer if trainer in comparison["stats"][label] else baseline]
    cells = [f"`{trainer}`", ", ".join(map(str, folds))]
    cells += [_runs_mean_sd(stats[m]["run_means"]) for m in METRICS]
    if trainer == baseline:
        cells += ["—"] * 4
    else:
        c = comparison["comparisons"][label][trainer]
        base = comparison["stats"][label][baseline]
        dice = 100 * (stats["Dice"]["mean"] - base["Dice"]["mean"])
        cells.append(f"{dice:+.1f}")
        cells.append(f"{format_p(c['Dice']['p_cases'])} / {format_p(c['Dice']['p_runs'])}")
        cells.append(f"{100 * c['HD95']['rel_change']:+.0f} %")
        worse = [
            m
            for m in METRICS
            if (c[m]["p_runs"] or 1) < 0.05
            and ((c[m]["rel_change"] or 0) > 0 if m in LOWER_IS_BETTER else (c[m]["rel_change"] or 0) < 0)
        ]
        cells.append(", ".join(worse) or "none")
    cells.append(f"{statistics.median(minutes):.1f}")
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| trainer | folds | Dice | IoU | HD95 ↓ (px) | ASD ↓ (px) | fuzzy Dice | Δ Dice (points) | p Dice (cases / runs) "
    "| Δ HD95 | significantly worse (p runs < 0.05) | train min/run |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=[*sorted(DATASETS), "benchmark"], default="isic2017")
    parser.add_argument("--trainers", nargs="+", required=True, help="the baseline first, then the variants")
    parser.add_argument("--screen", nargs="*", default=[], help="more variants, trained on the first fold only")
    parser.add_argument("--folds", type=int, nargs="+", choices=range(5), default=[0])
    parser.add_argument("--max-size", type=int, default=64, help="longer image side in px (real datasets)")
    parser.add_argument("--hold-out-seed", type=int, default=0, help="seed of the 30 %% hold-out (real datasets)")
    parser.add_argument(
        "--hold-out-by", choices=HOLD_OUT_BY, default="random",
        help="real datasets: 'largest' holds out the 30 %% of cases with the largest lesions (size-shift test)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="data seed of the built-in benchmark")
    parser.add_argument("-o", "--output", help="work folder, reused when re-run (default dale_ablation_<key>)")
    parser.add_argument("--results", default=str(REPO / "docs" / "study-log.md"), help="markdown file to update")
    parser.add_argument("--data", help="folder of the JSON data files (default: data/ablation beside --results)")
    parser.add_argument("--title", default="", help="what this table is for (screening, confirmation, ...)")
    parser.add_argument("--tag", default="", help="suffix of the section key: a new table beside earlier ones")
    parser.add_argument(
        "--postprocessed",
        action="store_true",
        help="evaluate after nnU-Net's own postprocessing, chosen per run on its validation fold (own section)",
    )
    parser.add_argument(
        "--test-cases",
        type=int,
        help="benchmark only: evaluate the finished runs on this many of its test cases, > 20 (own section)",
    )
    parser.add_argument(
        "--test-lesion-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="benchmark only: evaluate on test cases whose lesions are S times larger (size-shift test, own section)",
    )
    args = parser.parse_args(argv)
    if args.tag and not args.tag.replace("-", "").isalnum():
        parser.error(f"--tag must be letters, digits and '-'; got {args.tag!r}")
    if len(args.trainers) < 2:
        parser.error("--trainers needs the baseline and at least one variant")
    if args.test_cases is not None and (args.dataset != "benchmark" or args.test_cases <= 20 or args.postprocessed):
        parser.error(
            "--test-cases is for the built-in benchmark (> 20, its standard test set), without --postprocessed"
        )
    if args.test_lesion_scale != 1.0 and (args.dataset != "benchmark" or args.postprocessed):
        parser.error("--test-lesion-scale is for the built-in benchmark, without --postprocessed")
    if args.hold_out_by != "random" and args.dataset == "benchmark":
        parser.error("--hold-out-by is for the real datasets (the benchmark has its own test set)")
    if args.dataset == "benchmark":
        args.key, args.max_size = f"ablation-benchmark-seed{args.seed}", 64
    else:
        check_hold_out(0.3, args.hold_out_seed)
        args.key = f"ablation-{args.dataset}-{args.max_size}px-seed{args.hold_out_seed}"
        args.key += "-largest" if args.hold_out_by == "largest" else ""
    args.key += f"-{args.tag}" if args.tag else ""
    args.key += "-postprocessed" if args.postprocessed else ""
    args.key += f"-test{args.test_cases}" if args.test_cases else ""
    args.key += f"-scale{args.test_lesion_scale:g}".replace(".", "p") if args.test_lesion_scale != 1.0 else ""
    args.output = Path(args.output or f"dale_{args.key.replace('-', '_')}")
    return args


def data_file(args: argparse.Namespace) -> Path:
    return Path(args.data or Path(args.results).parent / "data" / "ablation") / f"{args.key}.json"


def check_section_is_this_studys(args: argparse.Namespace) -> None:
    """Refuse, before any work, to overwrite a section of --results that another work folder (by name) wrote (an earlier
    study under the same key): such a table is kept, and the new one needs a --tag."""
    if read_section(Path(args.results), args.key) is None:
        return
    made = json.loads(data_file(args).read_text()).get("output") if data_file(args).is_file() else None
    if made != Path(args.output).name:
        raise SystemExit(
            f"ablation.py: error: {args.results} already holds the section {args.key} from "
            f"{made or 'an earlier study'}; pass --tag to write this study beside it"
        )


def run(args: argparse.Namespace) -> str:
    check_section_is_this_studys(args)
    start = time.perf_counter()
    study = make_study(args)
    study.prepare()
    baseline = args.trainers[0]
    evaluations: dict[str, dict[int, Path]] = {t: {} for t in args.trainers}
    for fold in args.folds:  # fold by fold: a stopped study has whole folds to compare
        for trainer in args.trainers:
            evaluations[trainer][fold] = study.train_predict_evaluate(trainer, fold)
    for trainer in args.screen:
        evaluations[trainer] = {args.folds[0]: study.train_predict_evaluate(trainer, args.folds[0])}
    if args.postprocessed:
        evaluations = {t: {f: study.postprocess_evaluate(t, f) for f in runs} for t, runs in evaluations.items()}
    if args.test_cases or args.test_lesion_scale != 1.0:
        num_test = args.test_cases or 20
        evaluations = {
            t: {f: study.more_test_cases_evaluate(t, f, num_test, args.test_lesion_scale) for f in runs}
            for t, runs in evaluations.items()
        }
    rows, records = [], []
    for trainer in [*args.trainers, *args.screen]:
        folds = sorted(evaluations[trainer])
        other = trainer if trainer != baseline else args.trainers[1]
        runs = {baseline: [evaluations[baseline][f] for f in folds], other: [evaluations[other][f] for f in folds]}
        comparison = compare(runs, study.out / "ablation" / other, num_examples=0)
        minutes = [training_minutes(study, trainer, f) for f in folds]
        rows.append(table_row(trainer, folds, comparison, minutes, baseline))
        records += [run_record(trainer, f, evaluations[trainer][f], m) for f, m in zip(folds, minutes)]
    sizes = size_breakdown({t: [evaluations[t][f] for f in sorted(evaluations[t])] for t in evaluations})
    hours = (time.perf_counter() - start) / 3600
    data = study.describe_data() if hasattr(study, "describe_data") else "built-in benchmark, 50 / 20 cases, 64 px"
    if args.test_cases:
        data = f"built-in benchmark, 50 training cases, 64 px, evaluated on its first {args.test_cases} test cases "
        data += "(the first 20 are the standard test set)"
    command = "python -m benchmarks.ablation " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            f"## Ablation: {args.key.removeprefix('ablation-')}" + (f" — {args.title}" if args.title else ""),
            "",
            f"Command: {provenance(command, hours)} (steps reused from earlier invocations are not counted). "
            f"Data: {data}. Baseline: `{baseline}`. Metric cells: mean ± sd over the runs (folds) of each run's "
            "mean over the test cases. Δ Dice and p against the baseline on the same folds: p (cases) is a paired "
            "t-test over the test cases' means over runs, p (runs) over run means paired by fold (n/a for one run)."
            + (postprocessing_note(study, evaluations) if args.postprocessed else ""),
            "",
            HEADER,
            *rows,
            "",
            "Dice by lesion size (share of the image covered by the reference lesion; the mean over the bin's cases "
            "of each case's Dice averaged over runs) and, in brackets, the cases below Dice 0.3 per run:",
            "",
            format_size_table(sizes),
        ]
    )
    write_section(Path(args.results), args.key, text)
    data = data_file(args)
    data.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "key": args.key, "command": command, "output": Path(args.output).name, "baseline": baseline,
        "runs": records, "size_bins": sizes,
    }  # fmt: skip
    atomic_write(data, lambda f: f.write(json.dumps(payload, indent=1) + "\n"))
    return text


def run_record(trainer: str, fold: int, evaluation: Path, minutes: float) -> dict:
    """One run's means over its test cases (the first foreground label) and its training minutes."""
    cases = load_run(evaluation)["cases"].values()
    means = {}
    for metric in METRICS:
        values = [r["metrics"]["1"].get(metric) for r in cases if "1" in r["metrics"]]
        finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        means[metric] = statistics.fmean(finite) if finite else None
    return {"trainer": trainer, "fold": fold, **means, "train_min": round(minutes, 3)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(run(args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
