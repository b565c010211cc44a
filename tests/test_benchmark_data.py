"""The noisy-label lesion benchmark generator: determinism, nnU-Net layout, annotator noise measured on the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

from nnunet_dale import benchmark_data as bd
from nnunet_dale.benchmark_data import lesion_fuzziness, make_benchmark, plot_noise_examples
from nnunet_dale.files import load_array, load_png
from nnunet_dale.metrics import dice

SMALL = dict(num_train=8, num_test=3, size=64)


def file_bytes(folder: Path) -> dict[str, bytes]:
    """Every file below folder, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_cases(folder: Path) -> dict:
    return json.loads((folder / "cases.json").read_text())


@pytest.fixture(scope="module")
def default_bench(tmp_path_factory) -> Path:
    """The default benchmark (40 training cases, noise 1, seed 0), few test cases."""
    return make_benchmark(tmp_path_factory.mktemp("raw"), num_test=2)


def measured_lesions(folder: Path) -> list[dict]:
    """Per-lesion noise measured from the label files (metadata used only for the lesion parameters).

    Lesions are the 8-connected components of the clean label; each is matched to its cases.json entry through the
    entry's centre; the noisy label is compared with a lesion inside the lesion's Voronoi cell.
    """
    meta = read_cases(folder)
    size = meta["parameters"]["size"]
    out = []
    for case, record in meta["cases"].items():
        if record["split"] != "train":
            continue
        clean = load_png(folder / "labelsTr_clean" / f"{case}.png").astype(bool)
        noisy = load_png(folder / "labelsTr" / f"{case}.png").astype(bool)
        image = load_png(folder / "imagesTr" / f"{case}_0000.png").astype(float)
        components, count = ndimage.label(clean, structure=np.ones((3, 3)))
        assert count == record["num_lesions"], case
        if count == 0:
            continue
        _, nearest = ndimage.distance_transform_edt(components == 0, return_indices=True)
        cells = components[tuple(nearest)]
        to_contour = np.where(clean, ndimage.distance_transform_edt(clean), ndimage.distance_transform_edt(~clean))
        to_contour = to_contour - 0.5
        seen = set()
        for lesion in record["lesions"]:
            k = int(components[tuple(np.rint(lesion["center"]).astype(int))])
            assert k > 0 and k not in seen, f"{case}: lesion centre not inside its own clean component"
            seen.add(k)
            mask, annotated = components == k, noisy & (cells == k)
            ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=3)
            ring &= components == 0
            changed = (mask ^ annotated) & (cells == k)
            out.append(
                {
                    "case": case,
                    "meta": lesion,
                    "fuzziness": lesion_fuzziness(lesion["contrast"], lesion["blur"], lesion["irregularity"], size),
                    "dice": dice(mask, annotated),
                    "missed": not annotated.any(),
                    "changed_distances": to_contour[changed],
                    "measured_contrast": image[mask].mean() - image[ring].mean(),
                }
            )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path):
    a = file_bytes(make_benchmark(tmp_path / "a", **SMALL))
    b = file_bytes(make_benchmark(tmp_path / "b", **SMALL))
    assert a.keys() == b.keys() and len(a) == 2 * 8 + 8 + 2 * 3 + 2
    assert a == b
    c = file_bytes(make_benchmark(tmp_path / "c", seed=1, **SMALL))
    images = [k for k in a if k.startswith("images")]
    assert sum(a[k] != c[k] for k in images) == len(images)


def test_training_cases_do_not_depend_on_num_test_or_num_train(tmp_path):
    a = make_benchmark(tmp_path / "a", **SMALL)
    b = make_benchmark(tmp_path / "b", num_train=8, num_test=1, size=64)
    c = make_benchmark(tmp_path / "c", num_train=5, num_test=3, size=64)
    fa, fb, fc = file_bytes(a), file_bytes(b), file_bytes(c)
    train = [k for k in fa if k.split("/")[0] in ("imagesTr", "labelsTr", "labelsTr_clean")]
    assert all(fa[k] == fb[k] for k in train)
    assert all(fa[k] == fc[k] for k in train if k in fc) and sum(k in fc for k in train) == 3 * 5
    assert fb["imagesTs/test_000_0000.png"] == fa["imagesTs/test_000_0000.png"]
    ca, cb = read_cases(a)["cases"], read_cases(b)["cases"]
    assert all(ca[k] == cb[k] for k in ca if k.startswith("train"))


