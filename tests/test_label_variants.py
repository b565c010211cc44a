"""DALE on nnU-Net's other label layouts: an ignore label, region-based training with overlapping regions, both.

nnU-Net's conventions (nnunetv2/utilities/label_handling/label_handling.py): dataset.json "labels" may hold
"ignore": N, the highest label value, voxels that carry no annotation; a label that is a list of label values is a
region ("whole": [1, 2] and "core": 2 overlap), which needs "regions_class_order" and switches nnU-Net to
sigmoid outputs with Dice + BCE on region masks (the ignore label then becomes the last target channel).
Each dataset here is written by hand: 8 PNG cases of 64 x 64, a bright lesion with a brighter core.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from PIL import Image

from nnunet_dale.alignment import class_membership
from nnunet_dale.progress import NOT_ALWAYS_DEFINED
from nnunet_dale.trainer import nnUNetTrainerDALE
from nnunet_dale.variants import nnUNetTrainerDALE_paper
from nnunet_dale.weighted_loss import PixelWeightedDCandBCE, PixelWeightedDCandCE

from conftest import build, copy_batch, plan_and_preprocess, single_process_loader

pytestmark = pytest.mark.slow  # three datasets planned and preprocessed: minutes on 2 cores


SIZE, CASES = 64, 8
# kind -> (dataset id, dataset.json "labels", regions_class_order, label value of the lesion's core, ignore value)
KINDS = {
    "ignore": (994, {"background": 0, "lesion": 1, "ignore": 2}, None, 1, 2),
    "regions": (995, {"background": 0, "whole": [1, 2], "core": 2}, [1, 2], 2, None),
    "regions+ignore": (996, {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, [1, 2], 2, 3),
}


def write_dataset(raw: Path, kind: str) -> int:
    dataset_id, labels, order, core, ignore = KINDS[kind]
    folder = raw / f"Dataset{dataset_id}_{kind.replace('+', '')}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(dataset_id)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for case in range(CASES):
        cy, cx = rng.uniform(20, 44, 2)
        radius = rng.uniform(8, 14)
        distance = np.hypot(yy - cy, xx - cx)
        label = np.zeros((SIZE, SIZE), np.uint8)
        label[distance < radius] = 1
        label[distance < radius / 2] = core
        if ignore is not None:  # an unannotated band around the lesion border and an unannotated corner
            label[np.abs(distance - radius) < 2] = ignore
            label[: 8 + case, -12:] = ignore
        image = 60 + 80 * (distance < radius) + 60 * (distance < radius / 2) + rng.normal(0, 12, (SIZE, SIZE))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / "imagesTr" / f"c{case:03d}_0000.png")
        Image.fromarray(label).save(folder / "labelsTr" / f"c{case:03d}.png")
    dataset = {
        "channel_names": {"0": "grey"},
        "labels": labels,
        "numTraining": CASES,
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
    }
    if order is not None:
        dataset["regions_class_order"] = order
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return dataset_id


@pytest.fixture(scope="module", params=list(KINDS))
def setup(request, nnunet_dirs):
    """(kind, a DALE trainer on that dataset, one augmented nnU-Net batch of it)."""
    kind = request.param
    dataset_id = write_dataset(nnunet_dirs["nnUNet_raw"], kind)
    plan_and_preprocess(dataset_id)
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = build(nnUNetTrainerDALE_paper, dataset_id)
    return kind, trainer, next(single_process_loader(trainer))


def ignored(trainer, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per deep-supervision output, the voxels nnU-Net ignores, as (B, 1, *spatial) bool."""
    if trainer.label_manager.has_regions:
        return [t[:, -1:].bool() for t in targets]
    return [t == trainer.label_manager.ignore_label for t in targets]


