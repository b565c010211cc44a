"""The label audit (nnunet_dale.audit): statistics against hand-computed values, the quality measures against
sklearn/scipy, a planted label error on a tiny trained network, and (slow) `nnunet-dale audit` end to end."""

from __future__ import annotations

import csv
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

from nnunet_dale.audit import (
    AuditError,
    AuditSettings,
    CaseAudit,
    TrainedModel,
    audit_case,
    audit_quality,
    auroc,
    boundary_band,
    case_corruption,
    checked_device,
    context_identifiers,
    csv_text,
    forward_transform,
    inverse_transform,
    omega_noisy,
    pass_transforms,
    rank_rows,
    reference_batch,
    region_statistics,
    tile_starts,
    writable_folder,
)
from nnunet_dale.cli import main
from nnunet_dale.confidence import functional_forward
from nnunet_dale.config import DALEConfig
from nnunet_dale.split import fuzzy_split
from nnunet_dale.weighted_loss import PixelWeightedDCandCE

from conftest import cli_env, tree_state
from conftest import run_cli as run


# ---------------------------------------------------------------------------------------------- statistics by hand
def test_boundary_band_counts_match_a_hand_count():
    square = np.zeros((20, 20), bool)
    square[5:11, 5:11] = True  # 6 x 6
    ring = boundary_band(square, 1)
    # inside: the 20 border pixels of the square; outside: the 24 edge neighbours (diagonal corners are sqrt(2) away)
    assert ring.sum() == 20 + 24 and ring[square].sum() == 20
    band = boundary_band(square, 2)
    # inside: all but the central 2 x 2; outside: 2 rows of 6 on each side + the 4 diagonal corners (sqrt(2) <= 2)
    assert band.sum() == 32 + 52
    assert not boundary_band(np.zeros((5, 5), bool), 2).any()
    full = np.ones((6, 6), bool)
    assert not boundary_band(full, 2).any()  # the image border is not a contour
    stack = np.stack([square, square])
    assert np.array_equal(boundary_band(stack, 2), np.stack([band, band]))  # slice by slice


def test_region_statistics_match_a_hand_computed_case():
    annotation = np.zeros((30, 30), bool)
    annotation[5:11, 5:11] = True  # region 1 (first in raster order)
    annotation[20:23, 20:23] = True  # region 2, 3 x 3
    noisy = np.zeros((30, 30))
    noisy[5:11, 4] = 1.0  # the outer column left of the square: flagged in every pass
    noisy[5, 5:11] = 0.6  # the square's top row (inside): flagged in 60 % of the passes
    noisy[0, 0] = 1.0  # far from every contour: counts nowhere
    evidence = np.zeros((30, 30))
    evidence[5:11, 4] = 2.0  # the same outer column: the reliable data pushes against these labels
    evidence[21, 21] = -3.0  # inside region 2, agreeing: only positive evidence counts
    evidence[0, 0] = 5.0  # far from every contour: only in the case's whole-image evidence
    regions, case = region_statistics(noisy, annotation, band=2, threshold=0.5, evidence=evidence)
    first, second = regions
    assert first == {
        "region": 1,
        "area_px": 36,
        "band_px": 84,
        "suspect_area_px": 12,
        "boundary_flagged_share": pytest.approx(12 / 44),  # both flagged lines lie in the 1-pixel rings
        "score": pytest.approx((6 * 1.0 + 6 * 0.6) / 84),
        "evidence": pytest.approx(6 * 2.0 / 84),
    }
    # 3 x 3: every inside pixel is within 2 of the background; outside: 2 rows of 3 per side + 4 corners
    assert second["band_px"] == 9 + 28 and second["score"] == 0 and second["suspect_area_px"] == 0
    assert second["evidence"] == 0
    assert case["region"] == "all" and case["area_px"] == 45
    assert case["band_px"] == 84 + 37 and case["score"] == pytest.approx(9.6 / 121)
    assert case["suspect_area_px"] == 12
    assert case["evidence"] == pytest.approx((12 + 5) / 900)  # without a fuzzy map: every pixel counts
    assert np.isnan(case["prediction_disagreement"]) and np.isnan(case["fuzzy_noisy_share"])

    # the model's prediction widens the case's zone (a lesion the annotator missed is looked at too)
    prediction = annotation.copy()
    prediction[24:27, 2:5] = True  # 3 x 3 the annotation does not have
    noisy[25, 3] = 1.0
    fuzzy = np.full((30, 30), 0.5)
    fuzzy[0, 0] = 0.0  # not judged in any pass: its evidence does not count
    _, case = region_statistics(noisy, annotation, 2, 0.5, prediction=prediction, fuzzy=fuzzy, evidence=evidence)
    assert case["band_px"] == 84 + 37 + 37 and case["score"] == pytest.approx(10.6 / 158)
    assert case["prediction_disagreement"] == pytest.approx(1 - 2 * 45 / (45 + 54))
    assert case["fuzzy_noisy_share"] == pytest.approx((noisy.sum() - 1.0) / 899)
    assert case["evidence"] == pytest.approx(12 / 899)

    _, empty = region_statistics(np.ones((8, 8)), np.zeros((8, 8), bool), band=2)
    assert empty["score"] == 0 and empty["band_px"] == 0 and np.isnan(empty["boundary_flagged_share"])
    assert np.isnan(empty["evidence"])  # no evidence map given


