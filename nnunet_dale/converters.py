"""Converters from public lesion-segmentation datasets, in their official download layouts, to nnU-Net v2 raw datasets.

``convert(name, source, dataset_id)`` reads a dataset as its authors distribute it (the extracted folder, a folder
holding the official zip files, or a single zip), pairs every image with its mask by file name, and writes
``$nnUNet_raw/DatasetNNN_<Name>/`` the way nnU-Net's own ``Dataset120_RoadSegmentation.py`` does:

* one ``<case>_0000.png`` per case: RGB images as a single 3-channel PNG (``channel_names {"0": "R", "1": "G",
  "2": "B"}``), grey images as a 1-channel PNG (``{"0": "grey"}``);
* labels ``<case>.png`` with values {0, 1} (``{"background": 0, "lesion": 1}``): JPEG masks are thresholded at 128,
  RGB masks are foreground where any channel is > 127, lossless masks stored as 0/1 are kept as they are;
* ``imagesTr/labelsTr``, ``imagesTs/labelsTs`` for an official test split, ``imagesTs_<Set>/labelsTs_<Set>`` for
  additional test sets, and ``dataset.json``;
* optionally downsampled so that the longer side is at most ``max_size`` pixels (images bicubic, which is
  antialiased in Pillow when shrinking; masks nearest neighbour; both to the same size).

Everything is written into a temporary folder inside the raw folder and renamed at the end: a failed conversion
leaves nothing behind. The supported layouts, splits and download pages are described in docs/datasets.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from nnunet_dale.files import staging_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
FILE_ENDING = ".png"
RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}
GREY_CHANNELS = {"0": "grey"}
LABELS = {"background": 0, "lesion": 1}
SPLITS_FILE = "splits_official.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_JUNK_PARTS = ("__MACOSX",)


class ConversionError(ValueError):
    """A dataset could not be converted: wrong or missing folder, unpaired file, size mismatch, id in use, ..."""


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


# ----------------------------------------------------------------------------------------------------------------------
# source folders and zip files
# ----------------------------------------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    """Folder-name key for matching: case, spaces, underscores and hyphens do not matter."""
    return re.sub(r"[\s_\-]+", "", name).casefold()


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in _JUNK_PARTS


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
                    if any(p in _JUNK_PARTS or p.startswith("._") for p in parts):
                        continue
                    zf.extract(member, target)  # zipfile drops absolute and ".." path components
        except (zipfile.BadZipFile, OSError) as error:
            raise ConversionError(f"could not extract {archive}: {error}") from error
        entries = [p for p in target.iterdir() if not _is_hidden(p)]
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
                    children = sorted(p for p in d.iterdir() if p.is_dir() and not _is_hidden(p))
                except OSError:
                    continue
                nxt += [(depth + 1, c) for c in children]
            level = nxt

    def _search(self, roots: list[Path], wanted: set[str], max_depth: int) -> Path | None:
        matches: dict[int, list[Path]] = {}
        for depth, d in self._walk(roots, max_depth):
            if _norm(d.name) in wanted:
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
            entries = [p for p in found.iterdir() if not _is_hidden(p)]
            if len(entries) != 1 or not entries[0].is_dir() or _norm(entries[0].name) != _norm(found.name):
                return found
            found = entries[0]

    def _zips(self, roots: list[Path], max_depth: int) -> list[Path]:
        found = []
        for _, d in self._walk(roots, max_depth):
            try:
                found += sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".zip")
            except OSError:
                continue
        return [z for z in found if not _is_hidden(z) and z.resolve() not in self._extracted]

    def find_dir(self, names: Sequence[str], max_depth: int = 4, any_zip: bool = False) -> Path | None:
        """The shallowest folder named like one of ``names`` (see ``_norm``), looking into zip files if needed:
        zips named like the folder, and with ``any_zip`` all zips directly in the source folder (e.g. Kaggle's
        ``archive.zip``) when no zip has the folder's name."""
        wanted = {_norm(n) for n in names}
        found = self._search(self.roots, wanted, max_depth)
        if found is not None:
            return found
        named = [z for z in self._zips(self.roots, max_depth - 1) if _norm(z.stem) in wanted]
        if not named and any_zip and self.source.is_dir():
            named = self._zips([self.source], 0)
        if not named:
            return None
        new_roots = [self._extract(z) for z in named]
        self.roots += new_roots
        return self._search(new_roots, wanted, max_depth)

    def require_dir(self, names: Sequence[str], what: str = "") -> Path:
        found = self.find_dir(names, any_zip=True)
        if found is None:
            alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
            raise ConversionError(
                f"expected folder {names[0]}{alternatives}{what} not found in {self.source}"
                " (looked up to 4 levels deep and inside .zip files there)"
            )
        return found


