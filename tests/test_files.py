"""Outputs get the mode the user's umask gives (mkstemp/mkdtemp alone would leave them 0600 / 0700)."""

import os
import stat

import pytest

from nnunet_dale.benchmark_data import make_benchmark
from nnunet_dale.files import atomic_write, staging_dir


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_and_staging_dir_follow_the_umask(tmp_path, umask):
    atomic_write(tmp_path / "summary.json", lambda f: f.write("{}"))
    assert mode(tmp_path / "summary.json") == 0o666 & ~umask  # 0644 under 022, not mkstemp's 0600
    assert mode(staging_dir(tmp_path, ".x.")) == 0o777 & ~umask  # 0755 under 022, not mkdtemp's 0700
    open(tmp_path / "plain", "w").close()
    assert mode(tmp_path / "summary.json") == mode(tmp_path / "plain")


def test_a_generated_dataset_folder_is_readable_by_others_under_umask_022(tmp_path):
    previous = os.umask(0o022)
    try:
        folder = make_benchmark(tmp_path, dataset_id=997, num_train=2, num_test=1, size=32, seed=0)
    finally:
        os.umask(previous)
    assert mode(folder) == 0o755
    assert mode(folder / "dataset.json") == 0o644


def test_nnunet_commands_are_found_beside_python_or_on_path(tmp_path, monkeypatch):
    from nnunet_dale import demo

    monkeypatch.setattr(demo, "BIN", tmp_path / "no-venv")  # a Python whose folder has no nnU-Net scripts
    tool = tmp_path / "bin" / "nnUNetv2_train"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tool.parent))
    assert demo.nnunet_command("nnUNetv2_train") == str(tool)
    with pytest.raises(demo.DemoError, match="nnUNetv2_predict is neither beside .* nor on PATH"):
        demo.nnunet_command("nnUNetv2_predict")


def test_cli_version_and_the_d_alias(capsys):
    from nnunet_dale import __version__
    from nnunet_dale.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"nnunet-dale {__version__}"
    assert build_parser().parse_args(["convert", "isic2017", "SRC", "-d", "5"]).id == 5
