"""Evaluation metrics against hand-computed values, an O(n^2) brute force, MONAI, and on small PNG / NIfTI folders."""

import csv
import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nnunet_dale.evaluation import evaluate_folders
from nnunet_dale.metrics import case_metrics, reference_fuzzy_mask, surface_distances


# ------------------------------------------------------------------------------------------- independent reference
def slow_boundary(mask):
    """Foreground voxels with a face neighbour that is background or outside the image (explicit loop)."""
    out = np.zeros_like(mask, dtype=bool)
    for idx in np.argwhere(mask):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                n = idx.copy()
                n[axis] += step
                if n[axis] < 0 or n[axis] >= mask.shape[axis] or not mask[tuple(n)]:
                    out[tuple(idx)] = True
    return out


def slow_surface_distances(pred, ref, spacing):
    bp = np.argwhere(slow_boundary(pred)) * np.asarray(spacing, dtype=float)
    br = np.argwhere(slow_boundary(ref)) * np.asarray(spacing, dtype=float)
    d = cdist(bp, br)
    return d.min(1), d.min(0)


def square(shape, lo, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(o, o + size) for o in lo)] = True
    return m


def blob(rng, shape, p=0.45):
    """A random lumpy mask: smoothed noise thresholded, so it has several components and holes."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    return noise > np.quantile(noise, 1 - p)


# ---------------------------------------------------------------------------------------------- hand-computed cases
def test_one_pixel_shift_of_a_10x10_square_by_hand():
    # The 36 perimeter pixels of A: its left column (10) is 1 from B's left column; of its right column the two corners
    # lie on B's top/bottom rows (0) and the 8 others are 1 from B's right column; its top/bottom interior rows
    # (8 + 8) lie on B's top/bottom rows (0). So d(A->B) = 18 x 1 and 18 x 0, and by symmetry the same for B->A.
    a = square((20, 20), (5, 5), 10)
    b = square((20, 20), (5, 6), 10)
    d_ab, d_ba = surface_distances(a, b, (1.0, 1.0))
    for d in (d_ab, d_ba):
        assert d.shape == (36,)
        assert sorted(d.tolist()) == [0.0] * 18 + [1.0] * 18
    m = case_metrics(a.astype(np.uint8), b.astype(np.uint8), [1], (1.0, 1.0))[1]
    assert m["HD95"] == 1.0
    assert m["ASD"] == 0.5
    assert m["Dice"] == pytest.approx(2 * 90 / 200)  # overlap 10 x 9
    assert m["IoU"] == pytest.approx(90 / 110)
    assert (m["n_ref"], m["n_pred"]) == (100, 100)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_shifted_squares_against_pairwise_loop(k):
    a = square((24, 24), (5, 5), 10)
    b = square((24, 24), (5 + k // 2, 5 + k), 10)
    d_ab, d_ba = surface_distances(a, b, (1.0, 1.0))
    s_ab, s_ba = slow_surface_distances(a, b, (1.0, 1.0))
    np.testing.assert_allclose(d_ab, s_ab)
    np.testing.assert_allclose(d_ba, s_ba)
    m = case_metrics(a.astype(int), b.astype(int), [1], (1.0, 1.0))[1]
    assert m["HD95"] == pytest.approx(max(np.percentile(s_ab, 95), np.percentile(s_ba, 95)))
    assert m["ASD"] == pytest.approx(np.concatenate([s_ab, s_ba]).mean())
    # Hausdorff distance of the shifted square is the shift length, HD95 cannot exceed it
    assert m["HD95"] <= math.hypot(k, k // 2) + 1e-9


@pytest.mark.parametrize("r", [2, 4, 7])
def test_concentric_disks_hd95_is_radius_difference(r):
    yy, xx = np.mgrid[:64, :64] - 31.5
    rad = np.hypot(yy, xx)
    small, large = rad <= 12, rad <= 12 + r
    m = case_metrics(small.astype(int), large.astype(int), [1], (1.0, 1.0))[1]
    assert abs(m["HD95"] - r) <= 1.0
    assert abs(m["ASD"] - r) <= 1.0
    # physical spacing scales everything
    m2 = case_metrics(small.astype(int), large.astype(int), [1], (0.5, 0.5))[1]
    assert m2["HD95"] == pytest.approx(m["HD95"] / 2)
    assert m2["ASD"] == pytest.approx(m["ASD"] / 2)


def test_anisotropic_spacing_in_3d_scales_the_right_axis():
    # For a cube shifted by one voxel along an axis of spacing s <= 1, every boundary voxel at a nonzero distance has a
    # boundary voxel of the other cube one step along that axis (s away), and any other candidate is >= 1 away: so the
    # distances are exactly s times the isotropic ones. Putting s on another axis instead does not shrink HD95.
    a = square((14, 14, 14), (2, 2, 2), 8)
    along0 = square((14, 14, 14), (3, 2, 2), 8)
    along2 = square((14, 14, 14), (2, 2, 3), 8)
    for b, spacing in ((along0, (0.5, 1.0, 1.0)), (along2, (1.0, 1.0, 0.5))):
        iso = surface_distances(a, b, (1.0, 1.0, 1.0))
        aniso = surface_distances(a, b, spacing)
        for d_iso, d_aniso in zip(iso, aniso, strict=True):
            assert set(np.unique(d_iso)) == {0.0, 1.0}
            np.testing.assert_allclose(d_aniso, 0.5 * d_iso)
        assert case_metrics(a.astype(int), b.astype(int), [1], spacing)[1]["HD95"] == 0.5
    assert case_metrics(a.astype(int), along2.astype(int), [1], (0.5, 1.0, 1.0))[1]["HD95"] == 1.0
    assert case_metrics(a.astype(int), along0.astype(int), [1], (1.0, 1.0, 0.5))[1]["HD95"] == 1.0
    # coarse axis: brute force and the shift length as upper bound of the Hausdorff distance
    d_ab, d_ba = surface_distances(a, along0, (2.5, 1.0, 0.7))
    s_ab, s_ba = slow_surface_distances(a, along0, (2.5, 1.0, 0.7))
    np.testing.assert_allclose(d_ab, s_ab)
    np.testing.assert_allclose(d_ba, s_ba)
    assert max(d_ab.max(), d_ba.max()) == 2.5


def test_dice_iou_against_counts_multiclass():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, size=(9, 11, 7))
    pred = np.where(rng.random(ref.shape) < 0.3, rng.integers(0, 3, size=ref.shape), ref)
    out = case_metrics(pred, ref, [1, 2], (1.0, 2.0, 3.0))
    assert set(out) == {1, 2}
    for label in (1, 2):
        p, r = pred == label, ref == label
        tp, fp, fn = (p & r).sum(), (p & ~r).sum(), (~p & r).sum()
        assert out[label]["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert out[label]["IoU"] == pytest.approx(tp / (tp + fp + fn))
        assert out[label]["n_ref"] == r.sum() and out[label]["n_pred"] == p.sum()


# ----------------------------------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("shape,spacing", [((13, 17), (1.0, 1.0)), ((12, 9), (0.8, 2.0)), ((8, 9, 7), (3.0, 1.0, 0.5))])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_brute_force(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    pred, ref = blob(rng, shape), blob(rng, shape, p=0.3)
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    s_pr, s_rp = slow_surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(d_pr, s_pr, rtol=1e-12)
    np.testing.assert_allclose(d_rp, s_rp, rtol=1e-12)


def test_masks_touching_the_image_border_have_boundary_there():
    full = np.ones((6, 6), dtype=bool)
    inner = square((6, 6), (1, 1), 4)
    d_full, d_inner = surface_distances(full, inner, (1.0, 1.0))
    assert d_full.shape == (20,)  # the whole image's outer ring
    np.testing.assert_allclose(d_full, slow_surface_distances(full, inner, (1.0, 1.0))[0])
    assert d_inner.max() == 1.0


# ------------------------------------------------------------------------------------------------ empty conventions
def test_empty_mask_conventions():
    empty = np.zeros((10, 10), dtype=int)
    some = square((10, 10), (2, 2), 3).astype(int)
    both = case_metrics(empty, empty, [1], (1.0, 1.0))[1]
    assert (both["Dice"], both["IoU"], both["HD95"], both["ASD"]) == (1.0, 1.0, 0.0, 0.0)
    for pred, ref in ((empty, some), (some, empty)):
        one = case_metrics(pred, ref, [1], (1.0, 1.0))[1]
        assert (one["Dice"], one["IoU"]) == (0.0, 0.0)
        assert math.isnan(one["HD95"]) and math.isnan(one["ASD"])
    d_pr, d_rp = surface_distances(empty, some, (1.0, 1.0))
    assert d_pr.size == 0 and np.isinf(d_rp).all() and d_rp.size == 8


def test_input_validation():
    with pytest.raises(ValueError, match="shape"):
        surface_distances(np.ones((4, 4)), np.ones((4, 5)), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(np.ones((4, 4)), np.ones((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.ones((4, 4)), np.ones((4, 4)), [1], (1, 0))
    with pytest.raises(ValueError, match="fuzzy"):
        case_metrics(np.ones((4, 4)), np.ones((4, 4)), [1], (1, 1), fuzzy_mask=np.ones((3, 4), bool))


# ------------------------------------------------------------------------------------------------------------ fuzzy
def test_reference_fuzzy_mask_marks_patches_with_many_edges():
    ref = np.zeros((64, 64), dtype=int)
    ref[4:12, 4:12] = 1  # entirely inside patch (0, 0)
    ref[40:64, 40:64] = 2  # a big block whose inside patch (3, 3) has no edges
    fuzzy = reference_fuzzy_mask(ref)
    assert fuzzy[:16, :16].all()
    assert not fuzzy[48:, 48:].any()  # no edges inside the block
    assert not fuzzy[16:32, :32].any()  # background patch
    # hand check of the definition: edge share per patch, min-max normalised, > 0.5
    from scipy import ndimage

    edges = ndimage.maximum_filter(ref, 3, mode="nearest") != ndimage.minimum_filter(ref, 3, mode="nearest")
    share = edges.reshape(4, 16, 4, 16).mean(axis=(1, 3))
    m = (share - share.min()) / (share.max() - share.min())
    np.testing.assert_array_equal(fuzzy, np.kron(m > 0.5, np.ones((16, 16), dtype=int)).astype(bool))
    # no foreground, or a single patch: nothing is fuzzy
    assert not reference_fuzzy_mask(np.zeros((32, 32), dtype=int)).any()
    assert not reference_fuzzy_mask(ref[:16, :16]).any()


def test_dice_fuzzy_restricts_to_the_mask():
    rng = np.random.default_rng(3)
    ref = blob(rng, (20, 20)).astype(int)
    pred = blob(rng, (20, 20)).astype(int)
    mask = np.zeros((20, 20), dtype=bool)
    mask[:10] = True
    out = case_metrics(pred, ref, [1], (1.0, 1.0), fuzzy_mask=mask)[1]
    p, r = pred[:10] == 1, ref[:10] == 1
    assert out["Dice_fuzzy"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
    assert out["Dice_fuzzy"] != pytest.approx(out["Dice"])
    assert math.isnan(case_metrics(pred, ref, [1], (1, 1), fuzzy_mask=np.zeros_like(mask))[1]["Dice_fuzzy"])
    assert "Dice_fuzzy" not in case_metrics(pred, ref, [1], (1, 1))[1]


# ---------------------------------------------------------------------------------------------------- MONAI parity
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("shape,spacing", [((24, 20), (1.0, 1.0)), ((16, 14, 12), (2.0, 0.7, 1.0))])
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_monai(shape, spacing, seed):
    pytest.importorskip("monai")
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    pred, ref = blob(rng, shape), blob(rng, shape, p=0.3)
    ours = case_metrics(pred.astype(int), ref.astype(int), [1], spacing)[1]
    y_pred = torch.from_numpy(pred)[None, None].float()
    y = torch.from_numpy(ref)[None, None].float()
    # MONAI: HD95 = max of the two directed 95th percentiles, symmetric ASD = mean of both directions pooled (same as
    # ours); it also uses scipy's face-connected erosion for the edges and the same distance definition.
    hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
    asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=list(spacing))
    assert ours["HD95"] == pytest.approx(float(hd95), rel=1e-5)
    assert ours["ASD"] == pytest.approx(float(asd), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------- folders
def write_png(path, array):
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def make_png_folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    cases = {}
    # case a: class 1 shifted by one pixel, class 2 exact
    ref = np.zeros((40, 48), dtype=np.uint8)
    ref[5:15, 5:15] = 1
    ref[25:35, 30:40] = 2
    pred = np.zeros_like(ref)
    pred[5:15, 6:16] = 1
    pred[25:35, 30:40] = 2
    cases["case_a"] = (pred, ref)
    # case b: only class 1 in the reference, prediction misses it entirely -> HD95/ASD NaN for class 1, class 2 absent
    ref = np.zeros((40, 48), dtype=np.uint8)
    ref[10:20, 10:20] = 1
    cases["case_b"] = (np.zeros_like(ref), ref)
    for name, (p, r) in cases.items():
        write_png(pred_dir / f"{name}.png", p)
        write_png(ref_dir / f"{name}.png", r)
    return pred_dir, ref_dir, cases


def test_evaluate_png_folders(tmp_path):
    pred_dir, ref_dir, cases = make_png_folders(tmp_path)
    write_png(pred_dir / "extra.png", np.zeros((40, 48)))  # predictions without a reference are ignored
    out_dir = tmp_path / "out"
    summary = evaluate_folders(pred_dir, ref_dir, out_dir)
    assert json.loads((out_dir / "summary.json").read_text()) == summary
    assert set(summary) == {"mean", "foreground_mean", "metric_per_case"}
    assert set(summary["mean"]) == {"1", "2"}  # labels from the references, 0 dropped
    per_case = summary["metric_per_case"]
    assert [c["reference_file"] for c in per_case] == [str(ref_dir / "case_a.png"), str(ref_dir / "case_b.png")]
    assert per_case[0]["prediction_file"] == str(pred_dir / "case_a.png")
    for name, case in zip(("case_a", "case_b"), per_case, strict=True):
        pred, ref = cases[name]
        expected = case_metrics(pred, ref, [1, 2], (1.0, 1.0), reference_fuzzy_mask(ref))
        for label in (1, 2):
            got = case["metrics"][str(label)]
            for key, value in expected[label].items():
                assert (got[key] is None) if math.isnan(value) else got[key] == pytest.approx(value), (name, key)
    a1 = per_case[0]["metrics"]["1"]
    assert (a1["HD95"], a1["ASD"]) == (1.0, 0.5)  # PNG spacing is 1: pixels
    mean1 = summary["mean"]["1"]
    assert mean1["n_nan"] == {"Dice": 0, "IoU": 0, "HD95": 1, "ASD": 1, "Dice_fuzzy": 0}
    assert mean1["HD95"] == 1.0 and mean1["n_cases"] == 2
    assert mean1["Dice"] == pytest.approx((0.9 + 0.0) / 2)
    assert summary["mean"]["2"]["Dice"] == 1.0  # exact in case a, both empty in case b
    assert summary["foreground_mean"]["Dice"] == pytest.approx((0.45 + 1.0) / 2)

    with open(out_dir / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows] == [
        ("case_a", "1"),
        ("case_a", "2"),
        ("case_b", "1"),
        ("case_b", "2"),
    ]
    assert float(rows[0]["Dice"]) == pytest.approx(0.9) and float(rows[0]["HD95"]) == 1.0
    assert math.isnan(float(rows[2]["HD95"])) and rows[2]["n_ref"] == "100" and rows[2]["n_pred"] == "0"
    assert sorted(p.name for p in out_dir.iterdir()) == ["per_case.csv", "summary.json"]

    # explicit labels and no fuzzy metric
    summary = evaluate_folders(pred_dir, ref_dir, out_dir, labels=[1], file_ending=".png", fuzzy=False)
    assert set(summary["mean"]) == {"1"} and "Dice_fuzzy" not in summary["mean"]["1"]


def test_evaluate_nifti_pair_uses_spacing(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = square((12, 14, 16), (2, 3, 3), 6).astype(np.uint8)
    pred = square((12, 14, 16), (3, 3, 3), 6).astype(np.uint8)  # shifted one voxel along array axis 0 (z)
    for folder, arr in ((ref_dir, ref), (pred_dir, pred)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.75, 2.0))  # SimpleITK order x, y, z: array axis 0 has spacing 2.0
        sitk.WriteImage(img, str(folder / "vol_001.nii.gz"))
    summary = evaluate_folders(pred_dir, ref_dir, tmp_path / "out")
    m = summary["metric_per_case"][0]["metrics"]["1"]
    assert summary["metric_per_case"][0]["spacing"] == [2.0, 0.75, 0.5]
    assert m["HD95"] == pytest.approx(2.0)
    expected = case_metrics(pred, ref, [1], (2.0, 0.75, 0.5))[1]
    assert m["ASD"] == pytest.approx(expected["ASD"])
    assert m["Dice"] == pytest.approx(2 * 5 * 36 / (2 * 216))


def test_evaluate_folders_errors_leave_no_outputs(tmp_path):
    pred_dir, ref_dir, _ = make_png_folders(tmp_path)
    out_dir = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", ref_dir, out_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no segmentation files"):
        evaluate_folders(pred_dir, empty, out_dir)
    with pytest.raises(FileNotFoundError, match="no reference files ending in '.nii.gz'"):
        evaluate_folders(pred_dir, ref_dir, out_dir, file_ending=".nii.gz")

    (pred_dir / "case_b.png").unlink()
    with pytest.raises(FileNotFoundError, match="case_b.png"):
        evaluate_folders(pred_dir, ref_dir, out_dir)
    assert not out_dir.exists()

    write_png(pred_dir / "case_b.png", np.zeros((40, 40)))
    with pytest.raises(ValueError, match=r"shape mismatch for case_b\.png"):
        evaluate_folders(pred_dir, ref_dir, out_dir)
    assert not out_dir.exists()

    # an earlier good run's outputs stay whole when a later run fails
    write_png(pred_dir / "case_b.png", np.zeros((40, 48)))
    evaluate_folders(pred_dir, ref_dir, out_dir)
    before = (out_dir / "summary.json").read_text()
    write_png(pred_dir / "case_b.png", np.zeros((41, 48)))
    with pytest.raises(ValueError, match="case_b.png"):
        evaluate_folders(pred_dir, ref_dir, out_dir)
    assert (out_dir / "summary.json").read_text() == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["per_case.csv", "summary.json"]


def test_a_0_255_prediction_mask_is_an_error_not_a_dice_of_zero(tmp_path):
    pred_dir, ref_dir, cases = make_png_folders(tmp_path)
    pred, _ = cases["case_a"]
    write_png(pred_dir / "case_a.png", np.where(pred > 0, 255, 0))  # what many tools write
    with pytest.raises(ValueError, match=r"case_a.png holds label values \[255\] .* 0/255 mask"):
        evaluate_folders(pred_dir, ref_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_labels_absent_from_every_case_are_an_error(tmp_path):
    pred_dir, ref_dir, _ = make_png_folders(tmp_path)
    with pytest.raises(ValueError, match=r"--labels \[7\] occur in no prediction and no reference"):
        evaluate_folders(pred_dir, ref_dir, tmp_path / "out", labels=[1, 7])
    assert not (tmp_path / "out").exists()


def test_cli_evaluate_takes_nnunet_style_named_folders(tmp_path, capsys):
    from nnunet_dale.cli import main

    pred_dir, ref_dir, _ = make_png_folders(tmp_path)
    assert main(["evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(tmp_path / "a")]) == 0
    assert main(["evaluate", str(pred_dir), str(ref_dir), "-o", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "summary.json").read_text() == (tmp_path / "b" / "summary.json").read_text()
    assert main(["evaluate", str(pred_dir), "-ref", str(ref_dir), "-o", str(tmp_path / "c")]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_corrupt_file_is_one_clear_error(tmp_path):
    pred_dir, ref_dir, _ = make_png_folders(tmp_path)
    (pred_dir / "case_b.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(ValueError, match=r"case_b.png: cannot read it as a segmentation"):
        evaluate_folders(pred_dir, ref_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
