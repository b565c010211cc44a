"""Degenerate batches and injected non-finite values: DALE falls back, counts it, and never corrupts the weights."""

from __future__ import annotations

import pytest
import torch

import nnunet_dale.trainer as trainer_module
from nnunet_dale.progress import NOT_ALWAYS_DEFINED
from nnunet_dale.split import FuzzySplit
from nnunet_dale.trainer import nnUNetTrainerDALE
from nnunet_dale.variants import nnUNetTrainerDALE_paper

from conftest import build, copy_batch


def params_of(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.network.named_parameters()}


def all_finite(trainer) -> bool:
    return all(torch.isfinite(p).all() for p in trainer.network.parameters())


def record_steps(trainer) -> list[dict[str, torch.Tensor]]:
    """Parameters after every optimiser step of the trainer."""
    snapshots = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        snapshots.append(params_of(trainer))
        return out

    trainer.optimizer.step = recording_step
    return snapshots


def nan_like(value):
    return value * float("nan")


@pytest.mark.parametrize("cls", [nnUNetTrainerDALE_paper, nnUNetTrainerDALE], ids=["paper", "shipped"])
@pytest.mark.parametrize(
    "case",
    ["all background", "all foreground", "constant image", "constant image, all background", "class only in fuzzy"],
)
def test_degenerate_batches_train_without_nan(dataset_2d, batch, case, cls):
    trainer = build(cls, dataset_2d)
    trainer.current_epoch = 999  # past the shipped configuration's warm-up
    b = copy_batch(batch)
    if "all background" in case:
        b["target"] = [torch.zeros_like(t) for t in b["target"]]
    if case == "all foreground":
        b["target"] = [torch.ones_like(t) for t in b["target"]]
    if "constant image" in case:
        b["data"] = torch.full_like(b["data"], 0.7)
    if case == "class only in fuzzy":  # one foreground pixel: its patch is the only one with edges -> m = 1 there
        b["target"] = [torch.zeros_like(t) for t in b["target"]]
        b["data"] = torch.full_like(b["data"], 0.7)
        b["target"][0][0, 0, 20, 20] = 1
    out = trainer.train_step(b)
    out2 = trainer.train_step(copy_batch(b))
    # NaN by definition when there is no such step or loss (a skipped step, the single update, no fuzzy region)
    defined = [v for o in (out, out2) for k, v in o.items() if k not in NOT_ALWAYS_DEFINED]
    assert all(torch.isfinite(torch.tensor(float(v))) for v in defined)
    assert all_finite(trainer)
    if case == "constant image, all background":  # m = 0 everywhere: nothing is fuzzy
        assert out["dale_fuzzy_fraction"] == 0
        assert trainer.dale_fallbacks["no fuzzy region: omega and L_f skipped"] == 2
    if case == "class only in fuzzy":
        assert trainer.dale_fallbacks["class skipped in L_W (too little weight in a region)"] == 2


def test_everything_fuzzy_skips_the_nonfuzzy_step(dataset_2d, batch, monkeypatch):
    real_split = trainer_module.fuzzy_split

    def all_fuzzy(*args, **kwargs):
        split = real_split(*args, **kwargs)
        return FuzzySplit(torch.ones_like(split.fuzzy), torch.zeros_like(split.nonfuzzy), split.score)

    monkeypatch.setattr(trainer_module, "fuzzy_split", all_fuzzy)
    trainer = build(nnUNetTrainerDALE_paper, dataset_2d)
    steps = record_steps(trainer)
    out = trainer.train_step(copy_batch(batch))
    assert len(steps) == 1  # only the fuzzy step
    assert trainer.dale_fallbacks["no non-fuzzy region: non-fuzzy step skipped"] == 1
    assert out["dale_fuzzy_fraction"] == 1 and all_finite(trainer)


