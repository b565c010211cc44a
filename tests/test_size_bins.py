"""Dice by lesion size (nnunet_dale.compare.size_bins) against a slow loop over planted evaluation summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nnunet_dale.compare.size_bins import format_size_table, lesion_share, size_breakdown

N_VOXELS = 400


def summary(folder: Path, dice: dict[str, float], n_ref: dict[str, int]) -> Path:
    cases = [
        {
            "prediction_file": f"p/{case}.png",
            "reference_file": f"r/{case}.png",
            "n_voxels": N_VOXELS,
            "metrics": {"1": {"Dice": d, "n_ref": n_ref[case], "HD95": 1.0}},
        }
        for case, d in dice.items()
    ]
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"metric_per_case": cases}))
    return folder


def test_bins_means_and_collapses_match_a_slow_loop(tmp_path):
    rng = np.random.default_rng(0)
    cases = [f"c{i:02d}" for i in range(30)]
    n_ref = {c: int(v) for c, v in zip(cases, rng.integers(0, N_VOXELS, len(cases)))}
    n_ref["c00"] = 0  # an empty reference
    runs = {m: [{c: float(rng.uniform(0, 1)) for c in cases} for _ in range(k)] for m, k in (("a", 3), ("b", 2))}
    folders = {m: [summary(tmp_path / f"{m}{r}", d, n_ref) for r, d in enumerate(rs)] for m, rs in runs.items()}
    edges = (0.0, 0.1, 0.4, 1.0)
    result = size_breakdown(folders, edges)
    labels = ["empty", "0–10 %", "10–40 %", "40–100 %"]
    assert result["bins"] == labels
    for m, rs in runs.items():
        for b, (lo, hi) in enumerate([(None, 0)] + list(zip(edges[:-1], edges[1:]))):
            if lo is None:
                members = [c for c in cases if n_ref[c] == 0]
            else:
                members = [c for c in cases if lo < n_ref[c] / N_VOXELS <= hi]
            assert result["counts"][b] == len(members)
            if not members:
                assert math.isnan(result["methods"][m]["dice"][b])
                continue
            expected = sum(sum(r[c] for r in rs) / len(rs) for c in members) / len(members)
            assert result["methods"][m]["dice"][b] == pytest.approx(expected)
            low = [sum(1 for c in members if r[c] < 0.3) for r in rs] if lo is not None else [0] * len(rs)
            assert result["methods"][m]["collapses"][b] == pytest.approx(sum(low) / len(rs))
        total = [sum(1 for c in cases if n_ref[c] > 0 and r[c] < 0.3) for r in rs]
        assert result["methods"][m]["collapses_per_run"] == total
    table = format_size_table(result)
    assert table.count("\n") == 1 + sum(n > 0 for n in result["counts"]) + 1
    assert "`a` Dice (cases < 0.3)" in table


def test_lesion_share_and_refusals(tmp_path):
    record = {"n_voxels": 200, "metrics": {"0": {"n_ref": 150}, "1": {"n_ref": 30}, "2": {"n_ref": 20}}}
    assert lesion_share(record) == pytest.approx(0.25)  # foreground labels only
    with pytest.raises(ValueError, match="n_voxels"):
        lesion_share({"reference_file": "x.png", "metrics": {"1": {"n_ref": 3}}})
    a = summary(tmp_path / "a", {"x": 1.0, "y": 0.5}, {"x": 1, "y": 2})
    b = summary(tmp_path / "b", {"x": 1.0, "z": 0.5}, {"x": 1, "z": 2})
    with pytest.raises(ValueError, match="not the same test set"):
        size_breakdown({"a": [a], "b": [b]})
    with pytest.raises(ValueError, match="edges"):
        size_breakdown({"a": [a]}, edges=(0.0, 0.5, 0.2, 1.0))