def test_images_do_not_depend_on_noise_and_noise_zero_gives_clean_labels(tmp_path):
    noisy = make_benchmark(tmp_path / "a", **SMALL)
    exact = make_benchmark(tmp_path / "b", noise=0.0, **SMALL)
    fn, fe = file_bytes(noisy), file_bytes(exact)
    for k in fe:
        if k.startswith("images") or k.startswith("labelsTs") or k.startswith("labelsTr_clean"):
            assert fe[k] == fn[k], k
    for case in range(8):
        clean = load_png(exact / "labelsTr_clean" / f"train_{case:03d}.png")
        assert np.array_equal(load_png(exact / "labelsTr" / f"train_{case:03d}.png"), clean)
    assert any(fn[f"labelsTr/train_{c:03d}.png"] != fe[f"labelsTr/train_{c:03d}.png"] for c in range(8))
    lesions = [les for c in read_cases(exact)["cases"].values() if c["split"] == "train" for les in c["lesions"]]
    assert lesions and all(les["dice"] == 1.0 and not les["missed"] for les in lesions)


# ----------------------------------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------------------------------


def test_layout_dataset_json_and_label_values(tmp_path):
    folder = make_benchmark(tmp_path / "raw", dataset_id=7, name="Tiny", **SMALL)
    assert folder == tmp_path / "raw" / "Dataset007_Tiny"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset007_Tiny"]  # no staging left behind
    expected = {
        "imagesTr": [f"train_{i:03d}_0000.png" for i in range(8)],
        "labelsTr": [f"train_{i:03d}.png" for i in range(8)],
        "labelsTr_clean": [f"train_{i:03d}.png" for i in range(8)],
        "imagesTs": [f"test_{i:03d}_0000.png" for i in range(3)],
        "labelsTs": [f"test_{i:03d}.png" for i in range(3)],
    }
    for sub, names in expected.items():
        assert sorted(p.name for p in (folder / sub).iterdir()) == names
    for path in folder.glob("images*/*.png"):
        image = load_png(path)
        assert image.dtype == np.uint8 and image.shape == (64, 64)
        assert image.std() > 5  # not blank
    lesion_pixels = 0
    for path in folder.glob("labels*/*.png"):
        label = load_png(path)
        assert label.dtype == np.uint8 and label.shape == (64, 64)
        assert set(np.unique(label)) <= {0, 1}
        lesion_pixels += int(label.sum())
    assert lesion_pixels > 0
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "grey"}
    assert dataset_json["labels"] == {"background": 0, "lesion": 1}
    assert dataset_json["numTraining"] == 8
    assert dataset_json["file_ending"] == ".png"
    meta = read_cases(folder)
    assert meta["parameters"] == dict(
        dataset_id=7, name="Tiny", num_train=8, num_test=3, size=64, seed=0, noise=1.0, dims=2
    )
    assert sorted(meta["cases"]) == sorted([f"train_{i:03d}" for i in range(8)] + [f"test_{i:03d}" for i in range(3)])
    for record in meta["cases"].values():
        for lesion in record["lesions"]:
            assert {"contrast", "blur", "irregularity", "fuzziness"} <= lesion.keys()
            if record["split"] == "train":
                assert {"missed", "dice"} <= lesion.keys()
        if record["split"] == "train":
            assert 0 <= record["dice_noisy_clean"] <= 1