def test_passes_are_distinct_flips_and_rotations_that_are_undone():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    passes = pass_transforms((5, 5), 8, (4, 4))
    assert len({(r, f) for r, f, _ in passes}) == 8 and all(o == (0, 0) for *_, o in passes)
    images = set()
    for rot, flip, _ in passes:
        moved = forward_transform(x, rot, flip)
        images.add(tuple(moved.flatten().tolist()))
        assert torch.equal(inverse_transform(moved, rot, flip), x)
    assert len(images) == 8
    # non-square: only the 4 shape-preserving ones; more passes shift the split's patch grid
    passes = pass_transforms((4, 6), 8, (4, 4))
    assert {(r, f) for r, f, _ in passes} == {(0, False), (0, True), (2, False), (2, True)}
    assert [o for *_, o in passes] == [(0, 0)] * 4 + [(2, 2)] * 4
    assert tile_starts(64, 64) == [0] and tile_starts(100, 64) == [0, 36] and tile_starts(40, 64) == [0]


def _case(name: str, score: float, regions: list[float]) -> CaseAudit:
    summary = {"region": "all", "area_px": 1, "band_px": 1, "suspect_area_px": 0, "boundary_flagged_share": 0.0}
    summary.update(score=0.5, evidence=score, fuzzy_noisy_share=0.1, prediction_disagreement=0.2)
    base = {"area_px": 1, "band_px": 1, "suspect_area_px": 0, "boundary_flagged_share": 0.0, "score": 0.5}
    regs = [{"region": i + 1, **base, "evidence": s} for i, s in enumerate(regions)]
    empty = np.zeros((1, 2, 2))
    return CaseAudit(name, summary, regs, empty, empty.astype(bool), empty, empty.astype(bool), empty)


def test_rows_are_ranked_by_case_score_with_regions_under_their_case():
    rows = rank_rows([_case("a", 0.2, [0.1, 0.3]), _case("b", 0.5, []), _case("c", 0.2, [0.4])])
    assert [(r["rank"], r["case"], r["region"]) for r in rows] == [
        (1, "b", "all"),
        (2, "a", "all"),
        (2, "a", 2),
        (2, "a", 1),
        (3, "c", "all"),
        (3, "c", 1),
    ]
    assert all(r["case_score"] == {"a": 0.2, "b": 0.5, "c": 0.2}[r["case"]] for r in rows)


def test_context_cases_follow_the_audited_case_and_a_test_case_gets_the_first_ones():
    names = ["a", "b", "c", "d", "e"]
    settings = AuditSettings(context=3)
    assert context_identifiers(names, "d", settings) == ["e", "a", "b"]  # the next ones, wrapping round
    assert context_identifiers(names, "x", settings) == ["a", "b", "c"]  # not a training case: the first ones
    assert context_identifiers(names, "b", AuditSettings(context=9)) == ["c", "d", "e", "a"]  # never itself
    assert context_identifiers(names[:4], "x", AuditSettings(context=9)) == names[:4]
    assert context_identifiers(["a"], "a", settings) == [] and context_identifiers([], "x", settings) == []
    assert context_identifiers(names, "d", AuditSettings(reference="self")) == []


# ---------------------------------------------------------------------------------------------- quality measures
def test_auroc_matches_a_hand_count_and_sklearn():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1], [0, 1, 1]) == pytest.approx(0.5)  # ties count half
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # many ties
    labels = rng.random(200) < 0.4
    assert auroc(scores, labels) == pytest.approx(sklearn.roc_auc_score(labels, scores))


