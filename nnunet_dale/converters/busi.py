"""The BUSI (breast ultrasound) converter: where its images and masks are in the official layout."""

from __future__ import annotations

import re
from pathlib import Path

from nnunet_dale.converters.source import Case, Collected, DatasetConverter, SourceTree, child_dir, image_files
from nnunet_dale.raw_datasets import ConversionError

__all__ = ["BUSI_CLASSES", "CONVERTER", "collect"]


BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_FILE = re.compile(r"(?P<cls>[a-z]+) \((?P<n>\d+)\)(?P<mask>_mask(?:_(?P<k>\d+))?)?", re.IGNORECASE)


def collect(tree: SourceTree) -> Collected:
    root = tree.dataset_root("Dataset_BUSI_with_GT", "benign", "with benign/, malignant/, normal/")
    cases = []
    for cls in BUSI_CLASSES:
        folder = child_dir(root, [cls])
        images: dict[int, Path] = {}
        masks: dict[int, list[tuple[int, Path]]] = {}
        for p in image_files(folder):
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


CONVERTER = DatasetConverter(
    "busi",
    "BUSI",
    True,
    collect,
    "Breast ultrasound images (BUSI): benign, malignant and normal cases",
    "Al-Dhabyani et al., Dataset of breast ultrasound images, Data in Brief 28, 104863 (2020);"
    " https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
    "published openly with its article (see the download page); cite Al-Dhabyani et al. 2020",
)