def test_nnunet_verify_dataset_integrity_accepts_it(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity, verify_labels
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    folder = make_benchmark(tmp_path / "raw", num_train=4, num_test=1, size=64)
    verify_dataset_integrity(str(folder), num_processes=1)  # raises (AssertionError/RuntimeError) on problems
    # nnU-Net's label check (run above through its worker pool) is not vacuous: an undeclared value is caught
    path = folder / "labelsTr" / "train_000.png"
    assert verify_labels(str(path), NaturalImage2DIO, [0, 1])
    label = load_png(path)
    label[0, 0] = 2
    bd._save(label, path)
    assert not verify_labels(str(path), NaturalImage2DIO, [0, 1])


def test_3d_volumes(tmp_path):
    kwargs = dict(num_train=2, num_test=1, size=32, dims=3)
    folder = make_benchmark(tmp_path / "a", **kwargs)
    assert file_bytes(folder) == file_bytes(make_benchmark(tmp_path / "b", **kwargs))
    assert json.loads((folder / "dataset.json").read_text())["file_ending"] == ".nii.gz"
    for path in folder.glob("*/*.nii.gz"):
        array = load_array(path)
        assert array.shape == (32, 32, 32) and array.dtype == np.uint8
        if path.parent.name.startswith("labels"):
            assert set(np.unique(array)) <= {0, 1}
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    images, props = SimpleITKIO().read_images([str(folder / "imagesTr" / "train_000_0000.nii.gz")])
    seg, seg_props = SimpleITKIO().read_seg(str(folder / "labelsTr" / "train_000.nii.gz"))
    assert images.shape == seg.shape == (1, 32, 32, 32) and np.allclose(props["spacing"], seg_props["spacing"])


# ----------------------------------------------------------------------------------------------------------------------
# the noise model, measured on the files
# ----------------------------------------------------------------------------------------------------------------------


def test_metadata_matches_files(default_bench):
    lesions = measured_lesions(default_bench)
    assert len(lesions) >= 50
    for lesion in lesions:
        assert lesion["fuzziness"] == pytest.approx(lesion["meta"]["fuzziness"], abs=1e-5)
        assert lesion["dice"] == pytest.approx(lesion["meta"]["dice"], abs=1e-5)
        assert lesion["missed"] == lesion["meta"]["missed"]
    # the stored contrast is what the image shows: lesion minus surrounding ring intensity
    rho = stats.spearmanr([les["meta"]["contrast"] for les in lesions], [les["measured_contrast"] for les in lesions])
    assert rho.statistic > 0.7


def test_images_mix_faint_and_clear_lesions(default_bench):
    cases = [c for c in read_cases(default_bench)["cases"].values() if c["split"] == "train"]
    counts = np.array([c["num_lesions"] for c in cases])
    assert np.mean(counts > 0) >= 0.85 and np.any(counts >= 2) and counts.max() <= 3
    contrasts = np.array([les["contrast"] for c in cases for les in c["lesions"]])
    assert contrasts.min() < 0.1 and contrasts.max() > 0.3


def test_disagreement_is_much_larger_for_fuzzy_than_for_clear_lesions(default_bench):
    lesions = measured_lesions(default_bench)
    fuzz = np.array([les["fuzziness"] for les in lesions])
    disagreement = 1 - np.array([les["dice"] for les in lesions])
    clearest, _, fuzziest = np.array_split(np.argsort(fuzz, kind="stable"), 3)
    assert disagreement[fuzziest].mean() > 2 * disagreement[clearest].mean()
    assert disagreement[clearest].mean() < 0.2
    test = stats.mannwhitneyu(disagreement[fuzziest], disagreement[clearest], alternative="greater")
    assert test.pvalue < 1e-4
    assert stats.spearmanr(fuzz, disagreement).statistic > 0.5


def test_default_noise_is_clearly_measurable(default_bench):
    meta = read_cases(default_bench)
    case_dice = []
    for case, record in meta["cases"].items():
        if record["split"] == "train":
            clean = load_png(default_bench / "labelsTr_clean" / f"{case}.png")
            noisy = load_png(default_bench / "labelsTr" / f"{case}.png")
            case_dice.append(dice(clean, noisy))
    assert 0.7 <= np.mean(case_dice) <= 0.88
    assert np.mean(case_dice) == pytest.approx(meta["summary"]["mean_case_dice"], abs=1e-5)


def test_changes_lie_near_clean_contours_except_missed_lesions(default_bench):
    lesions = measured_lesions(default_bench)
    missed = [les for les in lesions if les["missed"]]
    annotated = [les for les in lesions if not les["missed"]]
    distances = np.concatenate([les["changed_distances"] for les in annotated])
    assert len(distances) > 500
    assert np.mean(distances <= 3) > 0.9
    bound = bd.MAX_DISPLACEMENT * 1.5 + bd.JITTER_CLIP * bd.MAX_JITTER  # fuzziness <= 1, noise 1, size 64
    assert distances.max() <= bound + 0.5
    # missed lesions: removed whole, and only lesions fuzzier than the miss onset are ever missed
    assert missed, "the default benchmark should contain a missed lesion"
    assert all(les["dice"] == 0.0 and les["fuzziness"] > bd.MISS_ONSET for les in missed)
    assert len(missed) / len(lesions) < 0.15


def test_noise_strength_scales_the_disagreement(tmp_path):
    means = []
    for i, noise in enumerate((0.5, 1.0, 2.0)):
        folder = make_benchmark(tmp_path / str(i), num_train=12, num_test=0, size=64, noise=noise)
        means.append(np.mean([1 - les["dice"] for les in measured_lesions(folder)]))
    assert means[0] < means[1] < means[2]


def test_lesion_fuzziness_is_monotone_and_bounded():
    (c_min, c_max), (b_min, b_max), (_, i_max) = bd.CONTRAST_RANGE, bd.BLUR_RANGE, bd.IRREGULARITY_RANGE
    assert lesion_fuzziness(c_max, b_min, 0.0) == pytest.approx(0.0)
    assert lesion_fuzziness(c_min, b_max, i_max) == pytest.approx(1.0)
    assert lesion_fuzziness(0.1, 1.0, 0.1) > lesion_fuzziness(0.3, 1.0, 0.1)
    assert lesion_fuzziness(0.2, 2.0, 0.1) > lesion_fuzziness(0.2, 1.0, 0.1)
    assert lesion_fuzziness(0.2, 1.0, 0.2) > lesion_fuzziness(0.2, 1.0, 0.1)
    assert lesion_fuzziness(0.2, 2.0, 0.1, size=128) == pytest.approx(lesion_fuzziness(0.2, 1.0, 0.1))
    assert bd.miss_probability(0.4) == 0.0 and bd.miss_probability(0.9, noise=0.0) == 0.0
    assert 0 < bd.miss_probability(0.8) < bd.miss_probability(0.9) <= bd.MISS_PROBABILITY


# ----------------------------------------------------------------------------------------------------------------------
# arguments, existing destinations, atomicity
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(size=31),
        dict(num_train=1),
        dict(num_test=-1),
        dict(noise=-0.1),
        dict(noise=float("nan")),
        dict(dims=4),
        dict(dims=1),
        dict(dataset_id=0),
        dict(dataset_id=1000),
        dict(name="has space"),
        dict(name=""),
        dict(seed=-1),
    ],
)
def test_bad_arguments_raise_value_error_and_write_nothing(tmp_path, bad):
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_benchmark(raw, **{**SMALL, **bad})
    assert not raw.exists()
    raw.mkdir()
    with pytest.raises(ValueError):
        make_benchmark(raw, **{**SMALL, **bad})
    assert list(raw.iterdir()) == []


