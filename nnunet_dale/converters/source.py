"""Dataset sources as their authors distribute them (a folder, possibly holding the official zip files, or a zip
file) searched for folders by name; images paired with their masks by file name; what a converter is made of."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_dale.raw_datasets import ConversionError

__all__ = [
    "GREY_CHANNELS",
    "IMAGE_SUFFIXES",
    "JUNK_PARTS",
    "RGB_CHANNELS",
    "Case",
    "Collected",
    "DatasetConverter",
    "SourceTree",
    "case_id",
    "child_dir",
    "image_files",
    "is_hidden",
    "norm_name",
    "optional_pair",
    "pair_folders",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
JUNK_PARTS = ("__MACOSX",)
RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}
GREY_CHANNELS = {"0": "grey"}


@dataclass(frozen=True)
class Case:
    """One image with its mask(s) (several masks are merged with OR), under its nnU-Net case identifier."""

    case_id: str
    image: Path
    masks: tuple[Path, ...]


@dataclass
class Collected:
    """The cases of a source dataset by output split: ``"Tr"``, ``"Ts"`` and ``"Ts_<Set>"`` for extra test sets.

    ``official_split``: the dataset's own train/validation division of the ``Tr`` cases, if it has one
    (``{"train": [...], "val": [...]}``), written to ``splits_official.json``.
    """

    splits: dict[str, list[Case]]
    official_split: dict[str, list[str]] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetConverter:
    """How to read one public dataset: its default nnU-Net name, its image type and its collector."""

    name: str
    dataset_name: str
    grey: bool
    collect: Callable[[SourceTree], Collected]
    description: str
    reference: str
    licence: str

    @property
    def channel_names(self) -> dict[str, str]:
        return dict(GREY_CHANNELS if self.grey else RGB_CHANNELS)


def norm_name(name: str) -> str:
    """Folder-name key for matching: case, spaces, underscores and hyphens do not matter."""
    return re.sub(r"[\s_\-]+", "", name).casefold()


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in JUNK_PARTS


def _starts_like_a_zip(path: Path) -> bool:
    """Whether the file begins with a zip entry's signature (a zip cut short lacks the directory at its end)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


class SourceTree:
    """A dataset source: a folder (possibly holding the official zip files) or a zip file.

    Zip files are extracted on demand into ``scratch`` (a temporary folder): a zip named like a folder that is
    looked for, or, when nothing else matches, the zip files directly inside the source folder.
    """

    def __init__(self, source: Path | str, scratch: Path):
        source = Path(source).expanduser()
        if not source.exists():
            raise ConversionError(f"source {source} does not exist")
        self.source = source
        self.scratch = scratch
        self._extracted: set[Path] = set()
        if source.is_dir():
            self.roots = [source]
        elif zipfile.is_zipfile(source):
            self.roots = [self._extract(source)]
        elif source.suffix.lower() == ".zip" or _starts_like_a_zip(source):
            raise ConversionError(f"source {source} is a damaged or truncated .zip file: download it again")
        else:
            raise ConversionError(
                f"source {source} is neither a folder nor a .zip file (extract other archives, e.g. .rar, first)"
            )

    def _extract(self, archive: Path) -> Path:
        self._extracted.add(archive.resolve())
        target = self.scratch / str(len(self._extracted)) / archive.stem
        target.mkdir(parents=True)
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.infolist():
                    parts = Path(member.filename).parts
                    if any(p in JUNK_PARTS or p.startswith("._") for p in parts):
                        continue
                    zf.extract(member, target)  # zipfile drops absolute and ".." path components
        except (zipfile.BadZipFile, OSError) as error:
            raise ConversionError(f"could not extract {archive}: {error}") from error
        entries = [p for p in target.iterdir() if not is_hidden(p)]
        if len(entries) == 1 and entries[0].is_dir():  # the usual zip with one top-level folder
            return entries[0]
        return target

    def _walk(self, roots: Iterable[Path], max_depth: int):
        """(depth, directory) breadth first, the roots themselves at depth 0; hidden folders are skipped."""
        level = [(0, r) for r in roots]
        while level:
            yield from level
            nxt = []
            for depth, d in level:
                if depth >= max_depth:
                    continue
                try:
                    children = sorted(p for p in d.iterdir() if p.is_dir() and not is_hidden(p))
                except OSError:
                    continue
                nxt += [(depth + 1, c) for c in children]
            level = nxt

    def _search(self, roots: list[Path], wanted: set[str], max_depth: int) -> Path | None:
        matches: dict[int, list[Path]] = {}
        for depth, d in self._walk(roots, max_depth):
            if norm_name(d.name) in wanted:
                matches.setdefault(depth, []).append(d)
        if not matches:
            return None
        best = sorted({p.resolve() for p in matches[min(matches)]})
        if len(best) > 1:
            raise ConversionError(
                "ambiguous source: several folders match " + ", ".join(str(p) for p in best) + "; pass one of them"
            )
        found = best[0]
        while True:  # "Kvasir-SEG/Kvasir-SEG/...", as some re-packed downloads have it
            entries = [p for p in found.iterdir() if not is_hidden(p)]
            if len(entries) != 1 or not entries[0].is_dir() or norm_name(entries[0].name) != norm_name(found.name):
                return found
            found = entries[0]

    def _zips(self, roots: list[Path], max_depth: int) -> list[Path]:
        found = []
        for _, d in self._walk(roots, max_depth):
            try:
                found += sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".zip")
            except OSError:
                continue
        return [z for z in found if not is_hidden(z) and z.resolve() not in self._extracted]

    def find_dir(self, names: Sequence[str], max_depth: int = 4, any_zip: bool = False) -> Path | None:
        """The shallowest folder named like one of ``names`` (see ``norm_name``), looking into zip files if needed:
        zips named like the folder, and with ``any_zip`` all zips directly in the source folder (e.g. Kaggle's
        ``archive.zip``) when no zip has the folder's name."""
        wanted = {norm_name(n) for n in names}
        found = self._search(self.roots, wanted, max_depth)
        if found is not None:
            return found
        named = [z for z in self._zips(self.roots, max_depth - 1) if norm_name(z.stem) in wanted]
        if not named and any_zip and self.source.is_dir():
            named = self._zips([self.source], 0)
        if not named:
            return None
        new_roots = [self._extract(z) for z in named]
        self.roots += new_roots
        return self._search(new_roots, wanted, max_depth)

    def dataset_root(self, name: str, marker: str, what: str) -> Path:
        """The folder ``name``, else the first root holding a ``marker`` folder (the dataset under another name)."""
        root = self.find_dir([name], any_zip=True)
        if root is None:
            root = next((r for r in self.roots if child_dir(r, [marker], required=False) is not None), None)
        if root is None:
            raise ConversionError(f"expected folder {name} ({what}) not found in {self.source}")
        return root

    def require_dir(self, names: Sequence[str], what: str = "") -> Path:
        found = self.find_dir(names, any_zip=True)
        if found is None:
            alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
            raise ConversionError(
                f"expected folder {names[0]}{alternatives}{what} not found in {self.source}"
                " (looked up to 4 levels deep and inside .zip files there)"
            )
        return found


