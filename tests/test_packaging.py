"""The sdist carries the licence and the tests; the heat maps of the figures carry colour bars."""

from __future__ import annotations

import shutil
import tarfile

import numpy as np
from matplotlib.figure import Figure

from conftest import REPO


def test_sdist_holds_the_license_and_the_test_fixtures(tmp_path, monkeypatch):
    from setuptools import build_meta

    source = tmp_path / "src"  # a copy: building writes an egg-info folder into the source tree
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "*.egg-info", "__pycache__", "dale_*", "build"))
    monkeypatch.chdir(source)
    name = build_meta.build_sdist(str(tmp_path / "dist"))
    with tarfile.open(tmp_path / "dist" / name) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"LICENSE", "tests/conftest.py", "tests/test_trainer.py", "nnunet_dale/trainer.py"} <= members


def test_audit_heat_maps_have_colour_bars(monkeypatch):
    from nnunet_dale import audit

    bars = []
    colorbar = Figure.colorbar
    monkeypatch.setattr(Figure, "colorbar", lambda self, *a, **k: bars.append(1) or colorbar(self, *a, **k))
    shape = (1, 16, 16)
    annotation = np.zeros(shape, bool)
    annotation[0, 4:10, 4:10] = True
    case = audit.CaseAudit.__new__(audit.CaseAudit)  # only the fields the overlay reads
    for field, value in {
        "case": "c", "image": np.random.default_rng(0).random(shape), "annotation": annotation,
        "zone_flagged": annotation & False, "noisy_share": np.zeros(shape), "evidence": np.zeros(shape),
        "summary": {"score": 0.1, "evidence": 0.2},
    }.items():  # fmt: skip
        object.__setattr__(case, field, value)
    assert audit.overlay_png(case, 1, 0.5)[:4] == b"\x89PNG"
    assert len(bars) == 2  # noisy share and evidence
