"""`nnunet-dale demo`: the built-in benchmark end to end with real nnU-Net: default trainer, DALE, and default nnU-Net
given DALE's wall time.

generate the noisy-label benchmark -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train (three trainers: default nnU-Net
and DALE on the same short schedule, and default nnU-Net with 2.5 x its epochs, about DALE's measured wall time) ->
nnUNetv2_predict on the test cases -> evaluate against the clean labels -> comparison table (against default nnU-Net),
PNG and a one-line verdict: DALE against default at the same epochs and at DALE's time, the three training times, and
what the label-noise study found (NOISE_STUDY_READING). Everything lives in one output folder; finished steps are
reused when the demo is run again. The terminal shows one line per stage (a progress bar while it runs); nnU-Net's own
output goes to `logs/<step>.log`, and a failed step prints the end of its log. `RawDatasetDemo` runs the same steps on
an existing raw dataset with a test split (`python -m benchmarks.real_data`, which trains its baseline and DALE only:
`DemoSettings.same_time` None).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

from tqdm import tqdm

from nnunet_dale.benchmark_data import make_benchmark
from nnunet_dale.nnunet_env import FOLDER_VARIABLES, nnunet_environment

__all__ = [
    "BASELINE",
    "BIN",
    "DALE",
    "NOISE_STUDY_READING",
    "RUN_NOISE_POINTS",
    "SAME_TIME",
    "Demo",
    "DemoError",
    "DemoSettings",
    "LineProgress",
    "RawDatasetDemo",
    "Stage",
    "nnunet_command",
    "run_demo",
    "training_minutes",
    "verdict",
]

BIN = Path(sys.executable).parent
PREFIX = "[nnunet-dale demo]"
LOG_TAIL = 20  # lines of a failed step's log shown on the terminal
# The validity study's run-to-run noise: the same trainer retrained on the same fold moved by up to 1.5 Dice points
# (docs/results.md). A one-run Dice difference within it does not rank the trainers.
RUN_NOISE_POINTS = 1.5
# The demo's method names: the baseline (the comparison's first method), DALE, and default nnU-Net given DALE's time.
BASELINE, DALE, SAME_TIME = "nnU-Net", "DALE", "nnU-Net, DALE's time"
# What the label-noise study found (docs/results.md), the end of the demo's verdict.
NOISE_STUDY_READING = (  # tests/test_noise_readings.py ties it to docs/data/noise_study.json
    "in the label-noise study (ISIC 2017, BUSI, benchmark, 3 runs per cell) DALE helped at equal time in 0 of 6"
    " noisy cells (Dice −5.0 to −0.7 points against default given its time; docs/results.md)"
)


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and trains; the defaults took 13.9 minutes on 2 CPU cores (training 1.8 / 5.0 / 5.0 min
    for the baseline, DALE and default nnU-Net given DALE's time)."""

    dataset_id: int = 990
    num_train: int = 40
    num_test: int = 20
    size: int = 64
    seed: int = 0
    noise: float = 1.0
    baseline: str = "nnUNetTrainer_demo"
    dale: str = "nnUNetTrainerDALE_demo"
    fold: int = 0
    # default nnU-Net given DALE's wall time (method SAME_TIME); None: only the baseline and DALE are trained. A study
    # that names its own baseline and DALE and calls `run_folds` sets it (or None) too.
    same_time: str | None = "nnUNetTrainer_demoSameTime"


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and its log file."""


@dataclass(frozen=True)
class LineProgress:
    """How a step's progress shows in its log lines: `total` (or a pattern whose first group gives it), a pattern
    for each finished unit, and one whose first group is the unit a resumed step starts at."""

    unit: str = ""
    total: int | None = None
    total_pattern: str | None = None
    done_pattern: str | None = None
    start_pattern: str | None = None

    def read(self, line: str, bar) -> None:
        """Move `bar` (a tqdm bar) by what `line` says."""
        if self.total_pattern and (m := re.search(self.total_pattern, line)):
            bar.total = int(m[1])
        if self.start_pattern and (m := re.search(self.start_pattern, line)) and bar.n == 0:
            bar.n = int(m[1])
        if self.done_pattern and re.search(self.done_pattern, line):
            bar.update(1)
        else:
            bar.update(0)  # refreshes the elapsed time


TRAINING = LineProgress("epoch", done_pattern=r": Epoch time: ", start_pattern=r": Epoch (\d+)\s*$")
PREDICTION = LineProgress(
    "case", total_pattern=r"There are (\d+) cases that I would like to predict", done_pattern=r"^\s*Predicting \S+:"
)
ELAPSED = LineProgress()


class Stage:
    """One stage of the demo on one line. On a terminal: a progress bar (tqdm) that counts `progress.unit`s, or
    shows the elapsed time, and stays as the stage's line when it ends. Elsewhere (a log file, a pipe): the line is
    printed when the stage starts, nothing more."""

    def __init__(self, text: str, progress: LineProgress = ELAPSED, live: bool | None = None):
        self.progress = progress
        self.live = sys.stdout.isatty() if live is None else live
        self.bar = None
        if self.live:
            counted = bool(progress.unit)
            self.bar = tqdm(
                total=progress.total, desc=f"{PREFIX} {text}", unit=f" {progress.unit}" if counted else "it",
                file=sys.stdout, leave=True, dynamic_ncols=True,
                bar_format=None if counted else "{desc}  [{elapsed}]",
            )  # fmt: skip
        else:
            print(f"{PREFIX} {text}", flush=True)

    def read(self, line: str) -> None:
        if self.bar is not None:
            self.progress.read(line, self.bar)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def verdict(
    comparison: dict,
    baseline: str = BASELINE,
    method: str = DALE,
    same_time: str = SAME_TIME,
    minutes: dict[str, float] | None = None,
) -> str:
    """One line from a comparison's numbers: `method` (DALE) against `baseline` at the same epochs, as the Dice
    difference in points against the run noise (RUN_NOISE_POINTS) and the HD95 change with its paired p over the test
    cases (significant below 0.05). If the comparison has the method `same_time` (default nnU-Net given DALE's time):
    then DALE against it (Dice points, HD95 change), the training minutes per method in `minutes` (those given), and
    NOISE_STUDY_READING. Without it, the two-trainer line alone."""
    label = comparison["labels"][0]
    stats, tests = comparison["stats"][label], comparison["comparisons"][label][method]
    dice = 100 * (stats[method]["Dice"]["mean"] - stats[baseline]["Dice"]["mean"])
    n = len(comparison["cases"])
    if abs(dice) <= RUN_NOISE_POINTS:
        reading = f"within run noise (±{RUN_NOISE_POINTS} Dice points)"
    else:
        ahead = "ahead" if dice > 0 else "behind"
        reading = f"{method} {ahead} by more than run noise ({RUN_NOISE_POINTS} Dice points) in this one run"
    parts = [f"Dice {dice:+.1f} points"]
    hd95 = tests.get("HD95", {})
    change, p = hd95.get("rel_change"), hd95.get("p_cases")
    if change is not None and math.isfinite(change):
        significance = (
            "p not computed" if p is None or not math.isfinite(p)
            else f"{'significant' if p < 0.05 else 'not significant'}, p = {p:.2f} over the {n} test cases"
        )  # fmt: skip
        parts.append(f"HD95 {100 * change:+.0f} % ({significance})")
    line = f"{method} vs default {baseline}: {', '.join(parts)} — {reading}; "
    end = "one run cannot rank the trainers (docs/results.md)"
    if same_time not in stats:
        return f"{line}{end}."
    return f"{line}{_same_time_reading(stats, baseline, method, same_time, minutes)}{end} — {NOISE_STUDY_READING}."


def _same_time_reading(stats: dict, baseline: str, method: str, same_time: str, minutes: dict | None) -> str:
    """The verdict's middle: `method` against `same_time` (Dice points, HD95 change of the means), then the training
    minutes of the methods in `minutes`; each part ends in "; "."""
    from nnunet_dale.compare.stats import relative_change

    dice = 100 * (stats[method]["Dice"]["mean"] - stats[same_time]["Dice"]["mean"])
    if f"{abs(dice):.1f}" == "0.0":
        side = f"{method} level"
    else:
        side = f"{method} {'ahead' if dice > 0 else 'behind'}"
    side += ", within run noise" if abs(dice) <= RUN_NOISE_POINTS else " by more than run noise"
    parts = [f"Dice {dice:+.1f} points ({side})"]
    hd95 = [stats[m].get("HD95", {}).get("mean") for m in (method, same_time)]
    change = relative_change(*hd95) if None not in hd95 else None  # None: not in the comparison, or not finite
    if change is not None and math.isfinite(change):
        parts.append(f"HD95 {100 * change:+.0f} %")
    text = f"vs default {baseline} given {method}'s time: {', '.join(parts)}; "
    timed = [m for m in stats if minutes and m in minutes]
    if timed:
        text += f"training {' / '.join(f'{minutes[m]:.1f}' for m in timed)} min ({' / '.join(timed)}); "
    return text


def nnunet_command(name: str) -> str:
    """nnU-Net's console script `name`: beside this Python (its venv) first, else on PATH, else a DemoError."""
    beside = BIN / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DemoError(f"nnU-Net's command {name} is neither beside {sys.executable} nor on PATH: install nnunetv2")
    return found


class Demo:
    test_labels = "clean test labels"  # what labelsTs holds, for the progress messages

    def __init__(self, out_dir: Path, settings: DemoSettings = DemoSettings()):
        self.out = Path(out_dir).resolve()
        self.s = settings
        self.raw = self.out / "nnUNet_raw"
        self.logs = self.out / "logs"
        self.env = nnunet_environment(self.out, nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "1"))

    # ------------------------------------------------------------------ steps
    def run(self) -> Path:
        start = time.perf_counter()
        self.prepare()
        runs = self.run_folds([self.s.fold])
        table = self.compare(runs)
        print(table, flush=True)
        print(f"Figure: {self.out / 'comparison' / 'comparison.png'}", flush=True)
        print(f"Verdict: {verdict(self.comparison, minutes=self.training_minutes(self.s.fold))}", flush=True)
        minutes = (time.perf_counter() - start) / 60
        self._say(f"done in {minutes:.1f} min. Everything is in {self.out}; nnU-Net's logs in {self.logs}")
        return self.out

    @property
    def methods(self) -> dict[str, str]:
        """The trainer of each method, the baseline first: "nnU-Net", "DALE" and, unless the settings' `same_time` is
        None, "nnU-Net, DALE's time" (SAME_TIME)."""
        methods = {BASELINE: self.s.baseline, DALE: self.s.dale}
        if self.s.same_time is not None:
            methods[SAME_TIME] = self.s.same_time
        return methods

    @property
    def trainers(self) -> tuple[str, ...]:
        return tuple(self.methods.values())

    def training_minutes(self, fold: int) -> dict[str, float]:
        """The measured training minutes (`training_minutes`) of each method's finished training of `fold`; a method
        whose checkpoint cannot be read is left out."""
        found = {}
        for method, trainer in self.methods.items():
            try:
                found[method] = training_minutes(self, trainer, fold)
            except (OSError, RuntimeError, ValueError, KeyError, IndexError, TypeError):
                continue
        return found

    def prepare(self) -> None:
        """Steps 1-2: the raw dataset (`make_dataset`), planned and preprocessed by nnU-Net."""
        for d in (self.raw, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.dataset = self.make_dataset()
        self._once("plan", ["nnUNetv2_plan_and_preprocess", "-d", str(self.s.dataset_id), "-c", "2d",
                            "-np", "2", "-npfp", "2"], "2/6 nnU-Net planning and preprocessing")  # fmt: skip

    def make_dataset(self) -> Path:
        """Step 1: the raw dataset with imagesTs/labelsTs in `self.raw`; here the generated benchmark."""
        s = self.s
        with Stage(f"1/6 benchmark data: {s.num_train} training cases with noisy labels, {s.num_test} test cases"):
            return make_benchmark(
                self.raw, s.dataset_id, num_train=s.num_train, num_test=s.num_test, size=s.size, seed=s.seed,
                noise=s.noise,
            )  # fmt: skip

    def run_folds(self, folds: Sequence[int]) -> dict[str, list[Path]]:
        """Steps 3-5 for each trainer (`methods`), fold by fold: the evaluation folders per method ("nnU-Net", "DALE"
        and, with the settings' `same_time`, "nnU-Net, DALE's time"), the baseline first."""
        runs: dict[str, list[Path]] = {method: [] for method in self.methods}
        for fold in folds:
            for method, trainer in self.methods.items():
                runs[method].append(self.train_predict_evaluate(trainer, fold))
        return runs

    def train_predict_evaluate(self, trainer: str, fold: int) -> Path:
        """Steps 3-5 for one trainer and fold: train, predict the test cases, evaluate against their labels."""
        self._train(trainer, fold, f"3/6 training {trainer} (fold {fold})")
        stage = f"4/6 predicting the test cases with {trainer} (fold {fold})"
        pred = self._predict(trainer, fold, self.dataset / "imagesTs", f"{trainer}_fold{fold}", stage)
        return self._evaluate(pred, stage=f"5/6 evaluating {trainer} (fold {fold}) against the {self.test_labels}")

    def more_test_cases_evaluate(self, trainer: str, fold: int, num_test: int, lesion_scale: float = 1.0) -> Path:
        """A finished run on `num_test` test cases of the benchmark instead of its own few: the same seed's test cases
        0..num_test-1 (a test case depends only on the seed and its index, so the first ones are the standard set),
        generated into `more_test_cases/test<num_test>[_scale<S>]/`, predicted and evaluated against their clean
        labels. With more cases a run's mean HD95 depends less on which few cases carry a blob or a missed lesion.
        `lesion_scale` S != 1 is the size-shift test: the same cases with the lesions' semi-axes scaled by S."""
        if num_test <= self.s.num_test and lesion_scale == 1.0:
            raise DemoError(f"more test cases means more than the {self.s.num_test} of the benchmark; got {num_test}")
        if not (self._result_folder(trainer, fold) / "checkpoint_final.pth").is_file():
            raise DemoError(f"{trainer} (fold {fold}) has no finished training to predict more test cases with")
        name = f"test{num_test}" + (f"_scale{lesion_scale:g}" if lesion_scale != 1.0 else "")
        root = self.out / "more_test_cases" / name
        cases = make_benchmark(root, self.s.dataset_id, num_train=2, num_test=num_test, size=self.s.size,
                               seed=self.s.seed, noise=self.s.noise, test_lesion_scale=lesion_scale)  # fmt: skip
        pred = self._predict(trainer, fold, cases / "imagesTs", f"{trainer}_fold{fold}_{name}")
        return self._evaluate(pred, cases / "labelsTs")

    def postprocess_evaluate(self, trainer: str, fold: int) -> Path:
        """nnU-Net's own postprocessing of a finished run, as a user gets it: chosen on the fold's validation cases
        (nnUNetv2_determine_postprocessing: keep the largest foreground component only if it raises their Dice),
        applied to the test predictions (nnUNetv2_apply_postprocessing, into `<predictions>_postprocessed`), then
        evaluated like them. The test labels play no part in the choice."""
        folder = self._result_folder(trainer, fold)
        pred = self.out / "predictions" / f"{trainer}_fold{fold}"
        if not (folder / "validation" / "summary.json").is_file() or not pred.is_dir():
            raise DemoError(f"{trainer} (fold {fold}) has no finished validation or test predictions to postprocess")
        gt = Path(self.env["nnUNet_preprocessed"]) / self.dataset.name / "gt_segmentations"
        common = ["-np", "1", "-plans_json", str(folder.parent / "plans.json"),
                  "-dataset_json", str(folder.parent / "dataset.json")]  # fmt: skip
        self._once(f"postprocessing_{trainer}_fold{fold}", ["nnUNetv2_determine_postprocessing", "-i",
                   str(folder / "validation"), "-ref", str(gt), "--remove_postprocessed", *common])  # fmt: skip
        out, chosen = pred.with_name(f"{pred.name}_postprocessed"), folder / "validation" / "postprocessing.pkl"
        self._once(f"apply_postprocessing_{trainer}_fold{fold}", ["nnUNetv2_apply_postprocessing", "-i", str(pred),
                   "-o", str(out), "-pp_pkl_file", str(chosen), *common])  # fmt: skip
        return self._evaluate(out)

    def postprocessing_chosen(self, trainer: str, fold: int) -> list[str]:
        """The postprocessing functions nnU-Net chose for a run (`postprocess_evaluate`); empty: none."""
        chosen = self._result_folder(trainer, fold) / "validation" / "postprocessing.json"
        return json.loads(chosen.read_text())["postprocessing_fns"]

    def compare(self, runs: dict[str, list[Path]], out: Path | None = None, omega_fold: int | None = None) -> str:
        """Step 6: the comparison table (returned; the comparison itself in `self.comparison`) and
        comparison.md/.json/.png in `out` (default: comparison/). The figure's fuzzy map is the AE&ER split as DALE's
        model of fold `omega_fold` (default the settings' fold) made it, with that trainer's split patch, and its ω
        column shows that model's ω maps (`omega_maps`) on the example cases the figure picked; without them the
        figure has no ω column."""
        from nnunet_dale.compare import compare, format_table

        out, images = out or self.out / "comparison", self.dataset / "imagesTs"
        fold = self.s.fold if omega_fold is None else omega_fold
        with Stage("6/6 comparison: table, figure, DALE's split patch and ω maps of the figure's examples"):
            split_patch = self._split_patch(fold)
            result = compare(runs, out, images_dir=images, split_patch=split_patch)
            omega_dir = self._omega_maps(result["figure"]["examples"], fold)
            if omega_dir is not None:
                result = compare(runs, out, images_dir=images, omega_dir=omega_dir, split_patch=split_patch)
        self.comparison = result
        return format_table(result)

    def _split_patch(self, fold: int) -> tuple[int, ...] | None:
        """The split patch DALE's trained model used (its checkpoint's configuration on its plan); None, with a
        note, if the model cannot be read (the figure then draws the evaluation's patches and says so)."""
        from nnunet_dale.audit.model import load_trained_model

        folders = {k: self.env[k] for k in FOLDER_VARIABLES}
        try:
            with mock.patch.dict(os.environ, folders):
                return load_trained_model(self._result_folder(self.s.dale, fold)).split_patch_size
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            self._say(f"   the figure's fuzzy map uses the evaluation's patches: {type(error).__name__}: {error}")
            return None

    def _omega_maps(self, cases: list[str], fold: int) -> Path | None:
        """DALE's per-pixel mean ω on `cases` (reused when already there); None, with a note, if it fails."""
        from nnunet_dale.omega_maps import omega_maps

        out = self.out / "omega" / f"{self.s.dale}_fold{fold}"
        if all((out / f"{case}.npy").is_file() for case in cases):
            return out
        folders = {k: self.env[k] for k in FOLDER_VARIABLES}
        try:
            with mock.patch.dict(os.environ, folders):  # the audit reads the preprocessed training cases from there
                omega_maps(self._result_folder(self.s.dale, fold), self.dataset / "imagesTs",
                           self.dataset / "labelsTs", out, cases=cases)  # fmt: skip
        except (OSError, ValueError, RuntimeError) as error:  # the figure loses its ω column, not the table
            self._say(f"   no ω column in the figure: {type(error).__name__}: {error}")
            return None
        return out

    def _train(self, trainer: str, fold: int, stage: str | None = None) -> None:
        stage = stage or f"training {trainer} (fold {fold})"
        folder = self._result_folder(trainer, fold)
        if (folder / "validation" / "summary.json").is_file():
            self._say(f"{stage}: reusing the finished training in {folder}")
            return
        cmd = ["nnUNetv2_train", str(self.s.dataset_id), "2d", str(fold), "-tr", trainer, "-device", "cpu"]
        resumable = any((folder / f"checkpoint_{k}.pth").is_file() for k in ("latest", "final"))
        progress = replace(TRAINING, total=_epochs(trainer, self.env.get("nnUNet_extTrainer", "")))
        self._call(f"train_{trainer}_fold{fold}", cmd + (["--c"] if resumable else []), stage, progress)

    def _predict(self, trainer: str, fold: int, images: Path, name: str, stage: str | None = None) -> Path:
        pred = self.out / "predictions" / name
        self._once(f"predict_{name}", ["nnUNetv2_predict", "-i", str(images), "-o", str(pred), "-d",
                   str(self.s.dataset_id), "-c", "2d", "-f", str(fold), "-tr", trainer, "-device", "cpu",
                   "-npp", "1", "-nps", "1"], stage or f"predicting {name}", PREDICTION)  # fmt: skip
        return pred

    def _evaluate(self, pred: Path, labels: Path | None = None, stage: str | None = None) -> Path:
        from nnunet_dale.evaluation import evaluate_folders

        out = self.out / "evaluation" / pred.name
        if not (out / "summary.json").is_file():
            with Stage(stage or f"evaluating {pred.name}"), contextlib.redirect_stderr(io.StringIO()):
                evaluate_folders(pred, labels or self.dataset / "labelsTs", out)  # its own bar stays quiet
        elif stage:
            self._say(f"{stage}: reusing the finished evaluation")
        return out

    # ------------------------------------------------------------------ plumbing
    def _result_folder(self, trainer: str, fold: int) -> Path:
        name = self.dataset.name
        return self.out / "nnUNet_results" / name / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"

    def _once(self, name: str, cmd: list[str], stage: str | None = None, progress: LineProgress = ELAPSED) -> None:
        marker = self.out / ".done" / name
        if marker.is_file():
            self._say(f"{stage or name}: reusing the finished step ({marker.name})")
            return
        self._call(name, cmd, stage, progress)
        marker.parent.mkdir(exist_ok=True)
        marker.touch()

    def _call(self, name: str, cmd: list[str], stage: str | None = None, progress: LineProgress = ELAPSED) -> None:
        """Run a command as one stage line (a progress bar on a terminal), its whole output in logs/<name>.log. If
        it fails, the last LOG_TAIL lines of the log are printed, and the DemoError names the log."""
        log = self.logs / f"{name}.log"
        program = nnunet_command(cmd[0])
        tail: deque[str] = deque(maxlen=LOG_TAIL)
        with Stage(stage or name, progress) as shown, open(log, "w") as f, subprocess.Popen(
            [program, *cmd[1:]], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:  # fmt: skip
            for line in proc.stdout:
                f.write(line)
                f.flush()
                tail.append(line.rstrip())
                shown.read(line)
        if proc.returncode != 0:
            print(f"{PREFIX} {stage or name} failed; the last lines of {log}:", flush=True)
            print("\n".join("   " + line for line in tail if line.strip()), flush=True)
            raise DemoError(f"step {name!r} failed (exit code {proc.returncode}); its whole output is in {log}")

    @staticmethod
    def _say(text: str) -> None:
        print(f"{PREFIX} {text}", flush=True)


class RawDatasetDemo(Demo):
    """The demo's pipeline on an existing nnU-Net raw dataset that has a test split (imagesTs + labelsTs, e.g. from
    `nnunet-dale convert ... --hold-out 0.3`): plan, train the trainers, predict imagesTs, evaluate against labelsTs,
    compare. `nnUNet_raw` is the dataset's parent folder; preprocessed data, results and everything else go to
    `out_dir`. Of `settings` only the trainers and the fold are used (the dataset id comes from the folder name)."""

    test_labels = "reference test labels (labelsTs)"

    def __init__(self, out_dir: Path, dataset: Path, settings: DemoSettings = DemoSettings()):
        self.source = Path(dataset).expanduser().resolve()
        match = re.fullmatch(r"Dataset(\d{3})_.+", self.source.name)
        if match is None:
            raise DemoError(f"{self.source} is not an nnU-Net raw dataset folder (expected a name DatasetNNN_<Name>)")
        super().__init__(out_dir, replace(settings, dataset_id=int(match[1])))
        self.raw = self.source.parent
        self.env["nnUNet_raw"] = str(self.raw)

    def make_dataset(self) -> Path:
        """Step 1: the existing dataset, checked."""
        self._say(f"1/6 raw dataset {self.source}")
        return self.check_dataset()

    def more_test_cases_evaluate(self, trainer: str, fold: int, num_test: int, lesion_scale: float = 1.0) -> Path:
        """Only the generated benchmark can draw more test cases; a raw dataset's test split is what it is."""
        raise DemoError(f"{self.source.name} has a fixed test split: more test cases exist only for the benchmark")

    def check_dataset(self) -> Path:
        """The dataset folder, if it has what the later steps read; else a DemoError naming what is missing."""
        for name in ("dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            if not (self.source / name).exists():
                hint = " (hold out a test split: nnunet_dale.holdout.hold_out_test_set)" if "Ts" in name else ""
                raise DemoError(f"{self.source} has no {name}{hint}")
        if not any((self.source / "labelsTs").iterdir()):
            raise DemoError(f"{self.source / 'labelsTs'} is empty: no test cases to evaluate")
        return self.source


def training_minutes(study: Demo, trainer: str, fold: int) -> float:
    """Wall time of a finished training (first epoch start to last epoch end, from nnU-Net's checkpoint log)."""
    import torch

    checkpoint = study._result_folder(trainer, fold) / "checkpoint_final.pth"
    log = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return (log["epoch_end_timestamps"][-1] - log["epoch_start_timestamps"][0]) / 60


def _epochs(trainer: str, ext_trainer: str = "") -> int | None:
    """The number of epochs of trainer class `trainer`'s schedule (its `epochs`, nnunet_dale.variants.Schedule): one
    of this package's classes, else the class nnU-Net would find in the folders of `ext_trainer` (an
    nnUNet_extTrainer value: the study's trainers, a user's own); None if it is found nowhere or has no schedule."""
    from nnunet_dale import variants

    cls = getattr(variants, trainer, None)
    if cls is None:
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

        for folder in (f for f in ext_trainer.split(os.pathsep) if f.strip() and os.path.isdir(f)):
            try:  # as nnU-Net looks it up (nnunetv2.utilities.find_objects), quietly
                cls = recursive_find_python_class(folder, trainer, None, folder, cleanup_imports_from_base_folder=True)
            except Exception:  # a folder nnU-Net cannot import fails the training step itself, with its log
                cls = None
            if cls is not None:
                break
    epochs = getattr(cls, "epochs", None)
    return epochs if isinstance(epochs, int) else None


def run_demo(out_dir: Path, settings: DemoSettings = DemoSettings()) -> Path:
    """Run (or finish) the demo in `out_dir`; returns that folder."""
    return Demo(out_dir, settings).run()
