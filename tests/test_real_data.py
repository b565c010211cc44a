"""The demo's pipeline on an existing raw dataset (RawDatasetDemo, benchmarks.real_data), without training: the
commands it would run and the folders it would read, recorded instead of run; and the shared results writer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nnunet_dale.converters import convert
from nnunet_dale.demo import DemoError, DemoSettings, RawDatasetDemo

from conftest import SHARED_DATA

ISIC = SHARED_DATA / "ISIC2017_val_subset"
needs_isic = pytest.mark.skipif(not ISIC.is_dir(), reason=f"real ISIC 2017 subset not available at {ISIC}")
QUICK = DemoSettings(baseline="nnUNetTrainer_quick", dale="nnUNetTrainerDALE_quick", fold=1, same_time=None)


@pytest.fixture(autouse=True)
def no_nnunet_folders(monkeypatch):
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(variable, raising=False)


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def record_steps(demo, monkeypatch) -> tuple[list, list]:
    """Replace running commands and evaluating by recording them: (commands, evaluations)."""
    commands, evaluations = [], []
    monkeypatch.setattr(demo, "_call", lambda name, cmd, *shown: commands.append(cmd))
    monkeypatch.setattr(
        "nnunet_dale.evaluation.evaluate_folders", lambda pred, ref, out: evaluations.append((pred, ref, out))
    )
    return commands, evaluations


def check_pipeline(demo, folder: Path, dataset_id: int, work: Path, monkeypatch) -> None:
    """prepare() and one train_predict_evaluate() point every step at the dataset's folders and the work folder."""
    commands, evaluations = record_steps(demo, monkeypatch)
    demo.prepare()
    assert demo.dataset == folder
    assert demo.env["nnUNet_raw"] == str(folder.parent)
    assert demo.env["nnUNet_preprocessed"] == str(work / "nnUNet_preprocessed")
    assert demo.env["nnUNet_results"] == str(work / "nnUNet_results")
    assert commands[0][:3] == ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id)]

    demo.train_predict_evaluate("nnUNetTrainer_quick", 1)
    train, predict = commands[1], commands[2]
    assert train == ["nnUNetv2_train", str(dataset_id), "2d", "1", "-tr", "nnUNetTrainer_quick", "-device", "cpu"]
    options = dict(zip(predict[1::2], predict[2::2]))
    assert predict[0] == "nnUNetv2_predict"
    assert options["-i"] == str(folder / "imagesTs") and options["-d"] == str(dataset_id)
    assert options["-f"] == "1" and options["-tr"] == "nnUNetTrainer_quick"
    pred, ref, out = evaluations[0]
    assert Path(options["-o"]) == pred == work / "predictions" / "nnUNetTrainer_quick_fold1"
    assert ref == folder / "labelsTs" and out == work / "evaluation" / "nnUNetTrainer_quick_fold1"
    assert demo._result_folder("nnUNetTrainer_quick", 1) == (
        work / "nnUNet_results" / folder.name / "nnUNetTrainer_quick__nnUNetPlans__2d" / "fold_1"
    )


@needs_isic
def test_raw_dataset_demo_finds_the_dataset_folders(tmp_path, monkeypatch):
    raw = tmp_path / "elsewhere" / "nnUNet_raw"
    folder = convert("isic2017", ISIC, 521, raw_root=raw, max_size=32, hold_out=0.3, verbose=False)
    before = hashes(folder)
    work = tmp_path / "work"
    demo = RawDatasetDemo(work, folder, QUICK)
    assert demo.s.dataset_id == 521 and demo.trainers == ("nnUNetTrainer_quick", "nnUNetTrainerDALE_quick")
    check_pipeline(demo, folder, 521, work, monkeypatch)
    assert hashes(folder) == before  # the raw dataset is only read
    assert not (work / "nnUNet_raw").exists()


def test_raw_dataset_demo_errors(tmp_path):
    with pytest.raises(DemoError, match="expected a name DatasetNNN_<Name>"):
        RawDatasetDemo(tmp_path, tmp_path / "my_data")
    folder = tmp_path / "raw" / "Dataset522_Thing"
    for name in ("imagesTr", "labelsTr"):
        (folder / name).mkdir(parents=True)
    (folder / "dataset.json").write_text("{}")
    demo = RawDatasetDemo(tmp_path / "work", folder)
    with pytest.raises(DemoError, match=r"Dataset522_Thing has no imagesTs \(hold out a test split"):
        demo.prepare()
    for name in ("imagesTs", "labelsTs"):
        (folder / name).mkdir()
    with pytest.raises(DemoError, match="labelsTs is empty"):
        demo.prepare()


@needs_isic
def test_real_data_benchmark_converts_once_then_reuses(tmp_path, monkeypatch):
    from benchmarks.real_data import RealData, RealDataBenchmark, parse_args, schedule

    args = parse_args(["--quick", "-o", str(tmp_path / "work"), "--source", str(ISIC)])
    assert (args.max_size, args.folds, args.hold_out) == (32, [0], 0.3)
    data = RealData("isic2017", ISIC, 32, 0.3, 0)
    work = tmp_path / "work"
    first = RealDataBenchmark(work, data, QUICK)
    folder = work / "nnUNet_raw" / "Dataset993_ISIC2017"
    check_pipeline(first, folder, 993, work, monkeypatch)
    assert len(list((folder / "labelsTs").iterdir())) == 29
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    again = RealDataBenchmark(work, data, QUICK)
    commands, _ = record_steps(again, monkeypatch)
    again.prepare()  # reuses the conversion and the planning: nothing rewritten, nothing run
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before and commands == []
    description = again.describe_data()
    assert "98 cases" in description and "69 training cases (0 with an empty mask), 29 test cases" in description
    assert "(images 32 x " in description  # the subset's dermoscopy images are all landscape

    with pytest.raises(DemoError, match="this run asks for .*use another -o folder"):
        RealDataBenchmark(work, RealData("isic2017", ISIC, 48, 0.3, 0), QUICK).prepare()
    assert schedule("nnUNetTrainer_quick", "nnUNetTrainerDALE_quick").endswith(
        "2 epochs x 10 iterations (5 validation)"
    )
    with pytest.raises(DemoError, match="different schedules"):
        schedule("nnUNetTrainer_quick", "nnUNetTrainerDALE_bench")


def test_demote_headings():
    from benchmarks.report import demote_headings

    assert demote_headings("# A\n\ntext #1\n## B\n| x |") == "### A\n\ntext #1\n#### B\n| x |"


def test_write_section_replaces_or_appends(tmp_path):
    from benchmarks.report import write_section

    path = tmp_path / "results.md"
    write_section(path, "a", "first")
    assert path.read_text() == "# Results\n\n<!-- a -->\nfirst\n<!-- /a -->\n"
    path.write_text("# R\n\nintro\n\n<!-- a -->\nold\n<!-- /a -->\n\ntail\n")
    write_section(path, "a", "new\ntext")
    write_section(path, "b", "other")
    assert (
        path.read_text()
        == "# R\n\nintro\n\n<!-- a -->\nnew\ntext\n<!-- /a -->\n\ntail\n\n<!-- b -->\nother\n<!-- /b -->\n"
    )
