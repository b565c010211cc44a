"""The docs: no machine paths, generated tables equal to what their data give, and the section writer's helpers."""

from __future__ import annotations

from pathlib import Path

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
