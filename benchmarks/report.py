"""Shared by the benchmark scripts: the provenance line of a measurement and its section in docs/results.md."""

from __future__ import annotations

import platform
from datetime import date
from pathlib import Path

import torch

from nnunet_dale.files import atomic_write


def provenance(command: str, hours: float) -> str:
    """`command` — date, machine, torch threads, torch version, total hours (the start of a results paragraph)."""
    return (
        f"`{command.strip()}` — {date.today()}, {platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}, {hours:.1f} h in total"
    )


def demote_headings(markdown: str, levels: int = 2) -> str:
    """The markdown with every heading `levels` deeper (`# A` -> `### A`), to nest a generated report in a section."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the part of a markdown file between <!-- key --> and <!-- /key -->."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    old = path.read_text() if path.is_file() else "# Results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    atomic_write(path, lambda f: f.write(new))
