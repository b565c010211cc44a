"""Default nnU-Net vs DALE on real lesion data: a downsampled public dataset with a held-out test split.

    python -m benchmarks.real_data                        # ISIC 2017 subset, 64 px, 30 % held out, folds 0 1 2
    python -m benchmarks.real_data --dataset busi --folds 0
    python -m benchmarks.real_data --quick -o rd --results rd/results.md   # smoke run (2-epoch schedules)

Converts the dataset with `nnunet-dale convert NAME SOURCE --max-size PX --hold-out F --hold-out-seed S`: the
default sources are the subsets in `shared/data` next to the repository (`ISIC2017_val_subset`: 98 RGB dermoscopy
pairs of the ISIC 2017 validation split, no official test split; `BUSI_subset`: 149 grey ultrasound pairs, 50 of
them normal cases with empty masks), and the hold-out moves a seeded share of the cases, stratified by empty /
non-empty mask, to imagesTs/labelsTs. Then the demo's pipeline (`nnunet_dale.demo.RawDatasetDemo`): nnU-Net planning
and preprocessing; nnUNetTrainer_bench and nnUNetTrainerDALE_bench (the same schedule) for each fold, i.e. nnU-Net's
own initialisation and train/validation split of the training part, with the same test part; nnUNetv2_predict of the
test cases; evaluation against their reference labels (the datasets' own annotations, not clean labels as in the
built-in benchmark); comparison. Writes the section `<!-- real-data-<dataset> -->` of docs/study-log.md (or --results)
and the figure `figures/results-<dataset>.png` next to that file. The work folder is reused when the script is run
again with the same data settings (finished conversion, planning, trainings and predictions are kept).

Each dataset is trained and tested on its own. A cross-dataset test (train on ISIC 2017, test on BUSI) is not done:
RGB dermoscopy and grey ultrasound are different modalities with different input channels (3 vs 1), so an ISIC model
cannot even take BUSI images, and such a number would say nothing about DALE's handling of fuzzy regions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from benchmarks.trainers import add_study_trainers, study_trainers
from nnunet_dale import variants
from nnunet_dale.cli import USER_ERRORS
from nnunet_dale.converters import convert, get_converter
from nnunet_dale.demo import DemoError, DemoSettings, RawDatasetDemo
from nnunet_dale.holdout import check_hold_out
from nnunet_dale.nnunet_env import FOLDER_VARIABLES

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# dataset -> (default subset folder in SHARED_DATA, dataset id, what it is)
DATASETS = {
    "isic2017": ("ISIC2017_val_subset", 993, "ISIC 2017 Part 1 validation images (RGB dermoscopy)"),
    "busi": ("BUSI_subset", 994, "BUSI breast ultrasound, cases 1-50 of each class (grey; normal cases: empty masks)"),
}


@dataclass(frozen=True)
class RealData:
    """Which dataset, from where, and how it is converted and split."""

    name: str
    source: Path
    max_size: int
    hold_out: float
    seed: int
    by: str = "random"  # "largest": hold out the largest lesions (the size-shift test)


class RealDataBenchmark(RawDatasetDemo):
    """RawDatasetDemo whose step 1 converts the dataset with its hold-out into the work folder (or reuses it)."""

    def __init__(self, out_dir: Path, data: RealData, settings: DemoSettings):
        self.data = data
        folder_name = f"Dataset{DATASETS[data.name][1]:03d}_{get_converter(data.name).dataset_name}"
        super().__init__(out_dir, Path(out_dir) / "nnUNet_raw" / folder_name, settings)
        add_study_trainers(self.env)

    def make_dataset(self) -> Path:
        d = self.data
        if self.source.exists():
            self._say(f"1/6 reusing the converted dataset {self.source}")
            self._check_reusable()
        else:
            self._say(
                f"1/6 converting {d.source} ({d.name}, --max-size {d.max_size}, --hold-out {d.hold_out:g}, "
                f"--hold-out-by {d.by})"
            )
            convert(
                d.name, d.source, self.s.dataset_id, raw_root=self.raw, max_size=d.max_size, hold_out=d.hold_out,
                hold_out_seed=d.seed, hold_out_by=d.by,
            )  # fmt: skip
        return self.check_dataset()

    def _check_reusable(self) -> None:
        d = self.data
        json_file = self.source / "dataset.json"
        made = json.loads(json_file.read_text()) if json_file.is_file() else {}
        record = made.get("hold_out") or {}
        was = (
            made.get("converted_by"), made.get("max_size"), record.get("fraction"), record.get("seed"),
            record.get("by", "random"),
        )  # fmt: skip
        wanted = (f"nnunet-dale convert {d.name} (from {d.source.name})", d.max_size, d.hold_out, d.seed, d.by)
        if was != wanted:
            raise DemoError(
                f"{self.source} was made with (converted_by, max_size, hold-out, seed, by) = {was}, this run asks for "
                f"{wanted}: use another -o folder or delete this one"
            )

    def describe_data(self) -> str:
        """The data paragraph of the results section: source, case counts, image sizes, hold-out."""
        d = self.data
        record = json.loads((self.dataset / "dataset.json").read_text())["hold_out"]
        sizes = [image_size(p) for split in ("imagesTr", "imagesTs") for p in (self.dataset / split).iterdir()]
        width, height = (f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}" for v in zip(*sizes))
        total = record["num_training"] + record["num_test"]
        how = f"`--hold-out-seed {d.seed}`, stratified by empty / non-empty mask"
        if d.by == "largest":
            how = (
                "`--hold-out-by largest`: the cases with the largest lesions, covering "
                f"{record['min_test_share']:.0%} or more of the image, against at most "
                f"{record['max_training_share']:.0%} in training"
            )
        return (
            f"{DATASETS[d.name][2]}, {total} cases from `{d.source.name}` (a downsampled copy of the official release "
            f"in its layout), converted with `--max-size {d.max_size}` (images {width} x {height} px, width x "
            f"height) and {d.hold_out:.0%} held out ({how}): {record['num_training']} training cases "
            f"({record['num_training_empty']} with an empty mask), {record['num_test']} test cases "
            f"({record['num_test_empty']} empty), evaluated against their reference annotations"
        )


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def schedule(baseline: str, dale: str) -> str:
    """'A / B, E epochs x I iterations' read from the trainer classes (which must share their schedule)."""
    a, b = (getattr(study_trainers, name, None) or getattr(variants, name) for name in (baseline, dale))
    lengths = (a.epochs, a.iterations, a.val_iterations)
    if lengths != (b.epochs, b.iterations, b.val_iterations):
        raise DemoError(f"{baseline} and {dale} have different schedules")
    return f"`{baseline}` / `{dale}`, {a.epochs} epochs x {a.iterations} iterations ({a.val_iterations} validation)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="isic2017")
    parser.add_argument("--source", help="the dataset in its official layout (default: ../shared/data/<subset>)")
    parser.add_argument("--max-size", type=int, help="longer image side in px (default 64; 32 with --quick)")
    parser.add_argument("--hold-out", type=float, default=0.3, help="fraction of the cases held out for testing")
    parser.add_argument("--hold-out-seed", type=int, default=0)
    parser.add_argument("--folds", type=int, nargs="+", choices=range(5), help="default 0 1 2 (0 with --quick)")
    parser.add_argument("-o", "--output", help="work folder, reused when re-run (default dale_real_<dataset>)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2-epoch schedules, small images, fold 0")
    parser.add_argument("--results", default=str(REPO / "docs" / "study-log.md"), help="markdown file to update")
    args = parser.parse_args(argv)
    if args.max_size is not None and args.max_size < 8:
        parser.error(f"--max-size must be at least 8 pixels, got {args.max_size}")
    args.max_size = args.max_size or (32 if args.quick else 64)
    args.folds = args.folds or ([0] if args.quick else [0, 1, 2])
    args.source = Path(args.source) if args.source else SHARED_DATA / DATASETS[args.dataset][0]
    args.output = Path(args.output or f"dale_real_{args.dataset}")
    return args


def run(args: argparse.Namespace) -> None:
    from benchmarks.report import demote_headings, provenance, write_section

    check_hold_out(args.hold_out, args.hold_out_seed)  # bad arguments: an error before any folder is made
    if not args.source.exists():
        raise FileNotFoundError(f"source {args.source} does not exist (pass --source; see ../shared/data/README.md)")
    trainers = ("_quick", "DALE_quick") if args.quick else ("_bench", "DALE_bench")
    settings = DemoSettings(baseline=f"nnUNetTrainer{trainers[0]}", dale=f"nnUNetTrainer{trainers[1]}", same_time=None)
    data = RealData(args.dataset, args.source, args.max_size, args.hold_out, args.hold_out_seed)
    start = time.perf_counter()
    bench = RealDataBenchmark(args.output, data, settings)
    os.environ.update({k: bench.env[k] for k in FOLDER_VARIABLES})
    bench.prepare()
    runs = bench.run_folds(args.folds)
    table = bench.compare(runs, omega_fold=args.folds[0])
    hours = (time.perf_counter() - start) / 3600
    print(table, flush=True)

    results = Path(args.results)
    figure = results.parent / "figures" / f"results-{args.dataset}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bench.out / "comparison" / "comparison.png", figure)
    command = "python -m benchmarks.real_data " + " ".join(sys.argv[1:])
    folds = f"fold{'s' * (len(args.folds) > 1)} {', '.join(map(str, args.folds))}"
    lines = [
        f"## Real data: {get_converter(args.dataset).dataset_name} subset, held-out test split",
        "",
        f"Command: {provenance(command, hours)} (this invocation only: steps reused from an earlier run in the same "
        f"work folder are not counted), on a machine with {os.cpu_count()} CPU cores. "
        f"Data: {bench.describe_data()}. Schedule: {schedule(settings.baseline, settings.dale)}, CPU. Runs: {folds} "
        "(nnU-Net's split of the training part: own initialisation and train/validation cases each; the same test "
        "cases).",
        "",
        demote_headings(table.strip()),
        "",
        "**Reading:** to be added by a human after checking these numbers; nothing is concluded from them here.",
        "",
        f"![per-case comparison and examples](figures/{figure.name})",
    ]
    write_section(results, f"real-data-{args.dataset}", "\n".join(lines))
    print(f"wrote the section real-data-{args.dataset} of {results} and {figure}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as error:
        print(f"real_data.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