def _write_audit_csv(path: Path, scores: dict[str, float]) -> None:
    rows = rank_rows([_case(k, v, [v]) for k, v in scores.items()])

    path.write_text(csv_text(rows))


def test_audit_quality_against_the_clean_labels(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"train_{i:03d}" for i in range(20)]
    dice = dict(zip(names, np.round(rng.uniform(0.3, 1.0, 20), 4)))
    scores = {k: float(1 - dice[k] + rng.normal(0, 0.15)) for k in names}
    raw = tmp_path / "Dataset999_X"
    raw.mkdir()
    cases = {k: {"split": "train", "dice_noisy_clean": float(v)} for k, v in dice.items()}
    cases["test_000"] = {"split": "test"}
    (raw / "cases.json").write_text(json.dumps({"cases": cases}))
    _write_audit_csv(tmp_path / "audit.csv", scores)

    quality = audit_quality(tmp_path / "audit.csv", raw)
    corruption = np.array([1 - dice[k] for k in names])
    s = np.array([scores[k] for k in names])
    above = corruption > np.median(corruption)
    assert quality["num_cases"] == 20 and quality["num_above_median"] == 10 and quality["top_k"] == 2
    q = quality["evidence"]  # the case score
    assert set(quality) >= {"score", "fuzzy_noisy_share", "prediction_disagreement"}  # the other columns, for reference
    assert q["auroc_above_median"] == pytest.approx(auroc(s, above))
    assert q["spearman"] == pytest.approx(spearmanr(s, corruption).statistic)
    top = np.argsort(-s)[:2]
    most = set(np.argsort(-corruption)[:2])
    assert q["top_cases"] == [names[i] for i in top]
    assert q["precision_top_in_most_corrupted"] == pytest.approx(len(set(top) & most) / 2)
    assert q["precision_top_above_median"] == pytest.approx(above[top].mean())
    assert quality["chance_precision_top_above_median"] == pytest.approx(0.5)
    assert q["auroc_above_median"] > 0.7  # the scores were made to follow the corruption

    # a perfect and an inverted ranking
    _write_audit_csv(tmp_path / "perfect.csv", {k: 1 - dice[k] for k in names})
    perfect = audit_quality(tmp_path / "perfect.csv", raw)["evidence"]
    assert perfect["auroc_above_median"] == 1 and perfect["precision_top_in_most_corrupted"] == 1
    _write_audit_csv(tmp_path / "inverted.csv", {k: float(dice[k]) for k in names})
    assert audit_quality(tmp_path / "inverted.csv", raw)["evidence"]["auroc_above_median"] == 0


def test_corruption_from_label_files_without_cases_json(tmp_path):
    raw = tmp_path / "Dataset998_Y"
    for sub in ("labelsTr", "labelsTr_clean"):
        (raw / sub).mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".png"}))
    clean = np.zeros((8, 8), np.uint8)
    clean[2:6, 2:6] = 1
    noisy = clean.copy()
    noisy[2:6, 2:4] = 0  # half of it missing: Dice = 2 * 8 / (16 + 8)
    for sub, arr in (("labelsTr", noisy), ("labelsTr_clean", clean)):
        Image.fromarray(arr).save(raw / sub / "case_a.png")
        Image.fromarray(clean).save(raw / sub / "case_b.png")
    assert case_corruption(raw) == pytest.approx({"case_a": 1 - 16 / 24, "case_b": 0.0})
    with pytest.raises(FileNotFoundError, match="clean labels are unknown"):
        case_corruption(tmp_path)


# ---------------------------------------------------------------------------------------------- planted label error
def _disk_case(rng, size=32):
    yy, xx = np.mgrid[:size, :size]
    r, (cy, cx) = rng.uniform(5, 8), rng.uniform(10, 22, 2)
    label = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.int64)
    image = (label + rng.normal(0, 0.15, (size, size))).astype(np.float32)[None]
    return image, label


