"""Shared by the benchmark scripts: the provenance line of a measurement and its section of a markdown file
(docs/study-log.md for the study's tables, docs/results.md and README.md for the generated summary tables)."""

from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path

import torch

from nnunet_dale.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
# top-level folders whose paths only exist on the machine a study ran on: never named in a doc (tests/test_docs.py)
MACHINE_ROOTS = ("work", "tmp", "home", "root", "Users", "mnt", "scratch", "private", "var")
MACHINE_PATH = re.compile(r"(?<![\w./~-])/(?:" + "|".join(MACHINE_ROOTS) + r")/[^\s`'\")\]]*")
_ABSOLUTE_PATH = re.compile(r"(?<![\w./~-])/[\w.+-]+(?:/[\w.+-]*)*")
LINE_WIDTH = 120


def provenance(command: str, hours: float) -> str:
    """`command` — date, machine, torch threads, torch version, total hours (the start of a results paragraph)."""
    return (
        f"`{command.strip()}` — {date.today()}, {platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}, {hours:.1f} h in total"
    )


def demote_headings(markdown: str, levels: int = 2) -> str:
    """The markdown with every heading `levels` deeper (`# A` -> `### A`), to nest a generated report in a section."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


def portable_path(path: str, repo: Path = REPO) -> str:
    """An absolute path as a doc may name it: relative to the repository (`docs/x.md`), to the folder holding it
    (`../study/isic64`), or without its machine root (`/tmp/runs/a` -> `runs/a`); other absolute paths (`/data/...`
    in an example, `/proc/...`) stay as they are."""
    p = Path(path)
    for base, prefix in ((repo, ""), (repo.parent, "../")):
        if p == base:
            return "." if not prefix else ".."
        if p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    if len(p.parts) > 2 and p.parts[1] in MACHINE_ROOTS:
        return Path(*p.parts[2:]).as_posix()
    return path


def portable(text: str, repo: Path = REPO) -> str:
    """`text` with every absolute path rewritten by `portable_path` (commands keep working from the repository)."""
    return _ABSOLUTE_PATH.sub(lambda m: portable_path(m.group(0), repo), text)


def _unsafe_line_start(word: str) -> bool:
    """Would a line starting with `word` turn into a heading, list item, quote, table row or setext underline?"""
    return word[0] in "#>|=" or word in ("-", "*", "+") or re.fullmatch(r"\d+[.)]", word) is not None


def _fill(lines: list[str], width: int) -> list[str]:
    """One paragraph or list item refilled to `width` (a list item keeps a hanging indent)."""
    lead = re.match(r"\s*(?:[-*+] |\d+[.)] )?", lines[0]).group(0)
    words = " ".join(lines)[len(lead) :].split()
    out, current = [], lead + words[0]
    for word in words[1:]:
        if len(current) + 1 + len(word) <= width or _unsafe_line_start(word):
            current += " " + word
        else:
            out.append(current)
            current = " " * len(lead) + word
    return [*out, current]


def wrap_markdown(text: str, width: int = LINE_WIDTH) -> str:
    """Paragraphs and list items with a line longer than `width` refilled at spaces (list items with a hanging
    indent); tables, headings, markers, images and code are left as they are, and so is every paragraph that already
    fits. A word never starts a line where markdown would read it as a heading, list item, quote or table row."""
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        out.extend(_fill(paragraph, width) if max(map(len, paragraph)) > width else paragraph)
        paragraph.clear()

    fenced = False
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith("```"):
            fenced = not fenced
        kept = fenced or stripped.startswith(("```", "|", "#", "<!--", "![")) or not stripped
        if kept or (line.startswith("    ") and not paragraph) or re.match(r"(?:[-*+] |\d+[.)] )", stripped):
            if paragraph:
                flush()
            if kept or line.startswith("    "):
                out.append(line)
                continue
        paragraph.append(line)
    if paragraph:
        flush()
    return "\n".join(out)


def section_text(text: str, repo: Path = REPO) -> str:
    """What `write_section` puts between the markers for `text`: machine paths made portable, long lines wrapped."""
    return wrap_markdown(portable(text.strip("\n"), repo))


def read_section(path: Path, key: str) -> str | None:
    """The text between <!-- key --> and <!-- /key --> of a markdown file; None if the file or section is missing."""
    begin, end = f"<!-- {key} -->\n", f"\n<!-- /{key} -->"
    old = path.read_text() if path.is_file() else ""
    if begin not in old or end not in old:
        return None
    return old[old.index(begin) + len(begin) : old.index(end)]


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the part of a markdown file between <!-- key --> and <!-- /key --> with
    `section_text(text)`. The file is read right before it is written: other sections, written meanwhile by another
    script, are kept."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    old = path.read_text() if path.is_file() else "# Results\n"
    block = f"{begin}\n{section_text(text)}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    atomic_write(path, lambda f: f.write(new))


def stale_sections(sections: dict, data) -> list[str]:
    """The sections (`{(file, key): generator}`) whose text differs from what the generator makes of `data`."""
    return [
        f"{path.relative_to(REPO)} <!-- {key} -->"
        for (path, key), make in sections.items()
        if read_section(path, key) != section_text(make(data))
    ]


def generate_sections(sections: dict, data, check: bool, data_name: str, command: str) -> int:
    """Write every section from `data`, or with `check` only list the stale ones (exit code 1 if any)."""
    if check:
        stale = stale_sections(sections, data)
        for name in stale:
            print(f"{name} differs from what {data_name} gives: run {command}")
        return 1 if stale else 0
    for (path, key), make in sections.items():
        write_section(path, key, make(data))
    print("wrote " + ", ".join(f"{p.relative_to(REPO)} <!-- {k} -->" for p, k in sections), flush=True)
    return 0
