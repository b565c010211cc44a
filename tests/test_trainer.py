"""nnUNetTrainerDALE built against the installed nnU-Net from a generated dataset's plans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from nnunet_dale.confidence import Confidence
from nnunet_dale.config import PAPER, SHIPPED, DALEConfig, DALEConfigError, load_config
from nnunet_dale.progress import DALE_STATS
from nnunet_dale.split import fuzzy_split
from nnunet_dale.trainer import nnUNetTrainerDALE, unwrap
from nnunet_dale.variants import nnUNetTrainerDALE_noLW, nnUNetTrainerDALE_noOmega, nnUNetTrainerDALE_paper
from nnunet_dale.weighted_loss import weight_pyramid

from conftest import build, copy_batch


def test_one_dale_step_changes_parameters_and_logs_statistics(dataset_2d, batch):
    trainer = build(nnUNetTrainerDALE_paper, dataset_2d)
    before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
    outputs = [trainer.train_step(copy_batch(batch)) for _ in range(2)]
    for out in outputs:
        assert set(out) == {"loss", *DALE_STATS}
        assert all(np.isfinite(v) for v in out.values())
    out = outputs[0]
    assert 0 < out["dale_fuzzy_fraction"] < 1
    assert 0 < out["dale_noisy_share"] < 1
    assert 0.9 - 1e-4 <= out["dale_mean_omega"] <= 1.1 + 1e-4  # one Adam step of lr 0.1 from omega = 1
    assert out["dale_l_w"] > 0
    changed = [n for n, p in trainer.network.named_parameters() if not torch.equal(p, before[n])]
    # every parameter moves except the lowest deep-supervision head, whose loss weight is 0 in nnU-Net
    assert set(before) - set(changed) == {"decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    # the network's parameters are still the optimiser's (the functional shadow network must not swap them out)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.network.parameters()} == optimised

    # per-epoch statistics reach nnU-Net's logger, log file and progress plot
    trainer.current_epoch = 0
    trainer.on_epoch_start()
    trainer.logger.log("lrs", 0.01, 0)
    trainer.on_train_epoch_end(outputs)
    for key in DALE_STATS:
        assert trainer.logger.get_value(key, step=0) == pytest.approx(np.mean([o[key] for o in outputs]), rel=1e-5)
    trainer.logger.log("val_losses", 0.5, 0)
    trainer.logger.log("mean_fg_dice", 0.5, 0)
    trainer.logger.log("dice_per_class_or_region", [0.5], 0)
    trainer.logger.log("epoch_end_timestamps", 1.0, 0)
    trainer.logger.plot_progress_png(trainer.output_folder)
    assert plt.imread(Path(trainer.output_folder) / "progress.png").shape[0] == 5400  # nnU-Net's own, untouched
    assert plt.imread(Path(trainer.output_folder) / "progress_dale.png").shape[:2] == (640, 960)  # 12 x 8 in, 80 dpi
    log_text = Path(trainer.log_file).read_text()
    assert "DALE fuzzy fraction" in log_text and "noisy share" in log_text


def fuzzy_step_gradients(dataset_id, batch, alpha, site):
    """Parameter gradients of the fuzzy step (the second optimiser step) from a fixed start."""
    os.environ["NNUNET_DALE_ALPHA"] = str(alpha)
    os.environ["NNUNET_DALE_FEATURE_SITE"] = site
    try:
        torch.manual_seed(0)
        trainer = build(nnUNetTrainerDALE_paper, dataset_id)
    finally:
        del os.environ["NNUNET_DALE_ALPHA"], os.environ["NNUNET_DALE_FEATURE_SITE"]
    grads = []

    def capture(loss, name, keep_gradient=False):
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in trainer.network.named_parameters() if p.grad is not None})
        trainer.optimizer.step()

    trainer._optimizer_step = capture
    torch.manual_seed(1)
    trainer.train_step(copy_batch(batch))
    return grads[1]


@pytest.mark.parametrize("site", ["head", "bottleneck"])
def test_alignment_gradient_reaches_the_network_through_the_feature_path(dataset_2d, batch, site):
    without = fuzzy_step_gradients(dataset_2d, batch, 0.0, site)
    with_lw = fuzzy_step_gradients(dataset_2d, batch, 0.5, site)
    differs = {n for n in without if not torch.allclose(without[n], with_lw[n], rtol=1e-5, atol=1e-8)}
    if site == "head":
        # L_W acts on the input of the final head: the head's own weights see no change, the layers below do
        assert not any(n.startswith("decoder.seg_layers") for n in differs)
        assert any(n.startswith("decoder.stages.3") for n in differs)
        assert any(n.startswith("encoder.stages.0") for n in differs)
    else:
        # L_W acts on the bottleneck output: only encoder parameters can change
        assert differs and all(n.startswith("encoder.") for n in differs)
        assert any(n.startswith("encoder.stages.4") for n in differs)


def test_ablation_variants(dataset_2d, batch):
    no_omega = build(nnUNetTrainerDALE_noOmega, dataset_2d)
    no_omega.current_epoch = 999  # past the shipped configuration's warm-up
    out = no_omega.train_step(copy_batch(batch))
    assert out["dale_mean_omega"] == pytest.approx(1.0) and out["dale_noisy_share"] == 0
    assert out["dale_l_w"] > 0
    no_lw = build(nnUNetTrainerDALE_noLW, dataset_2d)
    assert no_lw.feature_tap is None
    no_lw.current_epoch = 999
    out = no_lw.train_step(copy_batch(batch))
    assert out["dale_l_w"] == 0 and out["dale_mean_omega"] != pytest.approx(1.0)


def reference_step(trainer, batch, learn_omega: bool = True) -> None:
    """Algorithm 1 written out slowly: every forward separate (no shared fuzzy forward), the hypergradient of Eq. 11
    by double backward through an explicit functional shadow step (not the trainer's JVP), Adam's first step on
    omega by its closed form. `learn_omega=False` keeps omega = 1 (a deliberately wrong step, for sensitivity).
    The loss (`dale_loss`) and L_W (`_alignment`) are the trainer's own: they have their own reference tests."""
    cfg, net, loss = trainer.dale_config, trainer.network, trainer.dale_loss
    data, target = batch["data"], batch["target"]
    split = fuzzy_split(
        data, target[0], trainer.dale_patch_size, cfg.tau, cfg.entropy_bins, cfg.use_entropy, cfg.use_edges
    )
    w_n, w_f = weight_pyramid(split.nonfuzzy, target), weight_pyramid(split.fuzzy, target)

    def sgd(objective):
        trainer.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        trainer.optimizer.step()

    with trainer.feature_tap.capture() as tap:  # Eq. 1 at theta_{t-1}
        loss_n = loss(net(data * split.nonfuzzy), target, w_n)
    features_n = tap.value.detach()
    sgd(loss_n)

    params = dict(net.named_parameters())  # theta_n
    omega = torch.ones_like(split.fuzzy, requires_grad=True)
    loss_p = loss(net(data * split.fuzzy), target, weight_pyramid(omega * split.fuzzy, target), w_f)  # Eq. 8
    grads = torch.autograd.grad(loss_p, list(params.values()), create_graph=True, materialize_grads=True)
    theta_p = {n: p - trainer.optimizer.param_groups[0]["lr"] * g for (n, p), g in zip(params.items(), grads)}
    shadow_out = torch.func.functional_call(net, theta_p, (data * split.nonfuzzy,), tie_weights=False)
    (hypergradient,) = torch.autograd.grad(loss(shadow_out, target, w_n), omega)  # Eq. 9-11
    step = cfg.omega_lr * hypergradient / (hypergradient.abs() + 1e-8)  # Adam's first step: lr * m_hat / sqrt(v_hat)
    omega_star = (1 - step if learn_omega else torch.ones_like(step)).detach()

    with trainer.feature_tap.capture() as tap:  # a fresh fuzzy forward at theta_n (Eq. 2)
        out_f = net(data * split.fuzzy)
    confidence = Confidence(omega=omega_star, update=omega_star - 1)
    l_w = trainer._alignment(features_n, tap.value, trainer._membership(target[0]), split, confidence.clean).loss
    mean_omega = (omega_star * split.fuzzy).sum() / split.fuzzy.sum()
    sgd(loss(out_f, target, weight_pyramid(omega_star * split.fuzzy, target), w_f) + cfg.alpha * mean_omega * l_w)


def test_exact_step_equals_a_slow_unshared_reference(dataset_2d, batch):
    """The trainer's literal Algorithm 1 (`_algorithm_1`: shared fuzzy forward, JVP hypergradient) lands on the
    parameters of the slow reference (separate forwards, double backward), in float64; the same reference with
    omega = 1 does not. The shipped single update has its own reference (test_shipped_step_reference.py)."""
    batch64 = {"data": batch["data"].double(), "target": [t.double() for t in batch["target"]]}
    torch.manual_seed(0)
    trainers = [build(nnUNetTrainerDALE_paper, dataset_2d) for _ in range(3)]
    for t in trainers:
        t.network.double()
        t.network.load_state_dict(trainers[0].network.state_dict())
    torch.manual_seed(7)  # the covariance perturbation of Eq. 13 is the only random draw of a step
    trainers[0].train_step(copy_batch(batch64))
    torch.manual_seed(7)
    reference_step(trainers[1], copy_batch(batch64))
    torch.manual_seed(7)
    reference_step(trainers[2], copy_batch(batch64), learn_omega=False)

    def distance(a, b):
        pairs = zip(a.network.parameters(), b.network.parameters())
        return max(float((p - q).abs().max()) for p, q in pairs)

    scale = max(float(p.abs().max()) for p in trainers[1].network.parameters())
    assert distance(trainers[0], trainers[1]) < 1e-9 * scale
    assert distance(trainers[2], trainers[1]) > 1e-5 * scale  # omega moves the step far beyond the tolerance


@pytest.mark.parametrize(
    "env,message",
    [
        ({"NNUNET_DALE_TAU": "1.5"}, "tau must be a number in"),
        ({"NNUNET_DALE_ALPHA": "-1"}, "alpha must be"),
        ({"NNUNET_DALE_LOOKAHEAD_STEPS": "0"}, "lookahead_steps must be"),
        ({"NNUNET_DALE_FEATURE_SITE": "middle"}, "feature_site must be one of"),
        ({"NNUNET_DALE_PATCH_SIZE": "128"}, "larger than the network's patch size"),
        ({"NNUNET_DALE_TAU": "high"}, "cannot read 'high'"),
    ],
)
def test_bad_hyperparameters_fail_at_trainer_start(dataset_2d, monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DALEConfigError, match=message):
        build(nnUNetTrainerDALE, dataset_2d, initialize=False)


def test_config_recorded_in_checkpoint_and_debug_json_and_checked_on_resume(dataset_2d, monkeypatch):
    trainer = build(nnUNetTrainerDALE, dataset_2d)
    trainer._save_debug_information()
    debug = json.loads((Path(trainer.output_folder) / "debug.json").read_text())
    # the shipped split: 16 patches per side of the 64 x 64 network patch
    assert "tau=0.9" in debug["dale_config"] and debug["dale_patch_size"] == "(4, 4)"
    checkpoint = Path(trainer.output_folder) / "checkpoint_test.pth"
    trainer.save_checkpoint(str(checkpoint))
    saved = torch.load(checkpoint, weights_only=False)["logging"]["_dale_config"]
    assert saved["tau"] == 0.9 and saved["feature_site"] == "head"

    build(nnUNetTrainerDALE, dataset_2d).load_checkpoint(str(checkpoint))  # same configuration: fine
    monkeypatch.setenv("NNUNET_DALE_TAU", "0.8")
    changed = build(nnUNetTrainerDALE, dataset_2d)
    with pytest.raises(DALEConfigError, match="changed: tau"):
        changed.load_checkpoint(str(checkpoint))
    monkeypatch.setenv("NNUNET_DALE_ALLOW_CONFIG_CHANGE", "1")
    changed.load_checkpoint(str(checkpoint))
    assert unwrap(changed.network) is changed.network


def test_a_fresh_start_refuses_to_overwrite_a_run_with_other_settings(dataset_2d, monkeypatch):
    """Same class, plans and fold = same result folder: a fresh start under other DALE settings would overwrite the
    earlier run's checkpoints. Refused; allowed with the same settings, after --c (load_checkpoint) and with the
    override. An older checkpoint lacking the newer fields compares with the defaults it was written under."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: None)  # only DALE's check runs here
    first = build(nnUNetTrainerDALE, dataset_2d)
    checkpoint = Path(first.output_folder) / "checkpoint_latest.pth"
    first.save_checkpoint(str(checkpoint))
    build(nnUNetTrainerDALE, dataset_2d).on_train_start()  # the same settings: nnU-Net's own overwrite
    monkeypatch.setenv("NNUNET_DALE_TAU", "0.8")
    other = build(nnUNetTrainerDALE, dataset_2d)
    with pytest.raises(DALEConfigError, match=r"checkpoint_latest.pth was written under another .*changed: tau"):
        other.on_train_start()
    monkeypatch.setenv("NNUNET_DALE_ALLOW_CONFIG_CHANGE", "1")
    other.on_train_start()  # the explicit override
    other.load_checkpoint(str(checkpoint))
    monkeypatch.delenv("NNUNET_DALE_ALLOW_CONFIG_CHANGE")
    other.on_train_start()  # resumed (--c): the folder is this run's own
    # an old checkpoint (before the study's fields existed) of the paper's configuration
    saved = torch.load(checkpoint, weights_only=False)
    saved["logging"]["_dale_config"] = {"tau": 0.9, "alpha": 0.05, "patch_size": None}
    torch.save(saved, checkpoint)
    monkeypatch.delenv("NNUNET_DALE_TAU")
    paper = build(nnUNetTrainerDALE_paper, dataset_2d)
    assert paper._config_changes(saved) is None
    assert "single_update" in build(nnUNetTrainerDALE, dataset_2d)._config_changes(saved)
    checkpoint.unlink()


# nnUNetTrainerDALE's configuration as version 0.2.0 wrote it into checkpoint["logging"]["_dale_config"]
V02_SHIPPED = {
    "tau": 0.9, "alpha": 0.05, "lookahead_steps": 1, "omega_lr": 0.1, "patch_size": None, "entropy_bins": 32,
    "use_entropy": True, "use_edges": True, "use_omega": True, "use_alignment": True, "omega_mode": "exact",
    "feature_site": "head", "cov_perturbation": 0.01, "ridge": 0.0001, "min_class_mass": 8.0, "split_patches": 16,
    "lw_scale": "trace", "min_class_mass_per_dim": 4.0, "target_momentum": 0.9, "omega_normalise": True,
    "clean_threshold": 0.05, "single_update": True, "mask_input": False, "warmup_fraction": 0.1,
}  # fmt: skip
# ... and as 0.2's later commits wrote it, with the study's fields (omega_centre, omega_shuffle, dice_scope: retired)
V02_SHIPPED_LATER = {**V02_SHIPPED, "omega_every": 1, "omega_centre": "mean", "dice_scope": "region",
                     "omega_shuffle": False}  # fmt: skip
# nnUNetTrainerDALE_paper's, as 0.2.0 wrote it (then every field at the dataclass default)
V02_PAPER = {
    "tau": 0.9, "alpha": 0.05, "lookahead_steps": 1, "omega_lr": 0.1, "patch_size": None, "entropy_bins": 32,
    "use_entropy": True, "use_edges": True, "use_omega": True, "use_alignment": True, "omega_mode": "exact",
    "feature_site": "head", "cov_perturbation": 0.01, "ridge": 0.0001, "min_class_mass": 8.0, "split_patches": 0,
    "lw_scale": "none", "min_class_mass_per_dim": 0.0, "target_momentum": 0.0, "omega_normalise": False,
    "clean_threshold": 0.0, "single_update": False, "mask_input": True, "warmup_fraction": 0.0,
}  # fmt: skip


def test_shipped_and_paper_configurations_are_what_0_2_wrote():
    """The dataclass defaults are the shipped configuration and PAPER the literal reading, each as 0.2 recorded it
    (with the field added since at its only value then); the trainers resolve to them."""
    added = {"omega_every": 1}
    assert DALEConfig().to_dict() == SHIPPED.to_dict() == {**V02_SHIPPED, **added}
    assert PAPER.to_dict() == {**V02_PAPER, **added}
    assert load_config(nnUNetTrainerDALE.dale_defaults, environ={}) == SHIPPED
    assert load_config(nnUNetTrainerDALE_paper.dale_defaults, environ={}) == PAPER


def test_a_0_2_checkpoint_resumes_under_its_settings_and_is_refused_under_others(dataset_2d, monkeypatch, tmp_path):
    """A checkpoint as 0.2 wrote it (its configuration record written out above; weights and optimiser state from a
    fresh trainer) resumes under the settings it was written with, also where a retired field (omega_shuffle,
    dice_scope) now lives in a study trainer, and is refused under any other with one line naming the changed fields."""
    from benchmarks.trainers.study_trainers import nnUNetTrainerDALE_imageDice, nnUNetTrainerDALE_omegaShuffled

    path = tmp_path / "checkpoint_latest.pth"
    build(nnUNetTrainerDALE, dataset_2d).save_checkpoint(str(path))
    checkpoint = torch.load(path, weights_only=False)

    def written_by_0_2(record: dict) -> str:
        checkpoint["logging"]["_dale_config"] = record
        torch.save(checkpoint, path)
        return str(path)

    shuffled = {**V02_SHIPPED_LATER, "omega_shuffle": True}
    image_dice = {**V02_SHIPPED_LATER, "dice_scope": "image"}
    for cls, record in [
        (nnUNetTrainerDALE, V02_SHIPPED),
        (nnUNetTrainerDALE, V02_SHIPPED_LATER),
        (nnUNetTrainerDALE_paper, V02_PAPER),
        (nnUNetTrainerDALE_omegaShuffled, shuffled),
        (nnUNetTrainerDALE_imageDice, image_dice),
    ]:
        trainer = build(cls, dataset_2d)
        trainer.load_checkpoint(written_by_0_2(record))
        assert trainer.dale_resumed, (cls.__name__, record)
    refused = [
        (nnUNetTrainerDALE, shuffled, {}, "omega_shuffle"),
        (nnUNetTrainerDALE_omegaShuffled, V02_SHIPPED, {}, "omega_shuffle"),
        (nnUNetTrainerDALE, image_dice, {}, "dice_scope"),
        (nnUNetTrainerDALE_imageDice, V02_SHIPPED_LATER, {}, "dice_scope"),
        (nnUNetTrainerDALE_noOmega, V02_SHIPPED_LATER, {}, "use_omega"),
        (nnUNetTrainerDALE, V02_SHIPPED, {"NNUNET_DALE_TAU": "0.8"}, "tau"),
        (nnUNetTrainerDALE_paper, V02_SHIPPED, {}, "clean_threshold, lw_scale, mask_input, min_class_mass_per_dim, "
         "omega_normalise, single_update, split_patches, target_momentum, warmup_fraction"),
        (nnUNetTrainerDALE, V02_PAPER, {}, "clean_threshold, lw_scale, mask_input, min_class_mass_per_dim, "
         "omega_normalise, single_update, split_patches, target_momentum, warmup_fraction"),
    ]  # fmt: skip
    for cls, record, environ, changed in refused:
        with monkeypatch.context() as m:
            for name, value in environ.items():
                m.setenv(name, value)
            trainer = build(cls, dataset_2d)
            with pytest.raises(DALEConfigError) as error:
                trainer.load_checkpoint(written_by_0_2(record))
        message = str(error.value)
        assert message.startswith(
            f"this checkpoint was written under a different DALE configuration (changed: {changed})"
        )
        assert "\n" not in message and not trainer.dale_resumed