def test_two_dale_steps_stay_finite(setup):
    kind, trainer, batch = setup
    lm = trainer.label_manager
    assert lm.has_regions == ("regions" in kind) and lm.has_ignore_label == ("ignore" in kind)
    heads = 2  # regions: whole and core; labels: background and lesion
    expected_channels = (2 + lm.has_ignore_label) if lm.has_regions else 1
    assert batch["target"][0].shape[1] == expected_channels and lm.num_segmentation_heads == heads
    if lm.has_ignore_label:
        assert ignored(trainer, batch["target"])[0].any()
    if lm.has_regions:  # the regions overlap in this batch: core voxels are also whole voxels
        member = class_membership(batch["target"][0], heads, True, lm.ignore_label)
        assert ((member[:, 0] > 0) & (member[:, 1] > 0)).any()

    omegas = []
    confidence = trainer._confidence

    def recording(*args, **kwargs):
        out = confidence(*args, **kwargs)
        omegas.append(out.omega)
        return out

    trainer._confidence = recording
    before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
    outputs = [trainer.train_step(copy_batch(batch)) for _ in range(2)]
    del trainer._confidence
    assert len(omegas) == 2 and all(torch.isfinite(o).all() for o in omegas)
    assert any((o != 1).any() for o in omegas)  # omega was learned
    for out in outputs:
        assert all(np.isfinite(v) for v in out.values()), out
        assert 0 < out["dale_fuzzy_fraction"] < 1
    skipped = trainer.dale_fallbacks["class skipped in L_W (too little weight in a region)"]
    if kind == "regions+ignore":  # lesion patches all touch the ignored band or the core: often no non-fuzzy mass
        assert all(out["dale_l_w"] > 0 for out in outputs) or skipped > 0
    else:
        assert all(out["dale_l_w"] > 0 for out in outputs)  # alignment ran on the classes / regions
    assert not any("non-finite" in what for what in trainer.dale_fallbacks), trainer.dale_fallbacks
    params = dict(trainer.network.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert sum(not torch.equal(p, before[n]) for n, p in params.items()) > len(params) // 2


def test_shipped_steps_stay_finite_and_move_omega_within_each_class(setup):
    """The shipped configuration (single update, normalised omega, running L_W targets) on labels, regions and an
    ignore label: finite statistics, omega moved, and its class means near 1 (omega re-weights within a class)."""
    kind, paper_trainer, batch = setup
    trainer = build(nnUNetTrainerDALE, int(paper_trainer.plans_manager.dataset_name[7:10]))
    trainer.current_epoch = 999  # past the warm-up
    outputs = [trainer.train_step(copy_batch(batch)) for _ in range(2)]
    for out in outputs:
        assert all(np.isfinite(v) for k, v in out.items() if k not in NOT_ALWAYS_DEFINED), out
        assert out["dale_omega_moved"] > 0.5
        assert abs(out["dale_omega_fg"] - 1) < 0.05 and abs(out["dale_omega_bg"] - 1) < 0.05
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())


def test_ignored_voxels_have_zero_weight(setup):
    kind, trainer, batch = setup
    if "ignore" not in kind:
        pytest.skip("no ignore label")
    targets = [t.clone() for t in batch["target"]]
    masks = ignored(trainer, targets)
    g = torch.Generator().manual_seed(0)
    heads = trainer.label_manager.num_segmentation_heads

    def field(channels, like):
        return torch.randn((like.shape[0], channels, *like.shape[2:]), generator=g, dtype=torch.float64)

    logits = [field(heads, t).requires_grad_() for t in targets]
    weights = [torch.rand(m.shape, generator=g, dtype=torch.float64) + 0.1 for m in masks]
    normalisers = [torch.rand(m.shape, generator=g, dtype=torch.float64) + 0.1 for m in masks]
    loss = trainer.dale_loss(logits, targets, weights, normalisers)
    loss.backward()
    for lg, m, factor in zip(logits, masks, trainer.dale_loss.weight_factors):
        if factor == 0:  # nnU-Net's lowest deep-supervision output does not enter the loss
            continue
        assert torch.all(lg.grad * m == 0)  # no gradient reaches an ignored voxel's outputs
        assert (lg.grad * ~m).abs().sum() > 0

    def changed_at(where, scale):
        moved = [(lg + scale * field(heads, lg) * w).detach() for lg, w in zip(logits, where)]
        return trainer.dale_loss(moved, targets, weights, normalisers)

    assert torch.allclose(changed_at(masks, 5.0), loss, rtol=1e-12, atol=0)  # other logits at ignored voxels
    other_weights = [w + 7.0 * m for w, m in zip(weights, masks)]  # other weights at ignored voxels
    other_norms = [n + 3.0 * m for n, m in zip(normalisers, masks)]
    assert torch.allclose(trainer.dale_loss(logits, targets, other_weights, other_norms), loss, rtol=1e-12, atol=0)
    assert not torch.allclose(changed_at([~m for m in masks], 5.0), loss, rtol=1e-6)  # elsewhere: it matters

    # unit weights against nnU-Net's own loss of the same plan, on the full-resolution output
    inner = trainer.loss.loss
    ones = torch.ones_like(weights[0])
    ours = trainer.dale_loss.loss(logits[0], targets[0], ones)
    if trainer.label_manager.has_regions:
        # nnU-Net's masked BCE sums over the R region channels without dividing by R (its unmasked BCE is a mean
        # over channels); ours is the channel mean in both cases, so its BCE term is 1/R of nnU-Net's here.
        assert isinstance(trainer.dale_loss.loss, PixelWeightedDCandBCE)
        regions = logits[0].shape[1]
        kwargs = {"batch_dice": inner.dc.batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": False}
        target = targets[0].double()
        nnunet_dice = DC_and_BCE_loss({}, kwargs, weight_ce=0, use_ignore_label=True)(logits[0], target)
        nnunet_bce = DC_and_BCE_loss({}, kwargs, weight_dice=0, use_ignore_label=True)(logits[0], target)
        expected = nnunet_dice + nnunet_bce / regions  # nnU-Net computes this one in float32
        assert torch.allclose(ours.float(), expected.float(), rtol=1e-5)
    else:
        assert isinstance(trainer.dale_loss.loss, PixelWeightedDCandCE)
        assert torch.allclose(ours, inner(logits[0], targets[0].clone()), rtol=1e-10)

    # L_W's class statistics: an ignored voxel belongs to no class / region
    member = class_membership(targets[0], heads, trainer.label_manager.has_regions, trainer.label_manager.ignore_label)
    assert torch.all(member * masks[0] == 0) and (member * ~masks[0]).sum() > 0