def _child_dir(parent: Path, names: Sequence[str], required: bool = True) -> Path | None:
    """The immediate subfolder of ``parent`` named like one of ``names`` (in order of preference)."""
    children = {_norm(p.name): p for p in sorted(parent.iterdir()) if p.is_dir() and not _is_hidden(p)}
    for n in names:
        if _norm(n) in children:
            return children[_norm(n)]
    if required:
        alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ConversionError(f"expected folder {parent / names[0]}{alternatives} not found")
    return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not _is_hidden(p) and p.suffix.lower() in IMAGE_SUFFIXES
    )


# ----------------------------------------------------------------------------------------------------------------------
# pairing images with masks
# ----------------------------------------------------------------------------------------------------------------------


def _case_id(stem: str) -> str:
    """A case identifier nnU-Net and shells are happy with: anything but letters, digits, '-' and '_' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "case"


def _pair_folders(
    image_dir: Path,
    mask_dir: Path,
    mask_suffix: str = "",
    mask_prefixes: Sequence[str] = ("",),
    skip: Callable[[Path], bool] | None = None,
) -> list[Case]:
    """Pairs ``image_dir/<stem>.<ext>`` with ``mask_dir/<prefix><stem><mask_suffix>.<ext>`` (affixes in any case)."""
    images: dict[str, Path] = {}
    for p in _image_files(image_dir):
        if skip is not None and skip(p):
            continue
        if p.stem in images:
            raise ConversionError(f"two images named {p.stem} in {image_dir}: {images[p.stem].name} and {p.name}")
        images[p.stem] = p
    if not images:
        raise ConversionError(f"no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) found in {image_dir}")
    lowered = {s.casefold(): s for s in images}
    masks: dict[str, Path] = {}
    for m in _image_files(mask_dir):
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
    return [Case(_case_id(s), images[s], (masks[s],)) for s in sorted(images)]


def _optional_pair(
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
    return _pair_folders(data, masks, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# the datasets
# ----------------------------------------------------------------------------------------------------------------------


def _collect_isic2016(tree: SourceTree) -> Collected:
    train_data = tree.require_dir(["ISBI2016_ISIC_Part1_Training_Data"])
    train_gt = tree.require_dir(["ISBI2016_ISIC_Part1_Training_GroundTruth"])
    splits = {"Tr": _pair_folders(train_data, train_gt, mask_suffix="_Segmentation")}
    notes = []
    test = _optional_pair(
        tree, ["ISBI2016_ISIC_Part1_Test_Data"], ["ISBI2016_ISIC_Part1_Test_GroundTruth"], mask_suffix="_Segmentation"
    )
    if test is None:
        notes.append("no ISBI2016_ISIC_Part1_Test_Data/_Test_GroundTruth found: no imagesTs written")
    else:
        splits["Ts"] = test
    return Collected(splits, notes=notes)


def _collect_isic2017(tree: SourceTree) -> Collected:
    kwargs = {"mask_suffix": "_segmentation", "skip": lambda p: p.stem.casefold().endswith("_superpixels")}
    train = _optional_pair(tree, ["ISIC-2017_Training_Data"], ["ISIC-2017_Training_Part1_GroundTruth"], **kwargs)
    val = _optional_pair(tree, ["ISIC-2017_Validation_Data"], ["ISIC-2017_Validation_Part1_GroundTruth"], **kwargs)
    test = _optional_pair(
        tree,
        ["ISIC-2017_Test_v2_Data", "ISIC-2017_Test_Data"],
        ["ISIC-2017_Test_v2_Part1_GroundTruth", "ISIC-2017_Test_Part1_GroundTruth"],
        **kwargs,
    )
    if train is None and val is None:
        raise ConversionError(
            f"expected folder ISIC-2017_Training_Data (and ISIC-2017_Training_Part1_GroundTruth) or "
            f"ISIC-2017_Validation_Data (and ISIC-2017_Validation_Part1_GroundTruth) not found in {tree.source}"
        )
    notes = []
    if train is None:
        notes.append("no ISIC-2017_Training_Data found: the Validation split is the training set")
    splits = {"Tr": (train or []) + (val or [])}
    official = None
    if train is not None and val is not None:
        official = {"train": [c.case_id for c in train], "val": [c.case_id for c in val]}
    if test is None:
        notes.append("no ISIC-2017_Test_v2_Data/_Part1_GroundTruth found: no imagesTs written")
    else:
        splits["Ts"] = test
    return Collected(splits, official_split=official, notes=notes)


def _collect_ph2(tree: SourceTree) -> Collected:
    images_root = tree.require_dir(["PH2 Dataset images"], what=" (PH2Dataset/PH2 Dataset images/IMDxxx/...)")
    cases = []
    for case_dir in sorted(p for p in images_root.iterdir() if p.is_dir() and not _is_hidden(p)):
        name = case_dir.name
        image_dir = _child_dir(case_dir, [f"{name}_Dermoscopic_Image"])
        lesion_dir = _child_dir(case_dir, [f"{name}_lesion"], required=False)
        images = [p for p in _image_files(image_dir) if p.stem.casefold() == name.casefold()]
        if not images:
            raise ConversionError(f"expected image {image_dir / (name + '.bmp')} not found")
        masks = (
            []
            if lesion_dir is None
            else [p for p in _image_files(lesion_dir) if _norm(p.stem) == _norm(name + "_lesion")]
        )
        if not masks:
            raise ConversionError(
                f"image without mask: {images[0]} (expected {case_dir / (name + '_lesion') / (name + '_lesion.bmp')})"
            )
        cases.append(Case(_case_id(name), images[0], (masks[0],)))
    if not cases:
        raise ConversionError(f"no case folders IMDxxx found in {images_root}")
    return Collected(
        {"Ts": cases},
        notes=[
            "PH2 is a test-only dataset (imagesTs/labelsTs, no imagesTr): predict imagesTs with a model trained on "
            "ISIC 2016 (nnUNetv2_predict -i .../imagesTs -d <ISIC 2016 id> ...), or add PH2 to an ISIC 2016 "
            "conversion with add_test_set (docs/datasets.md)"
        ],
    )


def _collect_kvasir(tree: SourceTree) -> Collected:
    root = tree.find_dir(["Kvasir-SEG"], any_zip=True)
    if root is None:  # the source may be the dataset folder under another name
        root = next((r for r in tree.roots if _child_dir(r, ["images"], required=False) is not None), None)
    if root is None:
        raise ConversionError(f"expected folder Kvasir-SEG (with images/ and masks/) not found in {tree.source}")
    cases = _pair_folders(_child_dir(root, ["images"]), _child_dir(root, ["masks"]))
    return Collected({"Tr": cases}, notes=["Kvasir-SEG has no official test split: all cases are in imagesTr"])


def _collect_polyp(tree: SourceTree) -> Collected:
    train = tree.require_dir(["TrainDataset"])
    splits = {"Tr": _pair_folders(_child_dir(train, ["image", "images"]), _child_dir(train, ["mask", "masks"]))}
    notes = []
    test = tree.find_dir(["TestDataset"])
    if test is None:
        notes.append("no TestDataset folder found: no test sets written")
    else:
        sets = sorted(p for p in test.iterdir() if p.is_dir() and not _is_hidden(p))
        if not sets:
            raise ConversionError(f"no test set folders (CVC-300, CVC-ClinicDB, ...) found in {test}")
        for s in sets:
            key = "Ts_" + _case_id(s.name)
            if key in splits:
                raise ConversionError(f"two test sets with the same name {key[3:]} in {test}")
            splits[key] = _pair_folders(_child_dir(s, ["images", "image"]), _child_dir(s, ["masks", "mask"]))
    return Collected(splits, notes=notes)


_MOSMED_IMAGES = ["img", "images", "image"]
_MOSMED_MASKS = ["labelcol", "masks", "mask", "labels", "label", "GT"]


def _collect_mosmed(tree: SourceTree) -> Collected:
    def split(names: Sequence[str], required: bool) -> list[Case] | None:
        folder = tree.require_dir(names) if required else tree.find_dir(names)
        if folder is None:
            return None
        return _pair_folders(
            _child_dir(folder, _MOSMED_IMAGES), _child_dir(folder, _MOSMED_MASKS), mask_prefixes=("", "mask_")
        )

    train = split(["Train_Folder", "Train"], True)
    val = split(["Val_Folder", "Val"], False)
    test = split(["Test_Folder", "Test"], False)
    splits = {"Tr": train + (val or [])}
    notes = []
    official = None
    if val is None:
        notes.append("no Val_Folder found")
    else:
        official = {"train": [c.case_id for c in train], "val": [c.case_id for c in val]}
    if test is None:
        notes.append("no Test_Folder found: no imagesTs written")
    else:
        splits["Ts"] = test
    return Collected(splits, official_split=official, notes=notes)


BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_FILE = re.compile(r"(?P<cls>[a-z]+) \((?P<n>\d+)\)(?P<mask>_mask(?:_(?P<k>\d+))?)?", re.IGNORECASE)


def _collect_busi(tree: SourceTree) -> Collected:
    root = tree.find_dir(["Dataset_BUSI_with_GT"], any_zip=True)
    if root is None:
        root = next((r for r in tree.roots if _child_dir(r, ["benign"], required=False) is not None), None)
    if root is None:
        raise ConversionError(
            f"expected folder Dataset_BUSI_with_GT (with benign/, malignant/, normal/) not found in {tree.source}"
        )
    cases = []
    for cls in BUSI_CLASSES:
        folder = _child_dir(root, [cls])
        images: dict[int, Path] = {}
        masks: dict[int, list[tuple[int, Path]]] = {}
        for p in _image_files(folder):
            m = _BUSI_FILE.fullmatch(p.stem)
            if m is None or m["cls"].casefold() != cls:
                raise ConversionError(
                    f"unexpected file {p}: expected '{cls} (N).png' or '{cls} (N)_mask.png' / '{cls} (N)_mask_K.png'"
                )
            n = int(m["n"])
            if m["mask"]:
                masks.setdefault(n, []).append((int(m["k"] or 0), p))
            elif n in images:
                raise ConversionError(f"two images for {cls} case {n}: {images[n]} and {p}")
            else:
                images[n] = p
        for n in sorted(set(masks) - set(images)):
            raise ConversionError(f"mask without image: {masks[n][0][1]} (expected {folder / f'{cls} ({n}).png'})")
        for n in sorted(images):
            if n not in masks:
                raise ConversionError(f"image without mask: {images[n]} (expected {folder / f'{cls} ({n})_mask.png'})")
            cases.append(Case(f"{cls}_{n:03d}", images[n], tuple(p for _, p in sorted(masks[n]))))
    return Collected({"Tr": cases}, notes=["BUSI has no official test split: all cases are in imagesTr"])


CONVERTERS: dict[str, DatasetConverter] = {
    c.name: c
    for c in [
        DatasetConverter(
            "isic2016",
            "ISIC2016",
            False,
            _collect_isic2016,
            "ISBI 2016 ISIC challenge, part 1: skin lesion segmentation in dermoscopic images (900 train, 379 test)",
            "Gutman et al., Skin lesion analysis toward melanoma detection: a challenge at ISBI 2016, arXiv:1605.01397;"
            " https://challenge.isic-archive.com/data/#2016",
            "ISIC challenge data: see the terms at https://challenge.isic-archive.com/data/; cite Gutman et al. 2016",
        ),
        DatasetConverter(
            "isic2017",
            "ISIC2017",
            False,
            _collect_isic2017,
            "ISIC 2017 challenge, part 1: skin lesion segmentation (2000 train + 150 validation, 600 test)",
            "Codella et al., Skin lesion analysis toward melanoma detection: a challenge at ISBI 2017, ISBI 2018;"
            " https://challenge.isic-archive.com/data/#2017",
            "ISIC challenge data: see the terms at https://challenge.isic-archive.com/data/; cite Codella et al. 2018",
        ),
        DatasetConverter(
            "ph2",
            "PH2",
            False,
            _collect_ph2,
            "PH2 dermoscopic images with lesion masks (200 cases), test-only",
            "Mendonca et al., PH2 - a dermoscopic image database for research and benchmarking, EMBC 2013;"
            " https://www.fc.up.pt/addi/ph2%20database.html",
            "PH2 database, free for research use (see its web page); cite Mendonca et al. 2013",
        ),
        DatasetConverter(
            "kvasir",
            "KvasirSEG",
            False,
            _collect_kvasir,
            "Kvasir-SEG polyp segmentation (1000 cases)",
            "Jha et al., Kvasir-SEG: a segmented polyp dataset, MMM 2020; https://datasets.simula.no/kvasir-seg/",
            "Kvasir-SEG, free for research and educational use (see its web page); cite Jha et al. 2020",
        ),
        DatasetConverter(
            "polyp",
            "PolypPraNet",
            False,
            _collect_polyp,
            "Polyp segmentation, PraNet split: Kvasir-SEG + CVC-ClinicDB training set, five test sets",
            "Fan et al., PraNet: parallel reverse attention network for polyp segmentation, MICCAI 2020;"
            " https://github.com/DengPingFan/PraNet",
            "licences of Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, CVC-300 (EndoScene) apply",
        ),
        DatasetConverter(
            "mosmed",
            "MosMedPlus",
            True,
            _collect_mosmed,
            "MosMedData+ COVID-19 lung infection CT slices, LViT split (train + val, test)",
            "Li et al., LViT: language meets vision transformer in medical image segmentation, IEEE TMI 2023;"
            " Morozov et al., MosMedData, arXiv:2005.06465; https://github.com/HUANGLIZI/LViT",
            "MosMedData terms (see mosmed.ai); cite Morozov et al. 2020 and, for the + split, Li et al. 2023",
        ),
        DatasetConverter(
            "busi",
            "BUSI",
            True,
            _collect_busi,
            "Breast ultrasound images (BUSI): benign, malignant and normal cases",
            "Al-Dhabyani et al., Dataset of breast ultrasound images, Data in Brief 28, 104863 (2020);"
            " https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
            "published openly with its article (see the download page); cite Al-Dhabyani et al. 2020",
        ),
    ]
}


def get_converter(name: str) -> DatasetConverter:
    key = name.strip().casefold().replace("-", "").replace("_", "")
    if key not in CONVERTERS:
        raise ConversionError(f"unknown dataset {name!r}; known: {', '.join(CONVERTERS)}")
    return CONVERTERS[key]


# ----------------------------------------------------------------------------------------------------------------------
# reading, binarising, resizing and writing
# ----------------------------------------------------------------------------------------------------------------------


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, Image.DecompressionBombError) as error:
        raise ConversionError(f"could not read {path}: {error}") from error
    return image


def read_image(path: Path, grey: bool) -> tuple[np.ndarray, bool]:
    """(H x W grey or H x W x 3 RGB array, True if a colour image was converted to grey by luma).

    Grey images stay uint8 or uint16; RGB images are uint8 (a grey image in an RGB dataset gets 3 equal channels).
    In a grey dataset an RGB image whose channels are all equal becomes one channel; one with colour (e.g. coloured
    calliper marks in BUSI) is converted with Pillow's ITU-R 601-2 luma.
    """
    image = _open(path)
    if image.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa", "La", "LA"):
        image = image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    array = np.asarray(image)
    if image.mode == "I" or array.dtype.kind == "f":
        if array.min() < 0 or array.max() > 65535 or not np.array_equal(array, np.round(array)):
            raise ConversionError(f"{path}: unsupported pixel values (mode {image.mode}); expected 8 or 16 bit")
        array = array.astype(np.uint16)
    elif array.dtype != np.uint8 and array.dtype != np.uint16:
        array = array.astype(np.uint16)  # big-endian 16-bit variants
    converted = False
    if array.ndim == 3:
        array = array[..., :3]
        if grey:
            if (array == array[..., :1]).all():
                array = np.ascontiguousarray(array[..., 0])
            else:
                array, converted = np.asarray(Image.fromarray(array).convert("L")), True
    elif not grey:
        if array.dtype != np.uint8:
            raise ConversionError(f"{path}: 16-bit grey image in an RGB dataset is not supported")
        array = np.repeat(array[..., None], 3, axis=2)
    return array, converted


def read_mask(path: Path) -> np.ndarray:
    """Boolean lesion mask: JPEG masks thresholded at 128 (grey) or any channel > 127 (RGB); lossless masks stored as
    0/1 are taken as they are, other lossless masks also thresholded at 128."""
    image = _open(path)
    if image.mode in ("1", "P", "PA", "LA", "La", "CMYK", "YCbCr"):
        image = image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3]
    lossless = path.suffix.lower() not in LOSSY_SUFFIXES
    if lossless and array.size and array.min() >= 0 and array.max() <= 1:
        fg = array > 0.5
    else:
        fg = array > 127
    return fg.any(axis=2) if fg.ndim == 3 else fg


def target_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most ``max_size`` (unchanged if already smaller)."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_image(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (array.shape[1], array.shape[0]) == size:
        return array
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BICUBIC))
    resized = np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC))
    return np.clip(np.round(resized), 0, 65535).astype(np.uint16)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    array = mask.astype(np.uint8)
    if (array.shape[1], array.shape[0]) == size:
        return array
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.NEAREST))


def convert_case(case: Case, image_out: Path, label_out: Path, grey: bool, max_size: int | None) -> bool:
    """Writes one case (image PNG, 0/1 label PNG); returns True if a colour image was converted to grey."""
    image, converted = read_image(case.image, grey)
    height, width = image.shape[:2]
    mask = np.zeros((height, width), dtype=bool)
    for path in case.masks:
        part = read_mask(path)
        if part.shape != (height, width):
            raise ConversionError(
                f"size mismatch: mask {path} is {part.shape[1]}x{part.shape[0]} but its image {case.image} is "
                f"{width}x{height} (width x height)"
            )
        mask |= part
    size = target_size(width, height, max_size)
    Image.fromarray(_resize_image(image, size)).save(image_out)
    Image.fromarray(_resize_mask(mask, size)).save(label_out)
    return converted


def _split_folders(key: str) -> tuple[str, str]:
    return f"images{key}", f"labels{key}"


def _write_split(
    cases: list[Case], out: Path, key: str, grey: bool, max_size: int | None, verbose: bool
) -> tuple[int, int]:
    """Writes the cases of one split; returns (number of cases, number of colour images converted to grey)."""
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise ConversionError(
                f"two cases with the identifier {c.case_id} in {key}: {seen[c.case_id]} and {c.image}"
            )
        seen[c.case_id] = c.image
    images_name, labels_name = _split_folders(key)
    (out / images_name).mkdir(parents=True)
    (out / labels_name).mkdir(parents=True)
    converted = 0
    for c in tqdm(cases, desc=images_name, unit="case", disable=None if verbose else True, leave=False):
        converted += convert_case(
            c,
            out / images_name / f"{c.case_id}_0000{FILE_ENDING}",
            out / labels_name / f"{c.case_id}{FILE_ENDING}",
            grey,
            max_size,
        )
    return len(cases), converted


# ----------------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------------


def _raw_root(raw_root: Path | str | None) -> Path:
    if raw_root is None:
        value = os.environ.get("nnUNet_raw")
        if not value:
            raise ConversionError(
                "the nnUNet_raw environment variable is not set: export nnUNet_raw=/path/to/nnUNet_raw "
                "(see nnU-Net's documentation, set_environment_variables.md) or pass raw_root"
            )
        raw_root = value
    raw_root = Path(raw_root).expanduser()
    if raw_root.exists() and not raw_root.is_dir():
        raise ConversionError(f"nnU-Net raw folder {raw_root} is not a folder")
    raw_root.mkdir(parents=True, exist_ok=True)
    return raw_root


def _check_id(dataset_id: int) -> int:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    return int(dataset_id)


def _check_max_size(max_size: int | None) -> int | None:
    if max_size is None:
        return None
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
        raise ConversionError(f"max_size must be a positive number of pixels, got {max_size!r}")
    return int(max_size)


def _check_name(name: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise ConversionError(f"{what} {name!r} may contain only letters, digits, '-' and '_'")
    return name


def _datasets_with_id(folder: Path, dataset_id: int) -> list[Path]:
    prefix = f"Dataset{dataset_id:03d}_"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix))


def remove(path: Path) -> None:
    """Delete a folder tree, ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)