@pytest.fixture(scope="module")
def tiny_model():
    """A small nnU-Net PlainConvUNet trained for 40 steps on clean synthetic disks (a few seconds on a CPU)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    network = PlainConvUNet(
        1, 3, (8, 16, 32), torch.nn.Conv2d, 3, (1, 2, 2), 2, 2, (2, 2), True, torch.nn.InstanceNorm2d,
        {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True},
    )  # fmt: skip
    loss = PixelWeightedDCandCE(batch_dice=True)
    optimiser = torch.optim.Adam(network.parameters(), 1e-2)
    rng = np.random.default_rng(0)
    for _ in range(40):
        images, labels = zip(*[_disk_case(rng) for _ in range(8)])
        target = torch.tensor(np.stack(labels))[:, None]
        value = loss(network(torch.tensor(np.stack(images))), target, torch.ones_like(target, dtype=torch.float32))
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    assert value.item() < -0.8  # it segments the disks
    return TrainedModel(
        network=network.eval(),
        plans_manager=None,
        configuration_manager=types.SimpleNamespace(patch_size=(32, 32), batch_size=2),
        label_manager=types.SimpleNamespace(has_regions=False, ignore_label=None),
        dataset_json={},
        configuration="2d",
        trainer_name="test",
        checkpoint=Path("none"),
        dale_config=DALEConfig(patch_size=(4, 4), split_patches=0),
        split_patch_size=(4, 4),
        loss=loss,
    )


def test_a_planted_label_error_is_flagged_where_it_is(tiny_model):
    """An annotation dilated by 2 pixels around a disk: with other (clean) cases as the non-fuzzy reference, the
    wrongly labelled ring is judged noisy in more than half of the passes, the correctly labelled band pixels in
    few."""
    rng = np.random.default_rng(1)
    context = [(image[0][None], label) for image, label in (_disk_case(rng) for _ in range(4))]
    settings = AuditSettings(passes=8, band=2)
    for _ in range(2):
        image, clean = _disk_case(rng)
        dilated = ndimage.binary_dilation(clean, iterations=2).astype(np.int64)
        result = audit_case(tiny_model, image[:, None], dilated[None, None], "planted", settings, context)
        share = result.noisy_share[0]
        wrong = dilated.astype(bool) & ~clean.astype(bool)
        right_band = boundary_band(dilated.astype(bool), 2) & ~wrong
        assert share[wrong].mean() > 0.5, share[wrong].mean()  # measured 0.58-0.71 over 9 such cases
        assert share[wrong].mean() > share[right_band].mean() + 0.3  # measured 0.01-0.19 for the correct ones
        assert result.summary["prediction_disagreement"] > 0.1  # the model sees the disk, not the dilated label
        assert 0 <= result.summary["score"] <= 1 and len(result.regions) == 1


def test_evidence_is_the_rate_at_which_a_reference_step_raises_each_pixels_own_loss(tiny_model):
    """TileOmega.evidence with a CE-only loss equals -<grad_theta ce_k(theta_n), v>, v = grad L_ref(theta_p), each
    computed here pixel by pixel with autograd (float64): the Eq. 11 hypergradient with the weights divided out."""
    import dataclasses

    model = dataclasses.replace(tiny_model, loss=PixelWeightedDCandCE(batch_dice=True, weight_dice=0.0))
    model.network.double()
    try:
        rng = np.random.default_rng(3)
        image, label = _disk_case(rng)
        x = torch.tensor(image, dtype=torch.float64)[None]
        target = torch.tensor(label)[None, None]
        valid = torch.ones_like(x)
        context = [(img[0][None].astype(np.float64), lab) for img, lab in (_disk_case(rng) for _ in range(2))]
        reference = reference_batch(model, context, 0, False)
        reference.x, reference.weight = reference.x.double(), reference.weight.double()
        params = dict(model.network.named_parameters())
        settings = AuditSettings(passes=1)
        tile = omega_noisy(model, functional_forward(model.network), params, x, target, valid, settings, reference)

        cfg = model.dale_config
        fuzzy = fuzzy_split(x, target, model.split_patch_size, cfg.tau, cfg.entropy_bins).fuzzy
        names, values = list(params), list(params.values())
        loss_p = model.loss(model.network(x * fuzzy), target, fuzzy)
        grads = torch.autograd.grad(loss_p, values, materialize_grads=True)
        theta_p = [p - settings.shadow_lr * g for p, g in zip(values, grads)]
        out_p = torch.func.functional_call(model.network, dict(zip(names, theta_p)), (reference.x,), tie_weights=False)
        v = torch.autograd.grad(model.loss(out_p, reference.target, reference.weight), theta_p, materialize_grads=True)
        logits = model.network(x * fuzzy)
        judged = torch.nonzero(fuzzy[0, 0] > 0)
        for i, j in judged[torch.randperm(len(judged), generator=torch.Generator().manual_seed(0))[:12]].tolist():
            ce_k = torch.nn.functional.cross_entropy(logits[:, :, i, j], target[:, 0, i, j])
            grads = torch.autograd.grad(ce_k, values, retain_graph=True, allow_unused=True, materialize_grads=True)
            expected = -sum((g * u).sum() for g, u in zip(grads, v))
            assert float(tile.evidence[0, 0, i, j]) == pytest.approx(float(expected), rel=1e-6, abs=1e-12)
        assert torch.all(tile.evidence[fuzzy == 0] == 0) and torch.isfinite(tile.evidence).all()
        noisy = tile.noisy.bool() & (tile.evidence != 0)
        assert torch.all(tile.evidence[noisy] > 0)  # omega went down exactly where the evidence is positive
    finally:
        model.network.float()


# ---------------------------------------------------------------------------------------------- errors
def test_clear_errors_for_a_missing_folder_checkpoint_or_preprocessed_path(tmp_path, monkeypatch, capsys):
    assert main(["audit", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    fold = tmp_path / "nnUNetTrainerDALE__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    assert main(["audit", str(fold)]) == 2
    assert "no checkpoint_final.pth or checkpoint_best.pth" in capsys.readouterr().err
    assert main(["audit", str(fold.parent), "-f", "3"]) == 2
    assert "fold_3 does not exist; folds here: fold_0" in capsys.readouterr().err
    (fold / "checkpoint_final.pth").write_bytes(b"")
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["audit", str(fold)]) == 2
    assert "nnUNet_preprocessed is not set" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    for name in ("plans.json", "dataset.json"):
        (fold.parent / name).write_text("{}")
    (fold / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    assert main(["audit", str(fold)]) == 2
    assert "checkpoint_final.pth is not a readable checkpoint" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(AuditError, match="this machine has no CUDA device"):
            checked_device("cuda")
    with pytest.raises(AuditError, match="--device 'gpu'"):
        checked_device("gpu")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(AuditError, match="-o .*a_file/out: cannot create the folder"):
        writable_folder(tmp_path / "a_file" / "out")
    with pytest.raises(AuditError, match="passes"):
        AuditSettings(passes=0)
    with pytest.raises(AuditError, match="reference"):
        AuditSettings(reference="both")


# ---------------------------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_audit_command_on_a_trained_dale_model(quick_demo, tmp_path):
    """The quick demo's nnUNetTrainerDALE_quick (conftest.quick_demo: 10 noisy training cases, trained by
    nnUNetv2_train), audited with its preprocessed data; the demo's folders are only read."""
    env = {**cli_env(tmp_path), **quick_demo.folders}
    model = quick_demo.model("nnUNetTrainerDALE_quick")
    before = tree_state(quick_demo.out)

    out = tmp_path / "audit"
    result = run("nnunet-dale", "audit", str(model), "-f", "0", "-o", str(out), "--passes", "2", "--top", "3",
                 env=env)  # fmt: skip
    with open(out / "audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cases = [r for r in rows if r["region"] == "all"]
    assert sorted(r["case"] for r in cases) == [f"train_{i:03d}" for i in range(10)]  # every training case
    scores = [float(r["case_score"]) for r in cases]
    assert scores == [float(r["evidence"]) for r in cases] == sorted(scores, reverse=True)
    assert [int(r["rank"]) for r in cases] == list(range(1, 11)) and all(s >= 0 for s in scores)
    assert all(0 <= float(r["score"]) <= 1 for r in cases)
    regions = [r for r in rows if r["region"] != "all"]
    assert all(int(r["band_px"]) > 0 for r in regions)
    assert sorted(p.name for p in (out / "top").glob("*.png")) == [
        f"{i:02d}_{cases[i - 1]['case']}.png" for i in (1, 2, 3)
    ]
    quality = json.loads((out / "quality.json").read_text())  # the benchmark's clean labels are found
    assert quality["num_cases"] == 10 and 0 <= quality["evidence"]["auroc_above_median"] <= 1
    assert "auroc_above_median" in result.stdout
    meta = json.loads((out / "audit.json").read_text())
    assert meta["trainer"] == "nnUNetTrainerDALE_quick" and meta["split_patch_size"] == [4, 4]  # 16 per side
    assert not list(out.glob(".*"))  # no staging leftovers
    assert tree_state(quick_demo.out) == before
