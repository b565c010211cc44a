"""3D end to end through nnU-Net's real command lines on an anisotropic volume dataset (slow).

The generated 3D benchmark is isotropic (identity affine, 1 mm); its training volumes are rewritten with spacing
3 x 1 x 1 mm (nnU-Net's axis order), so the plan keeps that spacing and DALE's split patch must follow it:
16 voxels along the fine axes and the same 16 mm (about 5 voxels) along the coarse one.
A 3D DALE iteration takes several seconds on 2 CPU cores, so the run uses a test-only variant of
nnUNetTrainerDALE_quick with 1 epoch x 2 iterations, from a temporary folder put on nnUNet_extTrainer.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_dale import trainers_path
from nnunet_dale.benchmark_data import make_benchmark
from nnunet_dale.nnunet_env import nnunet_environment, without_dale_variables

from conftest import run_cli as run

pytestmark = pytest.mark.slow
SPACING = (3.0, 1.0, 1.0)  # nnU-Net order (z, y, x); SimpleITK stores (x, y, z)
TRAINER = "nnUNetTrainerDALE_3dtest"
VARIANT = f"""
from nnunet_dale.variants import nnUNetTrainerDALE_quick


class {TRAINER}(nnUNetTrainerDALE_quick):
    epochs, iterations, val_iterations = 1, 2, 1
"""


def test_3d_anisotropic_plan_train_validate(tmp_path):
    (tmp_path / "extra_trainers").mkdir()
    (tmp_path / "extra_trainers" / "dale_3d_test_trainers.py").write_text(VARIANT)
    trainers = os.pathsep.join([str(tmp_path / "extra_trainers"), str(trainers_path())])
    env = nnunet_environment(tmp_path, without_dale_variables(), create=True, trainers=trainers)
    # the anisotropy rule of the 16 px patch (not the shipped patches per side) and no warm-up in the one epoch
    env.update(NNUNET_DALE_SPLIT_PATCHES="0", NNUNET_DALE_WARMUP_FRACTION="0")
    dataset = make_benchmark(tmp_path / "nnUNet_raw", dataset_id=992, dims=3, size=32, num_train=6, num_test=2)
    volumes = sorted((dataset / "imagesTr").glob("*.nii.gz")) + sorted((dataset / "labelsTr").glob("*.nii.gz"))
    assert len(volumes) == 12
    for path in volumes:
        image = sitk.ReadImage(str(path))
        assert image.GetSpacing() == (1.0, 1.0, 1.0)  # the generator writes isotropic volumes
        image.SetSpacing(SPACING[::-1])
        sitk.WriteImage(image, str(path))

    run("nnUNetv2_plan_and_preprocess", "-d", "992", "-c", "3d_fullres", "-np", "1", "-npfp", "1", env=env)
    name = dataset.name
    plans = json.loads((tmp_path / "nnUNet_preprocessed" / name / "nnUNetPlans.json").read_text())
    plan = plans["configurations"]["3d_fullres"]
    assert np.allclose(plan["spacing"], SPACING)  # below nnU-Net's anisotropy threshold: the spacing is kept
    assert all(p >= 16 for p in plan["patch_size"][1:]) and plan["patch_size"][0] >= 5

    run("nnUNetv2_train", "992", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu", env=env)
    out = tmp_path / "nnUNet_results" / name / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert math.isfinite(summary["foreground_mean"]["Dice"])
    log = next(out.glob("training_log_*.txt")).read_text()
    patch = tuple(int(n) for n in re.search(r"split patch size \((\d+), (\d+), (\d+)\)", log).groups())
    assert patch == (5, 16, 16)  # 16 mm along every axis: round(16 * 1 / 3) = 5 voxels at 3 mm
    assert log.count("DALE fuzzy fraction") == 1  # one line of DALE statistics per epoch
    stats = re.findall(r"DALE fuzzy fraction ([\d.e-]+), mean omega ([\d.e-]+)", log)
    assert all(0 < float(f) < 1 and math.isfinite(float(w)) for f, w in stats)
