"""Fine-tuning with DALE from pretrained weights, through nnU-Net's real command lines (slow).

Recipe of docs/finetuning.md: pretrain default nnU-Net on a dataset (here the session's quick demo's
nnUNetTrainer_quick, trained by nnUNetv2_train on Dataset990: conftest.quick_demo), move its plans to dataset 982
(fingerprint and plan 982, nnUNetv2_move_plans_between_datasets, nnUNetv2_preprocess -plans_name), fine-tune DALE on
982 with -pretrained_weights; then a DALE checkpoint as the source of a DALE fine-tuning.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import cli_env
from conftest import run_cli as run

pytestmark = pytest.mark.slow
PLANS = "nnUNetPlansFrom990"
TRAINER = "nnUNetTrainerDALE_finetune_test"
VARIANT = f'''
from nnunet_dale.variants import nnUNetTrainerDALE_finetune_quick


class {TRAINER}(nnUNetTrainerDALE_finetune_quick):
    """Test only: the fine-tuning schedule (initial lr 1e-3) at 2 epochs x 3 iterations (2 validation ones)."""

    epochs, iterations, val_iterations = 2, 3, 2
'''
SOURCE = "Dataset990_DALEBench"  # the quick demo's dataset


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """nnU-Net's folders in a temporary one, with a test-only nnUNetTrainerDALE_finetune_quick of 2 x 3 iterations
    (a DALE iteration costs several seconds on 2 CPU cores) on nnUNet_extTrainer before the package's trainers."""
    root = tmp_path_factory.mktemp("finetune")
    environ = cli_env(root)
    (root / "extra_trainers").mkdir()
    (root / "extra_trainers" / "finetune_test_trainers.py").write_text(VARIANT)
    environ["nnUNet_extTrainer"] = os.pathsep.join([str(root / "extra_trainers"), environ["nnUNet_extTrainer"]])
    return environ


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def distance(a: dict, b: dict, keys) -> float:
    return float(torch.sqrt(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in keys)))