def test_non_finite_fuzzy_loss_skips_only_the_fuzzy_step(dataset_2d, batch, monkeypatch):
    monkeypatch.setattr(trainer_module, "fuzzy_objective", lambda seg, lw, alpha, omega: nan_like(seg))
    trainer = build(nnUNetTrainerDALE_paper, dataset_2d)
    steps = record_steps(trainer)
    trainer.train_step(copy_batch(batch))
    assert len(steps) == 1  # the non-fuzzy step happened, the fuzzy one was skipped
    after = params_of(trainer)
    assert all(torch.equal(after[n], steps[0][n]) for n in after)  # weights as the non-fuzzy step left them
    assert trainer.dale_fallbacks["non-finite loss or gradient: fuzzy step skipped"] == 1
    assert all(p.grad is None for p in trainer.network.parameters())  # no NaN gradient left behind
    trainer.on_train_epoch_end([{"loss": 0.0, **dict.fromkeys(trainer_module.DALE_STATS, 0.0)}])
    log = open(trainer.log_file).read()
    assert "WARNING: DALE non-finite loss or gradient: fuzzy step skipped" in log
    assert "DALE fallbacks this epoch (1 iterations): non-finite loss or gradient: fuzzy step skipped: 1" in log
    assert not trainer.dale_fallbacks  # reset for the next epoch


def test_non_finite_alignment_is_skipped_like_alpha_zero(dataset_2d, batch, monkeypatch):
    monkeypatch.setenv("NNUNET_DALE_ALPHA", "0")
    reference = build(nnUNetTrainerDALE_paper, dataset_2d)
    start = {k: v.clone() for k, v in reference.network.state_dict().items()}
    torch.manual_seed(1)
    reference.train_step(copy_batch(batch))

    real = trainer_module.alignment_loss

    def nan_alignment(*args, **kwargs):
        out = real(*args, **kwargs)
        return trainer_module.Alignment(loss=nan_like(out.loss), classes_used=out.classes_used)

    monkeypatch.setattr(trainer_module, "alignment_loss", nan_alignment)
    monkeypatch.delenv("NNUNET_DALE_ALPHA")
    injected = build(nnUNetTrainerDALE_paper, dataset_2d)
    injected.network.load_state_dict(start)
    torch.manual_seed(1)
    out = injected.train_step(copy_batch(batch))
    assert injected.dale_fallbacks["non-finite L_W: alignment skipped for this iteration"] == 1
    assert out["dale_l_w"] == 0
    ref_params, got = params_of(reference), params_of(injected)
    assert all(torch.allclose(ref_params[n], got[n], atol=1e-6) for n in got)


@pytest.mark.parametrize("mode", ["exact", "fast", "first_order", "first_order_jvp", "stale"])
def test_non_finite_omega_falls_back_to_one(dataset_2d, batch, monkeypatch, mode):
    name = "learn_confidence" if mode == "exact" else "first_order_confidence"
    real = getattr(trainer_module, name)

    def nan_omega(*args, **kwargs):
        out = real(*args, **kwargs)
        return trainer_module.Confidence(omega=nan_like(out.omega), update=out.update)

    monkeypatch.setattr(trainer_module, name, nan_omega)
    monkeypatch.setenv("NNUNET_DALE_OMEGA_MODE", mode)
    if mode not in ("exact", "fast"):  # the modes fused into the single update
        monkeypatch.setenv("NNUNET_DALE_SINGLE_UPDATE", "1")
    trainer = build(nnUNetTrainerDALE_paper, dataset_2d)
    if mode == "stale":  # its first step has no momentum to look along
        trainer.train_step(copy_batch(batch))
    out = trainer.train_step(copy_batch(batch))
    assert trainer.dale_fallbacks["non-finite omega: omega = 1 for this iteration"] == 1
    assert out["dale_mean_omega"] == pytest.approx(1.0) and out["dale_noisy_share"] == 0
    assert all_finite(trainer)


def test_class_with_fewer_pixels_than_feature_channels(dataset_2d, batch, monkeypatch):
    """At the bottleneck (4 x 4 per image, 512 channels) every class has fewer pixels than channels."""
    monkeypatch.setenv("NNUNET_DALE_FEATURE_SITE", "bottleneck")
    monkeypatch.setenv("NNUNET_DALE_MIN_CLASS_MASS", "1")
    trainer = build(nnUNetTrainerDALE_paper, dataset_2d)
    outputs = [trainer.train_step(copy_batch(batch)) for _ in range(2)]
    assert all(o["dale_l_w"] > 0 and all(torch.isfinite(torch.tensor(float(v))) for v in o.values()) for o in outputs)
    assert all_finite(trainer)
    assert not any("non-finite" in what for what in trainer.dale_fallbacks)