def swap_into_place(new: Path, target: Path, old: Sequence[Path], work: Path) -> None:
    """Rename `new` to `target`, replacing the folders `old`: they are moved into `work` as `replaced_<i>` first and
    put back if the rename fails. If putting one back fails too, the error names where it was left."""
    moved: list[tuple[Path, Path]] = []
    try:
        for i, folder in enumerate(old):
            aside = work / f"replaced_{i}"
            folder.rename(aside)
            moved.append((aside, folder))
        new.rename(target)
    except BaseException:
        for aside, folder in reversed(moved):
            try:
                aside.rename(folder)
            except OSError as error:
                message = f"{folder} could not be put back after a failed write; it is in {aside}"
                raise ConversionError(message) from error
        raise


def discard_work(work: Path) -> None:
    """After a failure: delete the temporary folder `work`, except originals a failed swap left in it (`replaced_*`)."""
    kept = [child for child in work.iterdir() if child.name.startswith("replaced_")] if work.is_dir() else []
    for child in work.iterdir() if work.is_dir() else ():
        if child not in kept:
            remove(child)
    if not kept:
        remove(work)


def _print_summary(target: Path, counts: dict[str, int], converted: int, notes: list[str]) -> None:
    print(f"nnunet-dale convert: wrote {target}")
    for key, n in counts.items():
        print(f"  {_split_folders(key)[0]}: {n} cases")
    if converted:
        print(f"  {converted} colour images converted to grey (luma)")
    for note in notes:
        print(f"  note: {note}")


