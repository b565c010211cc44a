"""nnunet_dale.compare on hand-written evaluation folders: statistics against numpy/scipy, pooling, NaN, outputs."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from PIL import Image
from scipy.stats import ttest_rel

from nnunet_dale.compare import compare, format_p, format_table

CASES = [f"case_{i:03d}" for i in range(6)]
SIZE = 32


def disk(radius: float, centre=(16, 16)) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


@pytest.fixture
def data(tmp_path):
    """References and images (PNG) shared by every run; returns the folders."""
    ref_dir, img_dir = tmp_path / "labelsTs", tmp_path / "imagesTs"
    ref_dir.mkdir()
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for i, case in enumerate(CASES):
        ref = disk(5 + i % 3, (14 + i, 16))
        Image.fromarray(ref).save(ref_dir / f"{case}.png")
        image = np.clip(60 + 120 * ref + rng.normal(0, 10, ref.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(img_dir / f"{case}_0000.png")
    return {"root": tmp_path, "refs": ref_dir, "images": img_dir}


def make_run(data, name: str, values: dict[str, np.ndarray], cases=CASES, shift: int = 0) -> object:
    """An evaluation folder holding summary.json with `values[metric][i]` for case i (NaN -> null) and predictions."""
    folder = data["root"] / name
    folder.mkdir()
    records = []
    for i, case in enumerate(cases):
        pred = disk(5 + i % 3 + shift, (14 + i, 16 + shift))
        Image.fromarray(pred).save(folder / f"{case}.png")
        metrics = {m: (None if math.isnan(v[i]) else float(v[i])) for m, v in values.items()}
        records.append(
            {
                "prediction_file": str(folder / f"{case}.png"),
                "reference_file": str(data["refs"] / f"{case}.png"),
                "metrics": {"1": {**metrics, "n_ref": 10, "n_pred": 10}},
            }
        )
    summary = {"mean": {"1": {}}, "foreground_mean": {}, "metric_per_case": records}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def random_values(seed: int, n: int = len(CASES)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "Dice": rng.uniform(0.5, 0.95, n),
        "IoU": rng.uniform(0.3, 0.9, n),
        "HD95": rng.uniform(1, 12, n),
        "ASD": rng.uniform(0.2, 3, n),
        "Dice_fuzzy": rng.uniform(0.2, 0.8, n),
    }


def test_single_runs_statistics_table_and_figure(data, tmp_path):
    base, dale = random_values(1), random_values(2)
    runs = {"nnUNet": [make_run(data, "base", base)], "DALE": [make_run(data, "dale", dale, shift=1)]}
    out = tmp_path / "out"
    result = compare(runs, out, images_dir=data["images"], num_examples=3)

    assert result == json.loads((out / "comparison.json").read_text())
    assert result["baseline"] == "nnUNet" and result["cases"] == CASES and result["labels"] == ["1"]
    for metric in ("Dice", "IoU", "HD95", "ASD", "Dice_fuzzy"):
        b, m = result["stats"]["1"]["nnUNet"][metric], result["stats"]["1"]["DALE"][metric]
        assert b["mean"] == pytest.approx(base[metric].mean()) and b["sd"] == pytest.approx(base[metric].std(ddof=1))
        assert m["mean"] == pytest.approx(dale[metric].mean()) and m["sd"] == pytest.approx(dale[metric].std(ddof=1))
        c = result["comparisons"]["1"]["DALE"][metric]
        rel = (dale[metric].mean() - base[metric].mean()) / abs(base[metric].mean())
        assert c["rel_change"] == pytest.approx(rel)
        expected = ttest_rel(dale[metric], base[metric])
        assert c["p_cases"] == pytest.approx(expected.pvalue) and c["t_cases"] == pytest.approx(expected.statistic)
        assert c["n_cases"] == len(CASES)
        assert c["p_runs"] is None and c["runs_note"] == "n/a (1 run)"
        assert c["lower_is_better"] == (metric in ("HD95", "ASD"))

    md = (out / "comparison.md").read_text(encoding="utf-8")
    assert md == format_table(result)
    assert "| metric | nnUNet mean ± sd | DALE mean ± sd | rel. change | p (cases) | p (runs) | n |" in md
    dice = result["comparisons"]["1"]["DALE"]["Dice"]
    row = next(line for line in md.splitlines() if line.startswith("| Dice |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{base['Dice'].mean():.3f} ± {base['Dice'].std(ddof=1):.3f}"
    assert cells[3] == f"{100 * dice['rel_change']:+.1f}%"
    assert cells[4] == format_p(dice["p_cases"]) and cells[5] == "n/a (1 run)" and cells[6] == str(len(CASES))
    assert "| HD95 ↓ |" in md and "lower is better" in md

    # examples: largest Dice difference, alternately DALE-better and nnUNet-better
    diff = dale["Dice"] - base["Dice"]
    expected_examples = [CASES[int(np.argmax(diff))], CASES[int(np.argmin(diff))]]
    expected_examples.append(CASES[int(np.argsort(-diff)[1])])
    assert result["figure"]["examples"] == expected_examples
    assert result["figure"]["columns"] == ["image", "reference contour", "nnUNet", "DALE", "fuzzy map"]
    png = out / "comparison.png"
    assert 0 < png.stat().st_size < 1_500_000
    pixels = mpimg.imread(png)
    assert list(pixels.shape[:2]) == result["figure"]["size_px"]
    assert pixels.shape[0] > pixels.shape[1] * 0.6  # a scatter row plus three example rows
    assert pixels[..., :3].std() > 0.05  # not blank
    assert not list(out.glob(".*.tmp"))


def test_seed_pooling_and_run_level_test(data, tmp_path):
    base_runs = [random_values(10), random_values(11)]
    dale_runs = [random_values(20), random_values(21), random_values(22)]
    base_runs[1]["Dice"][2] = np.nan  # one seed NaN: the case keeps the other seed's value
    runs = {
        "nnUNet": [make_run(data, f"base{i}", v) for i, v in enumerate(base_runs)],
        "DALE": [make_run(data, f"dale{i}", v) for i, v in enumerate(dale_runs)],
    }
    result = compare(runs, tmp_path / "out", num_examples=2, metrics=("Dice", "HD95"))
    for metric in ("Dice", "HD95"):
        pooled_b = np.nanmean([v[metric] for v in base_runs], axis=0)
        pooled_m = np.mean([v[metric] for v in dale_runs], axis=0)
        assert result["per_case"]["1"]["nnUNet"][metric] == pytest.approx(pooled_b.tolist())
        b = result["stats"]["1"]["nnUNet"][metric]
        assert b["mean"] == pytest.approx(pooled_b.mean()) and b["sd"] == pytest.approx(pooled_b.std(ddof=1))
        assert b["n"] == len(CASES) and b["n_runs"] == 2
        c = result["comparisons"]["1"]["DALE"][metric]
        assert c["p_cases"] == pytest.approx(ttest_rel(pooled_m, pooled_b).pvalue)
        run_b = [np.nanmean(v[metric]) for v in base_runs]
        run_m = [np.mean(v[metric]) for v in dale_runs[:2]]  # paired by run index: the first two
        assert b["run_means"] == pytest.approx(run_b)
        assert c["n_runs"] == 2 and "runs_note" not in c
        assert c["p_runs"] == pytest.approx(ttest_rel(run_m, run_b).pvalue)
    assert result["metrics"] == ["Dice", "HD95"]
    md = format_table(result)
    assert "(2 runs)" in md and "n/a (1 run)" not in md
    # no images: the first column is the reference
    assert result["figure"]["columns"][0] == "reference"


def test_nan_excluded_from_paired_test(data, tmp_path):
    base, dale = random_values(3), random_values(4)
    dale["HD95"][1] = np.nan  # e.g. an empty prediction
    base["ASD"][4] = np.nan
    runs = {"nnUNet": [make_run(data, "base", base)], "DALE": [make_run(data, "dale", dale)]}
    result = compare(runs, tmp_path / "out", num_examples=0)
    keep = np.arange(len(CASES)) != 1
    c = result["comparisons"]["1"]["DALE"]["HD95"]
    assert c["n_cases"] == len(CASES) - 1
    assert c["p_cases"] == pytest.approx(ttest_rel(dale["HD95"][keep], base["HD95"][keep]).pvalue)
    m = result["stats"]["1"]["DALE"]["HD95"]
    assert m["n"] == len(CASES) - 1 and m["n_nan"] == 1
    assert m["mean"] == pytest.approx(np.nanmean(dale["HD95"]))
    # the baseline's own mean keeps all its cases
    assert result["stats"]["1"]["nnUNet"]["HD95"]["n"] == len(CASES)
    assert result["per_case"]["1"]["DALE"]["HD95"][1] is None
    assert result["comparisons"]["1"]["DALE"]["ASD"]["n_cases"] == len(CASES) - 1
    assert result["comparisons"]["1"]["DALE"]["Dice"]["n_cases"] == len(CASES)
    row = next(line for line in format_table(result).splitlines() if line.startswith("| HD95 ↓ |"))
    assert row.rstrip().endswith(f"| {len(CASES) - 1} |") and f"(n={len(CASES) - 1})" in row
    # no examples: only the scatter row
    assert result["figure"]["examples"] == []
    assert list(mpimg.imread(tmp_path / "out" / "comparison.png").shape[:2]) == result["figure"]["size_px"]


def test_three_methods_baseline_label_omega_and_skipped_metric(data, tmp_path):
    a, b, c = random_values(5), random_values(6), random_values(7)
    del c["Dice_fuzzy"]  # e.g. evaluated with fuzzy=False
    runs = {
        "A": [make_run(data, "a", a)],
        "B": [make_run(data, "b", b)],
        "C": [make_run(data, "c", c, shift=-1)],
    }
    omega_dir = tmp_path / "omega"
    omega_dir.mkdir()
    for case in CASES[:2]:
        np.save(omega_dir / f"{case}.npy", np.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE))
    (tmp_path / "c" / "case_000.png").unlink()  # a moved prediction: a blank panel and a note, not an error
    result = compare(runs, tmp_path / "out", baseline="B", label=1, omega_dir=omega_dir, num_examples=6)
    assert result["figure"]["notes"] == ["case_000: C's prediction not found"]
    assert result["baseline"] == "B" and list(result["methods"]) == ["B", "A", "C"]
    assert set(result["comparisons"]["1"]) == {"A", "C"}
    assert "Dice_fuzzy" in result["skipped_metrics"] and "Dice_fuzzy" not in result["metrics"]
    rel = result["comparisons"]["1"]["C"]["Dice"]["rel_change"]
    assert rel == pytest.approx((c["Dice"].mean() - b["Dice"].mean()) / abs(b["Dice"].mean()))
    assert result["figure"]["columns"] == ["reference", "reference contour", "B", "A", "C", "fuzzy map", "ω"]
    assert sorted(result["figure"]["examples"]) == CASES
    md = format_table(result)
    assert "- case_000: C's prediction not found" in md
    assert "## A vs B (label 1)" in md and "## C vs B (label 1)" in md and "Not compared: Dice_fuzzy" in md
    pixels = mpimg.imread(tmp_path / "out" / "comparison.png")
    assert list(pixels.shape[:2]) == result["figure"]["size_px"]

    with pytest.raises(ValueError, match="label '2'"):
        compare(runs, tmp_path / "out2", label="2")
    with pytest.raises(ValueError, match="baseline 'Z'"):
        compare(runs, tmp_path / "out2", baseline="Z")


def test_errors(data, tmp_path):
    values = random_values(8)
    full = make_run(data, "full", values)
    partial = make_run(data, "partial", {k: v[:4] for k, v in values.items()}, cases=CASES[:4])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="different case sets") as info:
        compare({"nnUNet": [full], "DALE": [partial]}, out)
    assert "case_004" in str(info.value) and "case_005" in str(info.value) and "DALE" in str(info.value)
    # a mismatch between the seeds of one method is caught too
    with pytest.raises(ValueError, match="case_005"):
        compare({"nnUNet": [full, partial], "DALE": [full]}, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="summary.json"):
        compare({"nnUNet": [full], "DALE": [empty]}, out)
    with pytest.raises(ValueError, match="at least two methods"):
        compare({"nnUNet": [full]}, out)
    with pytest.raises(ValueError, match="invalid method name"):
        compare({"nnUNet": [full], "fuzzy map": [full]}, out)
    assert not out.exists()  # nothing written on error


def test_3d_cases_show_the_middle_lesion_slice(tmp_path):
    import SimpleITK as sitk

    def save(array: np.ndarray, path) -> None:
        image = sitk.GetImageFromArray(array)  # (z, y, x)
        image.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(image, str(path))

    ref_dir, img_dir = tmp_path / "labelsTs", tmp_path / "imagesTs"
    ref_dir.mkdir()
    img_dir.mkdir()
    zz, yy, xx = np.mgrid[:12, :24, :24]
    lesion_z = {"vol_a": (2, 6), "vol_b": (5, 11)}  # inclusive slice ranges of the lesions
    for case, (z0, z1) in lesion_z.items():
        ref = ((zz >= z0) & (zz <= z1) & ((yy - 12) ** 2 + (xx - 12) ** 2 <= 25)).astype(np.uint8)
        save(ref, ref_dir / f"{case}.nii.gz")
        save((ref * 100 + 20).astype(np.float32), img_dir / f"{case}_0000.nii.gz")
    folders = {}
    for method, seed in (("nnUNet", 30), ("DALE", 31)):
        folder = tmp_path / method
        folder.mkdir()
        values = random_values(seed, 2)
        records = []
        for i, case in enumerate(lesion_z):
            save(sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / f"{case}.nii.gz"))), folder / f"{case}.nii.gz")
            records.append(
                {
                    "prediction_file": str(folder / f"{case}.nii.gz"),
                    "reference_file": str(ref_dir / f"{case}.nii.gz"),
                    "metrics": {"1": {m: float(v[i]) for m, v in values.items()}},
                }
            )
        (folder / "summary.json").write_text(json.dumps({"metric_per_case": records}))
        folders[method] = [folder]
    result = compare(folders, tmp_path / "out", images_dir=img_dir)
    assert result["cases"] == ["vol_a", "vol_b"]
    assert result["figure"]["slices"] == {"vol_a": 4, "vol_b": 8}
    assert result["figure"]["columns"][0] == "image"
    assert list(mpimg.imread(tmp_path / "out" / "comparison.png").shape[:2]) == result["figure"]["size_px"]


def test_cli_missing_overlay_folders_and_unknown_metrics_are_errors(data, tmp_path, capsys):
    from nnunet_dale.cli import main

    a, b = make_run(data, "a", random_values(1)), make_run(data, "b", random_values(2))
    out = tmp_path / "out"
    common = ["compare", f"A={a}", f"B={b}", "-o", str(out)]
    assert main([*common, "--images", str(tmp_path / "nowhere")]) == 2
    assert "--images" in capsys.readouterr().err
    assert main([*common, "--omega", str(tmp_path / "nowhere")]) == 2
    assert "--omega" in capsys.readouterr().err
    assert main([*common, "--metrics", "Dice", "HD99"]) == 2
    assert "unknown ['HD99']" in capsys.readouterr().err
    assert not out.exists()
    assert main([*common, "--metrics", "Dice", "--images", str(data["images"])]) == 0