def test_existing_destination(tmp_path):
    raw = tmp_path / "raw"
    folder = make_benchmark(raw, **SMALL)
    before = file_bytes(folder)
    stamp = (folder / "cases.json").stat().st_mtime_ns
    # same parameters: returned as is, not rewritten
    assert make_benchmark(raw, **SMALL) == folder
    assert (folder / "cases.json").stat().st_mtime_ns == stamp
    # other parameters without overwrite: refused, untouched
    with pytest.raises(FileExistsError, match="overwrite"):
        make_benchmark(raw, seed=1, **SMALL)
    assert file_bytes(folder) == before
    # overwrite: replaced, nothing else left in raw
    make_benchmark(raw, seed=1, overwrite=True, **SMALL)
    assert read_cases(folder)["parameters"]["seed"] == 1 and file_bytes(folder) != before
    assert [p.name for p in raw.iterdir()] == [folder.name]
    # a folder that make_benchmark did not write
    foreign = make_benchmark(raw, dataset_id=5, **SMALL)
    (foreign / "cases.json").unlink()
    with pytest.raises(FileExistsError):
        make_benchmark(raw, dataset_id=5, **SMALL)
    # the same id under another name would confuse nnU-Net
    with pytest.raises(FileExistsError, match="990"):
        make_benchmark(raw, name="Other", **SMALL)
    assert not (raw / "Dataset990_Other").exists()