def convert(
    name: str,
    source: Path | str,
    dataset_id: int,
    raw_root: Path | str | None = None,
    max_size: int | None = None,
    dataset_name: str | None = None,
    overwrite: bool = False,
    verbose: bool = True,
    hold_out: float | None = None,
    hold_out_seed: int = 0,
) -> Path:
    """Converts dataset ``name`` (a key of ``CONVERTERS``) read from ``source`` to ``raw_root/DatasetNNN_<Name>/``.

    ``source``: the extracted dataset folder, a folder holding its official zip file(s), or a zip file.
    ``raw_root``: nnU-Net's raw folder (default: the ``nnUNet_raw`` environment variable).
    ``max_size``: downsample so that the longer side is at most this many pixels (default: keep the size).
    ``dataset_name``: the ``<Name>`` part of the folder (default: e.g. ``ISIC2017``).
    ``overwrite``: replace the folder(s) of ``raw_root`` that already use ``dataset_id``.
    ``hold_out``: move this fraction of the training cases to imagesTs/labelsTs (seeded by ``hold_out_seed``,
    stratified by empty / non-empty label; see ``nnunet_dale.holdout``); only for datasets without a test split.
    Returns the written folder. Raises ``ConversionError`` on any problem, leaving ``raw_root`` unchanged.
    """
    converter = get_converter(name)
    dataset_id = _check_id(dataset_id)
    max_size = _check_max_size(max_size)
    if hold_out is not None:
        from nnunet_dale import holdout

        hold_out, hold_out_seed = holdout.check_hold_out(hold_out, hold_out_seed)
    folder_name = f"Dataset{dataset_id:03d}_{_check_name(dataset_name or converter.dataset_name, 'dataset name')}"
    raw_root = _raw_root(raw_root)
    target = raw_root / folder_name
    existing = _datasets_with_id(raw_root, dataset_id)
    if existing and not overwrite:
        raise ConversionError(
            f"dataset id {dataset_id} is already used by {', '.join(str(p) for p in existing)}: "
            "choose another id or pass overwrite=True (--overwrite) to replace it"
        )
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(variable)
        others = [p for p in _datasets_with_id(Path(value), dataset_id) if p.name != folder_name] if value else []
        if others:
            raise ConversionError(
                f"dataset id {dataset_id} is used by {others[0]} ({variable}) under another name: nnU-Net would not "
                f"know which dataset {dataset_id} is; remove that folder or choose another id"
            )

    work = staging_dir(raw_root, f".tmp_{folder_name}_")
    try:
        tree = SourceTree(source, work / "extracted")
        collected = converter.collect(tree)
        if hold_out is not None:  # the hold-out's errors before anything is written
            if any(key == "Ts" or key.startswith("Ts_") for key in collected.splits):
                raise holdout.existing_test_split(f"{name} source {source}")
            holdout.held_out_count(len(collected.splits.get("Tr", [])), hold_out)
        out = work / folder_name
        out.mkdir()
        counts, converted = {}, 0
        for key, cases in collected.splits.items():
            counts[key], n_converted = _write_split(cases, out, key, converter.grey, max_size, verbose)
            converted += n_converted
        remove(work / "extracted")
        _write_dataset_json(out, converter, folder_name, counts, max_size, source)
        if collected.official_split is not None:
            (out / SPLITS_FILE).write_text(json.dumps([collected.official_split], indent=1))
        if hold_out is not None:
            record = holdout.hold_out_in_place(out, hold_out, hold_out_seed)
            counts.update(Tr=record["num_training"], Ts=record["num_test"])
            collected.notes.append(holdout.format_record(target, record))
        swap_into_place(out, target, existing, work)
    except BaseException:
        discard_work(work)
        raise
    remove(work)  # with the replaced datasets (overwrite)
    if verbose:
        _print_summary(target, counts, converted, collected.notes)
    return target


