"""The longer run of the built-in noisy-label benchmark: default nnU-Net vs DALE over several runs (folds).

    python -m benchmarks.noisy_benchmark --train 50            # the study log's: 50 training / 20 test, 3 runs, ~1.3 h
    python -m benchmarks.noisy_benchmark                       # 60 training cases (nnU-Net then plans batch 3): ~2 h
    python -m benchmarks.noisy_benchmark --folds 0 --train 40  # shorter

Times are for 2 idle CPU cores; run nothing else meanwhile (two trainings on 2 cores slow each other many times).

Same pipeline as `nnunet-dale demo` (real nnU-Net planning, training, prediction; evaluation against the clean test
labels), with the schedule of nnUNetTrainer_bench / nnUNetTrainerDALE_bench (40 epochs x 25 iterations) and one run
per fold (each fold: its own random initialisation and train/validation split; the test set is the same). Writes the
comparison table, the command, the time and one time-to-accuracy row per fold (benchmarks.time_to_accuracy) to
docs/study-log.md (or --results), and the figure to docs/figures/results-benchmark.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from nnunet_dale.demo import Demo, DemoSettings

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default="dale_benchmark", help="work folder (reused when re-run)")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="benchmark data seed")
    parser.add_argument("--results", default=str(REPO / "docs" / "study-log.md"), help="markdown file to update")
    args = parser.parse_args()
    from benchmarks.report import provenance, write_section
    from benchmarks.time_to_accuracy import TABLE_HEADER, format_row, time_to_accuracy
    from benchmarks.trainers import add_study_trainers

    settings = DemoSettings(
        dataset_id=992, num_train=args.train, num_test=args.test, seed=args.seed,
        baseline="nnUNetTrainer_bench", dale="nnUNetTrainerDALE_bench", same_time=None,
    )  # fmt: skip
    start = time.perf_counter()
    demo = Demo(Path(args.output), settings)
    add_study_trainers(demo.env)
    demo.prepare()
    runs = demo.run_folds(args.folds)
    results = demo.out / "nnUNet_results" / demo.dataset.name
    speed = [(fold, time_to_accuracy(results, settings.baseline, settings.dale, fold)) for fold in args.folds]
    table = demo.compare(runs, omega_fold=args.folds[0])
    hours = (time.perf_counter() - start) / 3600
    print(table)

    figure = REPO / "docs" / "figures" / "results-benchmark.png"
    shutil.copyfile(demo.out / "comparison" / "comparison.png", figure)
    command = "python -m benchmarks.noisy_benchmark " + " ".join(sys.argv[1:])
    lines = [
        "## Built-in noisy-label benchmark (longer run)",
        "",
        f"Command: {provenance(command, hours)}. Data: `make_benchmark` seed {args.seed}, "
        f"{args.train} training cases with noisy labels, {args.test} test cases evaluated against their clean labels, "
        f"64 x 64. Schedule: {settings.baseline} / {settings.dale}, 40 epochs x 25 iterations. Runs: folds "
        f"{', '.join(map(str, args.folds))} (own initialisation and train/validation split each; the same test set).",
        "",
        table.strip(),
        "",
        "Time to accuracy (wall time at which DALE's validation pseudo-Dice, nnU-Net's EMA, first reaches the default "
        "trainer's final one; ratio < 1 means DALE got there sooner):",
        "",
        TABLE_HEADER,
        *[format_row(fold, r) for fold, r in speed],
        "",
        "![per-case comparison and examples](figures/results-benchmark.png)",
    ]
    write_section(Path(args.results), "noisy-benchmark", "\n".join(lines))


if __name__ == "__main__":
    main()
