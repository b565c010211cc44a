"""Shared fixtures: nnU-Net folders in temporary paths, a small generated dataset planned and preprocessed once."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_dale.inprocess import build_trainer, copy_batch, plan_and_preprocess, single_process_loader  # noqa: F401
from nnunet_dale.nnunet_env import (
    DALE_VARIABLE_PREFIX,
    SINGLE_PROCESS,
    nnunet_environment,
    nnunet_folders,
    without_dale_variables,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory) -> dict[str, Path]:
    """nnUNet_raw / _preprocessed / _results in a session temporary folder, set for the whole session."""
    root = tmp_path_factory.mktemp("nnunet")
    dirs = nnunet_folders(root, create=True)
    patch = pytest.MonkeyPatch()
    for name, path in dirs.items():
        patch.setenv(name, str(path))
    for name, value in SINGLE_PROCESS.items():  # loaders in tests use `single_process_loader`
        patch.setenv(name, value)
    for key in [k for k in os.environ if k.startswith(DALE_VARIABLE_PREFIX)]:
        patch.delenv(key)
    yield dirs
    patch.undo()


@pytest.fixture(scope="session")
def dataset_2d(nnunet_dirs) -> int:
    """A small 2D lesion dataset (64 x 64, 10 training cases), planned and preprocessed for the 2d configuration."""
    from nnunet_dale.benchmark_data import make_benchmark

    make_benchmark(nnunet_dirs["nnUNet_raw"], dataset_id=990, num_train=10, num_test=4, size=64, seed=0)
    plan_and_preprocess(990)
    return 990


def build(cls, dataset_id: int, initialize: bool = True, configuration: str = "2d"):
    """A trainer of class `cls` on the CPU (nnunet_dale.inprocess.build_trainer)."""
    return build_trainer(cls, dataset_id, initialize, configuration)


@pytest.fixture(scope="session")
def batch(dataset_2d):
    torch.manual_seed(0)
    np.random.seed(0)
    from nnunet_dale.trainer import nnUNetTrainerDALE

    return next(single_process_loader(build(nnUNetTrainerDALE, dataset_2d)))


def train_result_folder(cls, dataset_id: int, steps: int, results: Path, seed: int = 0) -> Path:
    """A trainer of class `cls` trained for `steps` iterations on the CPU and saved as nnU-Net saves a result, under
    `results`: `<Trainer>__<plans>__2d/plans.json`, `dataset.json` and `fold_0/checkpoint_final.pth`. Returns the
    fold folder."""
    from batchgenerators.utilities.file_and_folder_operations import save_json

    torch.manual_seed(seed)
    np.random.seed(seed)
    trainer = build(cls, dataset_id)
    loader = single_process_loader(trainer)
    trainer.network.train()
    for _ in range(steps):
        trainer.train_step(next(loader))
    fold_dir = Path(results) / Path(trainer.output_folder_base).name / "fold_0"
    fold_dir.mkdir(parents=True)
    save_json(trainer.plans_manager.plans, str(fold_dir.parent / "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, str(fold_dir.parent / "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(str(fold_dir / "checkpoint_final.pth"))
    return fold_dir


BIN = Path(sys.executable).parent


def run_cli(*cmd: str, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    """Run a command of this environment (nnUNetv2_*, nnunet-dale); with ok=True a failure shows its output."""
    result = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if ok and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def cli_env(root: Path) -> dict:
    """The environment for nnU-Net's command lines (`nnunet_env.nnunet_environment`): nnUNet_* folders under `root`,
    no NNUNET_DALE_* overrides, DALE's trainers findable where `nnunet-dale trainers-path` says."""
    environ = nnunet_environment(root, without_dale_variables(), create=True)
    environ["nnUNet_extTrainer"] = run_cli("nnunet-dale", "trainers-path", env=environ).stdout.strip()
    return environ


@dataclass(frozen=True)
class QuickDemo:
    """A finished `nnunet-dale demo --quick` (`quick_demo`): its folder, command, environment and first run."""

    out: Path
    cmd: list[str]
    env: dict[str, str]
    first: subprocess.CompletedProcess
    dataset: str = "Dataset990_DALEBench"

    @property
    def folders(self) -> dict[str, str]:
        """The demo's nnUNet_raw / _preprocessed / _results, to read its dataset, plans and models from. Asserts that
        the demo ran."""
        assert self.first.returncode == 0, "nnunet-dale demo --quick failed:\n" + self.first.stdout[-3000:]
        return {name: str(self.out / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}

    def model(self, trainer: str) -> Path:
        """The result folder (`<trainer>__nnUNetPlans__2d`, parent of fold_0) of one of the demo's three trainings."""
        return Path(self.folders["nnUNet_results"]) / self.dataset / f"{trainer}__nnUNetPlans__2d"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> QuickDemo:
    """`nnunet-dale demo --quick` run once for the session as a user runs it (its own process, no nnUNet_* or
    NNUNET_DALE_* variables): the benchmark Dataset990_DALEBench (10 training cases with noisy labels, 4 test cases
    with clean ones, seed 0) planned, nnUNetTrainer_quick and nnUNetTrainerDALE_quick (2 epochs x 10 iterations) and
    nnUNetTrainer_quickSameTime (5 epochs, default nnU-Net given DALE's time) trained on fold 0 by nnUNetv2_train, the
    test cases predicted by nnUNetv2_predict and evaluated, the comparison made.
    The slow end-to-end tests share these trainings instead of training their own. They only read the demo's folder
    (what they run on its models writes into their own temporary folders); only test_demo runs the demo again in it,
    which must reuse every step."""
    out = tmp_path_factory.mktemp("quick_demo") / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", DALE_VARIABLE_PREFIX))}
    cmd = [str(BIN / "nnunet-dale"), "demo", "--quick", "-o", str(out)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
    return QuickDemo(out, cmd, env, first)


def tree_state(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: equal before and after, nothing was written."""
    return {f: (f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(folder).rglob("*")) if f.is_file()}