def child_dir(parent: Path, names: Sequence[str], required: bool = True) -> Path | None:
    """The immediate subfolder of ``parent`` named like one of ``names`` (in order of preference)."""
    children = {norm_name(p.name): p for p in sorted(parent.iterdir()) if p.is_dir() and not is_hidden(p)}
    for n in names:
        if norm_name(n) in children:
            return children[norm_name(n)]
    if required:
        alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ConversionError(f"expected folder {parent / names[0]}{alternatives} not found")
    return None


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not is_hidden(p) and p.suffix.lower() in IMAGE_SUFFIXES
    )


# ----------------------------------------------------------------------------------------------------------------------
# pairing images with masks
# ----------------------------------------------------------------------------------------------------------------------


def case_id(stem: str) -> str:
    """A case identifier nnU-Net and shells are happy with: anything but letters, digits, '-' and '_' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "case"


def pair_folders(
    image_dir: Path,
    mask_dir: Path,
    mask_suffix: str = "",
    mask_prefixes: Sequence[str] = ("",),
    skip: Callable[[Path], bool] | None = None,
) -> list[Case]:
    """Pairs ``image_dir/<stem>.<ext>`` with ``mask_dir/<prefix><stem><mask_suffix>.<ext>`` (affixes in any case)."""
    images: dict[str, Path] = {}
    for p in image_files(image_dir):
        if skip is not None and skip(p):
            continue
        if p.stem in images:
            raise ConversionError(f"two images named {p.stem} in {image_dir}: {images[p.stem].name} and {p.name}")
        images[p.stem] = p
    if not images:
        raise ConversionError(f"no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) found in {image_dir}")
    lowered = {s.casefold(): s for s in images}
    masks: dict[str, Path] = {}
    for m in image_files(mask_dir):
        key = m.stem.casefold()
        stem = None
        for prefix in mask_prefixes:
            pre, suf = prefix.casefold(), mask_suffix.casefold()
            if key.startswith(pre) and key.endswith(suf) and len(key) > len(pre) + len(suf):
                candidate = key[len(pre) : len(key) - len(suf)]
                if candidate in lowered:
                    stem = lowered[candidate]
                    break
        if stem is None:
            raise ConversionError(
                f"mask without image: {m} (masks in {mask_dir} must be named "
                f"{mask_prefixes[0]}<image name>{mask_suffix}<.png|.jpg|...> after an image in {image_dir})"
            )
        if stem in masks:
            raise ConversionError(f"two masks for image {images[stem]}: {masks[stem]} and {m}")
        masks[stem] = m
    missing = [s for s in images if s not in masks]
    if missing:
        first = images[missing[0]]
        more = f" ({len(missing) - 1} more images without a mask)" if len(missing) > 1 else ""
        raise ConversionError(
            f"image without mask: {first} (expected {mask_dir / (mask_prefixes[0] + first.stem + mask_suffix)}"
            f".png or another image extension){more}"
        )
    return [Case(case_id(s), images[s], (masks[s],)) for s in sorted(images)]


def optional_pair(
    tree: SourceTree, data_names: Sequence[str], mask_names: Sequence[str], **kwargs
) -> list[Case] | None:
    """Cases of an optional split: None when neither its image nor its mask folder exists."""
    data, masks = tree.find_dir(data_names), tree.find_dir(mask_names)
    if data is None and masks is None:
        return None
    if data is None:
        raise ConversionError(f"found {masks} but not its image folder {data_names[0]} in {tree.source}")
    if masks is None:
        raise ConversionError(f"found {data} but not its mask folder {mask_names[0]} in {tree.source}")
    return pair_folders(data, masks, **kwargs)
