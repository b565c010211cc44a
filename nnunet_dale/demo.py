"""`nnunet-dale demo`: the built-in benchmark end to end with real nnU-Net, default trainer vs DALE.

generate the noisy-label benchmark -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train (both trainers, same short
schedule) -> nnUNetv2_predict on the test cases -> evaluate against the clean labels -> comparison table and PNG.
Everything lives in one output folder; finished steps are reused when the demo is run again. `RawDatasetDemo` runs
the same steps on an existing raw dataset with a test split (`python -m benchmarks.real_data`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

from nnunet_dale.benchmark_data import make_benchmark
from nnunet_dale.nnunet_env import FOLDER_VARIABLES, nnunet_environment

__all__ = ["BIN", "Demo", "DemoError", "DemoSettings", "RawDatasetDemo", "nnunet_command", "run_demo"]

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and trains; the defaults fit in about 20 minutes on 2 CPU cores."""

    dataset_id: int = 990
    num_train: int = 40
    num_test: int = 20
    size: int = 64
    seed: int = 0
    noise: float = 1.0
    baseline: str = "nnUNetTrainer_demo"
    dale: str = "nnUNetTrainerDALE_demo"
    fold: int = 0


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and its log file."""


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
        self._say("6/6 comparison")
        table = self.compare(runs)
        print(table, flush=True)
        minutes = (time.perf_counter() - start) / 60
        self._say(f"done in {minutes:.1f} min. Everything is in {self.out}")
        return self.out

    @property
    def trainers(self) -> tuple[str, str]:
        return self.s.baseline, self.s.dale

    def prepare(self) -> None:
        """Steps 1-2: the raw dataset (`make_dataset`), planned and preprocessed by nnU-Net."""
        for d in (self.raw, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.dataset = self.make_dataset()
        self._say("2/6 nnU-Net planning and preprocessing")
        self._once("plan", ["nnUNetv2_plan_and_preprocess", "-d", str(self.s.dataset_id), "-c", "2d",
                            "-np", "2", "-npfp", "2"])  # fmt: skip

    def make_dataset(self) -> Path:
        """Step 1: the raw dataset with imagesTs/labelsTs in `self.raw`; here the generated benchmark."""
        self._say("1/6 benchmark data")
        return make_benchmark(
            self.raw, self.s.dataset_id, num_train=self.s.num_train, num_test=self.s.num_test, size=self.s.size,
            seed=self.s.seed, noise=self.s.noise,
        )  # fmt: skip

    def run_folds(self, folds: Sequence[int]) -> dict[str, list[Path]]:
        """Steps 3-5 for both trainers, fold by fold: the evaluation folders per method ("nnU-Net", "DALE")."""
        runs: dict[str, list[Path]] = {"nnU-Net": [], "DALE": []}
        for fold in folds:
            for method, trainer in zip(runs, self.trainers):
                runs[method].append(self.train_predict_evaluate(trainer, fold))
        return runs

    def train_predict_evaluate(self, trainer: str, fold: int) -> Path:
        """Steps 3-5 for one trainer and fold: train, predict the test cases, evaluate against their labels."""
        self._say(f"3/6 training {trainer} (fold {fold})")
        self._train(trainer, fold)
        self._say(f"4/6 predicting the test cases with {trainer} (fold {fold})")
        pred = self._predict(trainer, fold, self.dataset / "imagesTs", f"{trainer}_fold{fold}")
        self._say(f"5/6 evaluating {trainer} (fold {fold}) against the {self.test_labels}")
        return self._evaluate(pred)

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
        """Step 6: the comparison table (returned) and comparison.md/.json/.png in `out` (default: comparison/). The
        figure's ω column shows DALE's ω maps (`omega_maps`, the model of fold `omega_fold`, default the settings'
        fold) on the example cases the figure picked; without them the figure has no ω column."""
        from nnunet_dale.compare import compare, format_table

        out, images = out or self.out / "comparison", self.dataset / "imagesTs"
        result = compare(runs, out, images_dir=images)
        omega_dir = self._omega_maps(result["figure"]["examples"], self.s.fold if omega_fold is None else omega_fold)
        if omega_dir is not None:
            result = compare(runs, out, images_dir=images, omega_dir=omega_dir)
        return format_table(result)

    def _omega_maps(self, cases: list[str], fold: int) -> Path | None:
        """DALE's per-pixel mean ω on `cases` (reused when already there); None, with a note, if it fails."""
        from nnunet_dale.omega_maps import omega_maps

        out = self.out / "omega" / f"{self.s.dale}_fold{fold}"
        if all((out / f"{case}.npy").is_file() for case in cases):
            return out
        self._say(f"   ω maps of {self.s.dale} (fold {fold}) on the figure's {len(cases)} example cases")
        folders = {k: self.env[k] for k in FOLDER_VARIABLES}
        try:
            with mock.patch.dict(os.environ, folders):  # the audit reads the preprocessed training cases from there
                omega_maps(self._result_folder(self.s.dale, fold), self.dataset / "imagesTs",
                           self.dataset / "labelsTs", out, cases=cases)  # fmt: skip
        except (OSError, ValueError, RuntimeError) as error:  # the figure loses its ω column, not the table
            self._say(f"   no ω column in the figure: {type(error).__name__}: {error}")
            return None
        return out

    def _train(self, trainer: str, fold: int) -> None:
        folder = self._result_folder(trainer, fold)
        if (folder / "validation" / "summary.json").is_file():
            self._say(f"   reusing the finished training in {folder}")
            return
        cmd = ["nnUNetv2_train", str(self.s.dataset_id), "2d", str(fold), "-tr", trainer, "-device", "cpu"]
        resumable = any((folder / f"checkpoint_{k}.pth").is_file() for k in ("latest", "final"))
        self._call(f"train_{trainer}_fold{fold}", cmd + (["--c"] if resumable else []))

    def _predict(self, trainer: str, fold: int, images: Path, name: str) -> Path:
        pred = self.out / "predictions" / name
        self._once(f"predict_{name}", ["nnUNetv2_predict", "-i", str(images), "-o", str(pred), "-d",
                   str(self.s.dataset_id), "-c", "2d", "-f", str(fold), "-tr", trainer, "-device", "cpu",
                   "-npp", "1", "-nps", "1"])  # fmt: skip
        return pred

    def _evaluate(self, pred: Path, labels: Path | None = None) -> Path:
        from nnunet_dale.evaluation import evaluate_folders

        out = self.out / "evaluation" / pred.name
        if not (out / "summary.json").is_file():
            evaluate_folders(pred, labels or self.dataset / "labelsTs", out)
        return out

    # ------------------------------------------------------------------ plumbing
    def _result_folder(self, trainer: str, fold: int) -> Path:
        name = self.dataset.name
        return self.out / "nnUNet_results" / name / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"

    def _once(self, name: str, cmd: list[str]) -> None:
        marker = self.out / ".done" / name
        if marker.is_file():
            self._say(f"   reusing finished step ({marker.name})")
            return
        self._call(name, cmd)
        marker.parent.mkdir(exist_ok=True)
        marker.touch()

    def _call(self, name: str, cmd: list[str]) -> None:
        """Run a command, showing its output live and keeping it in logs/<name>.log."""
        log = self.logs / f"{name}.log"
        program = nnunet_command(cmd[0])
        with open(log, "w") as f, subprocess.Popen(
            [program, *cmd[1:]], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:  # fmt: skip
            for line in proc.stdout:
                f.write(line)
                if line.strip():
                    print("   " + line.rstrip(), flush=True)
        if proc.returncode != 0:
            raise DemoError(f"step {name!r} failed (exit code {proc.returncode}); its output is in {log}")

    @staticmethod
    def _say(text: str) -> None:
        print(f"[nnunet-dale demo] {text}", flush=True)


class RawDatasetDemo(Demo):
    """The demo's pipeline on an existing nnU-Net raw dataset that has a test split (imagesTs + labelsTs, e.g. from
    `nnunet-dale convert ... --hold-out 0.3`): plan, train both trainers, predict imagesTs, evaluate against labelsTs,
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


def run_demo(out_dir: Path, settings: DemoSettings = DemoSettings()) -> Path:
    """Run (or finish) the demo in `out_dir`; returns that folder."""
    return Demo(out_dir, settings).run()