def fresh_network(dataset: str, plans: str, env: dict) -> dict[str, torch.Tensor]:
    """The weights nnU-Net initialises for this dataset and plans (what a run without pretraining starts from)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(env["nnUNet_preprocessed"]) / dataset
    plans_manager = PlansManager(load_json(folder / f"{plans}.json"))
    dataset_json = load_json(folder / "dataset.json")
    cm = plans_manager.get_configuration("2d")
    torch.manual_seed(123)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, cm, determine_num_input_channels(plans_manager, cm, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, True,
    )  # fmt: skip
    return network.state_dict()


@pytest.fixture(scope="module")
def finetuned(env, quick_demo) -> dict:
    """The quick demo's nnUNetTrainer_quick (pretrained on 990) as the source: its plans transferred to 982 (a
    benchmark of another seed and noise), nnUNetTrainerDALE_finetune_quick (2 x 3 iterations) fine-tuned on 982 from
    its weights."""
    raw = Path(env["nnUNet_raw"])
    results = Path(env["nnUNet_results"])
    run("nnunet-dale", "make-benchmark", "--raw", str(raw), "--id", "982", "--noise", "2.0", "--seed", "1",
        "--train", "8", "--test", "2", "--size", "64", env=env)  # fmt: skip
    source = quick_demo.model("nnUNetTrainer_quick") / "fold_0" / "checkpoint_final.pth"
    assert source.is_file()
    # the source's planned folder as nnUNetv2_plan_and_preprocess left it, as far as the plans transfer reads it
    planned = Path(env["nnUNet_preprocessed"]) / SOURCE
    planned.mkdir(parents=True)
    for name in ("nnUNetPlans.json", "dataset.json"):
        shutil.copy(Path(quick_demo.folders["nnUNet_preprocessed"]) / SOURCE / name, planned / name)

    # transfer the pretrained model's plans to the target dataset (nnU-Net's pretraining documentation)
    run("nnUNetv2_extract_fingerprint", "-d", "982", "-np", "1", env=env)
    run("nnUNetv2_plan_experiment", "-d", "982", env=env)  # also puts dataset.json where nnUNetv2_preprocess reads it
    run("nnUNetv2_move_plans_between_datasets", "-s", "990", "-t", "982", "-sp", "nnUNetPlans", "-tp", PLANS, env=env)
    run("nnUNetv2_preprocess", "-d", "982", "-plans_name", PLANS, "-c", "2d", "-np", "1", env=env)
    assert (Path(env["nnUNet_preprocessed"]) / "Dataset982_DALEBench" / f"{PLANS}_2d").is_dir()

    trained = run(
        "nnUNetv2_train", "982", "2d", "0", "-tr", TRAINER, "-p", PLANS,
        "-pretrained_weights", str(source), "-device", "cpu", env=env,
    )  # fmt: skip
    out = results / "Dataset982_DALEBench" / f"{TRAINER}__{PLANS}__2d" / "fold_0"
    return {"source": source, "out": out, "stdout": trained.stdout}


def test_dale_finetunes_from_a_default_nnunet_checkpoint(finetuned, env):
    out = finetuned["out"]
    assert (out / "checkpoint_final.pth").is_file()
    assert "Loading pretrained weights from file" in finetuned["stdout"]
    log = next(out.glob("training_log_*.txt")).read_text()
    assert "Current learning rate: 0.001" in log  # the fine-tuning schedule's lower initial learning rate
    assert log.count("DALE fuzzy fraction") == 2  # DALE's train step ran, one statistics line per epoch

    pretrained, tuned = weights(finetuned["source"]), weights(out / "checkpoint_final.pth")
    fresh = fresh_network("Dataset982_DALEBench", PLANS, env)
    body = [k for k in tuned if ".seg_layers." not in k and tuned[k].is_floating_point() and tuned[k].ndim > 1]
    heads = [k for k in tuned if ".seg_layers." in k and k.endswith("weight")]
    assert body and heads
    # started from the pretrained weights: after 6 small steps the convolutions are still far closer to the
    # pretrained ones than an nnU-Net initialisation is (independent inits are about sqrt(2) norms apart)
    moved, init_gap = distance(tuned, pretrained, body), distance(fresh, pretrained, body)
    assert moved < 0.2 * init_gap, (moved, init_gap)
    # nnU-Net's rule: segmentation heads are never transferred (they may have another number of classes)
    assert distance(tuned, pretrained, heads) > 0.5 * distance(fresh, pretrained, heads)


def test_a_dale_checkpoint_is_a_pretrained_source_too(finetuned, env, quick_demo, monkeypatch):
    """The DALE run above as the source of a DALE fine-tuning on 990 (its plans are 990's; the quick demo's
    preprocessed 990, read only): loaded by nnU-Net's own maybe_load_checkpoint, the code path of `nnUNetv2_train
    -pretrained_weights`, without another training."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from nnunet_dale.variants import nnUNetTrainerDALE_finetune_quick

    for name in ("nnUNet_raw", "nnUNet_results"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("nnUNet_preprocessed", quick_demo.folders["nnUNet_preprocessed"])
    for key in [k for k in os.environ if k.startswith("NNUNET_DALE_")]:
        monkeypatch.delenv(key)
    source = finetuned["out"] / "checkpoint_final.pth"
    assert torch.load(source, map_location="cpu", weights_only=False)["logging"].get("_dale_config")  # a DALE one
    folder = Path(quick_demo.folders["nnUNet_preprocessed"]) / SOURCE
    plans = load_json(folder / "nnUNetPlans.json")
    plans["continue_training"] = False  # as nnU-Net's run_training sets it
    trainer = nnUNetTrainerDALE_finetune_quick(
        plans, "2d", 0, load_json(folder / "dataset.json"), device=torch.device("cpu")
    )
    assert trainer.initial_lr == pytest.approx(1e-3) and trainer.num_epochs == 2
    maybe_load_checkpoint(trainer, False, False, str(source))
    loaded, saved = trainer.network.state_dict(), weights(source)
    transferred = [k for k in loaded if ".seg_layers." not in k]
    assert transferred and all(torch.equal(loaded[k], saved[k]) for k in transferred)
    assert not any(torch.equal(loaded[k], saved[k]) for k in loaded if ".seg_layers." in k and k.endswith("weight"))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