def test_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = bd.draw_case

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(bd, "draw_case", failing)
    raw = tmp_path / "raw"
    with pytest.raises(RuntimeError, match="disk full"):
        make_benchmark(raw, **SMALL)
    assert list(raw.iterdir()) == []
    # an existing dataset survives a failed overwrite
    monkeypatch.setattr(bd, "draw_case", real)
    folder = make_benchmark(raw, **SMALL)
    before = file_bytes(folder)
    calls.clear()
    monkeypatch.setattr(bd, "draw_case", failing)
    with pytest.raises(RuntimeError):
        make_benchmark(raw, seed=3, overwrite=True, **SMALL)
    assert file_bytes(folder) == before and [p.name for p in raw.iterdir()] == [folder.name]


def test_plot_noise_examples(tmp_path):
    folder = make_benchmark(tmp_path / "raw", **SMALL)
    out = plot_noise_examples(folder, tmp_path / "fig" / "noise.png", num_cases=3)
    assert out.is_file() and out.stat().st_size < 300_000
    with pytest.raises(ValueError):
        plot_noise_examples(folder, out, case_ids=[])


# ----------------------------------------------------------------------------------------------------------------------
# size-shift test set (test_lesion_scale)
# ----------------------------------------------------------------------------------------------------------------------


def test_test_lesion_scale_scales_the_test_lesions_only(tmp_path):
    plain = make_benchmark(tmp_path / "a", num_train=4, num_test=12, size=64)
    shifted = make_benchmark(tmp_path / "b", num_train=4, num_test=12, size=64, test_lesion_scale=1.8)
    fa, fb = file_bytes(plain), file_bytes(shifted)
    train = [k for k in fa if k.split("/")[0] in ("imagesTr", "labelsTr", "labelsTr_clean")]
    assert train and all(fa[k] == fb[k] for k in train)  # the training cases are byte-identical
    assert file_bytes(make_benchmark(tmp_path / "c", num_train=4, num_test=12, size=64, test_lesion_scale=1.8)) == fb
    a, b = read_cases(plain)["cases"], read_cases(shifted)["cases"]
    ratios, area_a, area_b = [], 0, 0
    for case in (k for k in a if k.startswith("test")):
        area_a += load_png(plain / "labelsTs" / f"{case}.png").astype(bool).sum()
        area_b += load_png(shifted / "labelsTs" / f"{case}.png").astype(bool).sum()
        # the same random draws: the first lesion that still fits has the same shape, semi-axes 1.8 times longer
        for lesion_b in b[case]["lesions"]:
            same = [la for la in a[case]["lesions"] if np.isclose(la["contrast"], lesion_b["contrast"])]
            if same:
                ratios.append(np.array(lesion_b["semi_axes"]) / np.array(same[0]["semi_axes"]))
    assert ratios and np.allclose(np.concatenate(ratios), 1.8, rtol=1e-3)
    assert area_b > 2 * area_a  # 1.8^2 = 3.2 times the area per lesion, fewer lesions fit
    assert read_cases(shifted)["parameters"]["test_lesion_scale"] == 1.8
    assert "test_lesion_scale" not in read_cases(plain)["parameters"]  # older datasets keep their parameters


@pytest.mark.parametrize("scale", [0.0, 0.1, 4.5, float("nan"), True, "2"])
def test_bad_test_lesion_scale_is_refused_before_writing(tmp_path, scale):
    with pytest.raises(ValueError, match="test_lesion_scale"):
        make_benchmark(tmp_path / "raw", **SMALL, test_lesion_scale=scale)
    assert not (tmp_path / "raw").exists()
