"""The docs: no machine paths, generated tables equal to what their data give, and the section writer's helpers."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks import headline
from benchmarks.report import MACHINE_PATH, portable, read_section, wrap_markdown, write_section

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_portable_rewrites_machine_paths_only(tmp_path):
    repo = tmp_path / "main"
    text = (
        f"`python -m benchmarks.ablation --results {repo}/docs/study-log.md -o {tmp_path}/study/isic64` "
        "then /tmp/runs/bench and /home/me/x; an example /data/nnUNet_raw and /proc/self stay; so do 3/4 and a / b"
    )
    assert portable(text, repo) == (
        "`python -m benchmarks.ablation --results docs/study-log.md -o ../study/isic64` "
        "then runs/bench and me/x; an example /data/nnUNet_raw and /proc/self stay; so do 3/4 and a / b"
    )
    assert not MACHINE_PATH.search(portable(text, repo))


def test_wrap_markdown_wraps_prose_and_keeps_tables_code_and_markdown_starts():
    long = " ".join(["word"] * 40)
    text = "\n".join(["| " + long + " |", "# " + long, "```", long, "```", "    " + long, long, "- " + long])
    lines = wrap_markdown(text, 50).split("\n")
    assert lines[:6] == ["| " + long + " |", "# " + long, "```", long, "```", "    " + long]
    prose = lines[6:]
    assert all(len(line) <= 50 for line in prose)
    assert " ".join(prose).split().count("word") == 80
    assert prose[-1].startswith("  word")  # the list item's hanging indent
    assert wrap_markdown("short\n" + long, 50).split("\n")[0].startswith("short word word")  # refilled as a whole
    assert wrap_markdown("short\nlines", 50) == "short\nlines"  # a paragraph that fits is left alone
    # a continuation line never starts with a heading, list or table marker
    risky = wrap_markdown("aaaa " * 9 + "# - 1. | > =", 20).split("\n")
    assert all(not line.startswith(("#", "-", "1.", "|", ">", "=")) for line in risky[1:])


def test_write_section_writes_portable_wrapped_text_and_read_section_returns_it(tmp_path):
    path = tmp_path / "log.md"
    path.write_text("# Log\n\n<!-- other -->\nkept\n<!-- /other -->\n")
    write_section(path, "a", "Command: `x -o /tmp/runs/a` " + "word " * 30)
    text = read_section(path, "a")
    assert "/tmp/" not in text and "runs/a" in text and max(map(len, text.split("\n"))) <= 120
    assert read_section(path, "other") == "kept" and read_section(path, "missing") is None


def test_no_doc_names_a_machine_path():
    found = [
        f"{path.relative_to(REPO)}:{n}: {m.group(0)}"
        for path in DOCS
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for m in MACHINE_PATH.finditer(line)
    ]
    assert not found, "machine paths in the docs (write them relative, see benchmarks.report.portable):\n" + "\n".join(
        found
    )


def test_relative_links_point_at_files():
    missing = set()
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
                missing.add((path.parent / target).resolve().relative_to(REPO).as_posix())
    assert not missing, sorted(missing)


def test_results_page_is_a_summary():
    text = (REPO / "docs" / "results.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "session" not in text.lower()


def test_generated_tables_equal_what_the_data_give():
    """README's headline table and the results page's tables are generated: a hand edit fails here."""
    assert headline.differences(headline.load()) == []


def test_pooled_sets_reproduce_the_study_log():
    """A set pooled from two tables by run means gives the study log's own pooled numbers."""
    study = headline.load()
    sets = {s["id"]: headline.pool(study, s["parts"]) for s in study["sets"]}
    for name, dice, delta, hd95 in [("busi-s0", (0.637, 0.647), 1.0, 1), ("bench-s1", (0.755, 0.765), 1.0, 12),
                                    ("bench-s2", (0.688, 0.691), 0.3, 4)]:  # fmt: skip
        p = sets[name]
        assert p["runs"] == 3 and (round(p["default"]["Dice"], 3), round(p["dale"]["Dice"], 3)) == dice
        assert (p["delta_dice"], p["delta_hd95_pct"]) == (delta, hd95)
    # a single table's Δ is the table's own (from unrounded means), not the difference of its rounded means
    assert sets["isic-s2"]["delta_dice"] == -0.0 and sets["isic-s1"]["worse"] == ["HD95"]
    assert [headline.goal(p) for p in sets.values()].count("met") == 3


def test_the_typed_verdicts_match_the_data():
    """The numbers the README's and the results page's typed verdicts quote, recomputed from the data."""
    study = headline.load()
    readme, results = (" ".join((REPO / f).read_text().split()) for f in ("README.md", "docs/results.md"))
    low, high = headline.time_range(study)
    assert f"{low}–{high} × nnU-Net's training time" in readme and f"{low}–{high} × the training time" in results
    pooled = [headline.pool(study, s["parts"]) for s in headline.headline_sets(study)]
    words = {6: "six", 8: "eight"}
    worse = sum(p["delta_hd95_pct"] > 0 for p in pooled)
    assert f"HD95 worse on {words[worse]} of {words[len(pooled)]} data sets" in readme
    assert f"HD95 is worse on {words[worse]} of those {words[len(pooled)]} sets" in results
    deltas = [p["delta_dice"] for p in pooled]
    assert f"DALE's Dice is {headline.points(min(deltas))} to {headline.points(max(deltas))} points" in results
    met = sum(headline.goal(headline.pool(study, s["parts"])) == "met" for s in study["sets"])
    assert f"is met on {met} of {len(study['sets'])} sets" in results
    noise = study["run_noise_points"]
    assert f"±{noise} points" in readme and f"up to {noise} points (run noise)" in results
