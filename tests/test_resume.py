"""Resume after a crash through nnU-Net's real command line (slow: about two to three minutes on 2 CPU cores).

A test-only DALE variant saving checkpoint_latest.pth after every epoch lives in a temporary folder put on
nnUNet_extTrainer next to nnunet-dale's own (no product code involved). The run is SIGKILLed (process group: the
data-augmentation workers too) once a checkpoint exists and a later epoch has started; `--c` then continues from
the checkpoint's epoch to the end under the same DALE configuration, and refuses a changed one unless overridden.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnunet_dale import trainers_path
from nnunet_dale.config import SHIPPED, load_config
from nnunet_dale.nnunet_env import nnunet_environment, without_dale_variables

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TRAINER = "nnUNetTrainerDALE_resumetest"
EPOCHS = 3
VARIANT = f'''
import torch

from nnunet_dale.variants import nnUNetTrainerDALE_quick


class {TRAINER}(nnUNetTrainerDALE_quick):
    """Test only: {EPOCHS} epochs x 2 iterations, checkpoint_latest.pth after every epoch."""

    epochs, iterations, val_iterations = {EPOCHS}, 2, 1

    # nnU-Net records the __init__ arguments by name: the signature must be spelled out
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1
'''


def train_command(*extra: str) -> list[str]:
    return [str(BIN / "nnUNetv2_train"), "990", "2d", "0", "-tr", TRAINER, "-device", "cpu", *extra]


def train(env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(*extra), env=env, capture_output=True, text=True, timeout=900, check=False)


def epochs_started(log: Path) -> list[int]:
    return [int(n) for n in re.findall(r": Epoch (\d+) *$", log.read_text(), re.M)] if log.is_file() else []


def test_kill_and_resume_continues_with_the_same_dale_configuration(dataset_2d, nnunet_dirs, tmp_path):
    (tmp_path / "extra_trainers").mkdir()
    (tmp_path / "extra_trainers" / "resume_test_trainers.py").write_text(VARIANT)
    trainers = os.pathsep.join([str(tmp_path / "extra_trainers"), str(trainers_path())])
    env = nnunet_environment(nnunet_dirs["nnUNet_raw"].parent, without_dale_variables(), trainers=trainers)
    out = Path(nnunet_dirs["nnUNet_results"]) / "Dataset990_DALEBench" / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    latest, final = out / "checkpoint_latest.pth", out / "checkpoint_final.pth"

    # 1. train, and SIGKILL the whole process group once epoch >= 1 runs after a checkpoint was written
    with open(tmp_path / "first_run.txt", "w") as stdout:
        process = subprocess.Popen(
            train_command(), env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        try:
            while True:
                logs = sorted(out.glob("training_log_*.txt"))
                if latest.is_file() and logs and max(epochs_started(logs[0]), default=0) >= 1:
                    break
                assert process.poll() is None, f"training ended early: {(tmp_path / 'first_run.txt').read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 600 s"
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not final.exists()
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    resume_epoch = saved["current_epoch"]  # the next epoch to run
    assert 1 <= resume_epoch < EPOCHS
    original_config = saved["logging"]["_dale_config"]
    assert original_config == load_config(SHIPPED).to_dict()  # the variant keeps the shipped defaults

    # 2. a changed DALE configuration is refused, and leaves the checkpoint alone
    before = latest.read_bytes()
    refused = train({**env, "NNUNET_DALE_TAU": "0.5"}, "--c")
    assert refused.returncode != 0
    assert "different DALE configuration (changed: tau)" in refused.stdout + refused.stderr
    assert latest.read_bytes() == before and not final.exists()

    # 3. the same configuration continues from the checkpoint's epoch to the end
    old_logs = set(out.glob("training_log_*.txt"))
    resumed = train(env, "--c")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    new_logs = sorted(set(out.glob("training_log_*.txt")) - old_logs)
    assert len(new_logs) == 1
    assert epochs_started(new_logs[0]) == list(range(resume_epoch, EPOCHS))  # continued, not restarted
    assert final.is_file()
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == EPOCHS
    assert checkpoint["logging"]["_dale_config"] == original_config
    logged = checkpoint["logging"]
    for key in ("train_losses", "dale_fuzzy_fraction", "dale_mean_omega", "dale_l_w"):
        assert len(logged[key]) == EPOCHS, key  # one entry per epoch across both runs
    warmup = [e < SHIPPED.warmup_fraction * EPOCHS for e in range(EPOCHS)]  # nnU-Net's own steps: no statistics
    assert [math.isnan(v) for v in logged["dale_fuzzy_fraction"]] == warmup
    assert all(0 < v < 1 for v, w in zip(logged["dale_fuzzy_fraction"], warmup) if not w)
    assert new_logs[0].read_text().count("DALE fuzzy fraction") == EPOCHS - resume_epoch

    # 4. with the override a changed configuration is accepted (and recorded as the current one)
    allowed = train({**env, "NNUNET_DALE_TAU": "0.5", "NNUNET_DALE_ALLOW_CONFIG_CHANGE": "1"}, "--c")
    assert allowed.returncode == 0, allowed.stdout[-3000:] + allowed.stderr[-3000:]
    assert torch.load(final, map_location="cpu", weights_only=False)["logging"]["_dale_config"]["tau"] == 0.5