def _write_dataset_json(
    out: Path, converter: DatasetConverter, folder_name: str, counts: dict[str, int], max_size: int | None, source
) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        str(out),
        converter.channel_names,
        dict(LABELS),
        counts.get("Tr", 0),
        FILE_ENDING,
        dataset_name=folder_name,
        reference=converter.reference,
        description=converter.description,
        license=converter.licence,
        converted_by=f"nnunet-dale convert {converter.name} (from {Path(source).name})",
        test_sets={_split_folders(k)[0]: n for k, n in counts.items() if k != "Tr"},
        max_size=max_size,
    )


def add_test_set(
    name: str,
    source: Path | str,
    dataset_id: int,
    raw_root: Path | str | None = None,
    max_size: int | None = None,
    set_name: str | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> Path:
    """Adds every case of dataset ``name`` as an extra test set ``imagesTs_<Set>/labelsTs_<Set>`` to the existing
    raw dataset ``dataset_id`` (e.g. PH2 to an ISIC 2016 conversion); ``set_name`` defaults to e.g. ``PH2``.

    The images must have the dataset's channels (RGB or grey). ``dataset.json`` gets the set in ``test_sets``.
    Returns the dataset folder.
    """
    converter = get_converter(name)
    dataset_id = _check_id(dataset_id)
    max_size = _check_max_size(max_size)
    set_name = _check_name(set_name or converter.dataset_name, "test set name")
    raw_root = _raw_root(raw_root)
    existing = _datasets_with_id(raw_root, dataset_id)
    if len(existing) != 1:
        found = f"found {', '.join(str(p) for p in existing)}" if existing else "found none"
        raise ConversionError(f"expected one dataset with id {dataset_id} in {raw_root} to add a test set to; {found}")
    target = existing[0]
    json_file = target / "dataset.json"
    try:
        dataset_json = json.loads(json_file.read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"could not read {json_file}: {error}") from error
    if dataset_json.get("file_ending") != FILE_ENDING or dataset_json.get("channel_names") != converter.channel_names:
        raise ConversionError(
            f"{target.name} has channel_names {dataset_json.get('channel_names')} and file_ending "
            f"{dataset_json.get('file_ending')!r}; {name} images are {converter.channel_names} {FILE_ENDING!r}"
        )
    key = f"Ts_{set_name}"
    destinations = [target / folder for folder in _split_folders(key)]
    present = [d for d in destinations if d.exists()]
    if present and not overwrite:
        raise ConversionError(f"{present[0]} exists: choose another set name or pass overwrite=True (--overwrite)")

    work = staging_dir(raw_root, f".tmp_{target.name}_{key}_")
    try:
        tree = SourceTree(source, work / "extracted")
        collected = converter.collect(tree)
        cases = [c for split in collected.splits.values() for c in split]
        out = work / "out"
        n, converted = _write_split(cases, out, key, converter.grey, max_size, verbose)
        test_sets = dict(dataset_json.get("test_sets") or {})
        test_sets[_split_folders(key)[0]] = n
        dataset_json["test_sets"] = test_sets
        new_json = work / "dataset.json"
        new_json.write_text(json.dumps(dataset_json, indent=4))
        moved = []
        try:
            for i, d in enumerate(present):
                d.rename(work / f"replaced_{i}")
                moved.append((work / f"replaced_{i}", d))
            for d in destinations:
                (out / d.name).rename(d)
                moved.append((None, d))
            os.replace(new_json, json_file)
        except OSError:
            for old, new in reversed(moved):
                if old is None:
                    remove(new)
                else:
                    old.rename(new)  # should this fail, discard_work keeps the original in work/replaced_<i>
            raise
    except BaseException:
        discard_work(work)
        raise
    remove(work)  # with the replaced test set (overwrite)
    if verbose:
        _print_summary(target, {key: n}, converted, [])
    return target
