"""The MosMedData+ (COVID-19 CT slices, LViT split) converter: where its images and masks are in the official layout."""

from __future__ import annotations

from collections.abc import Sequence

from nnunet_dale.converters.source import (
    Case,
    Collected,
    DatasetConverter,
    SourceTree,
    child_dir,
    pair_folders,
)

__all__ = ["CONVERTER", "collect"]


_MOSMED_IMAGES = ["img", "images", "image"]
_MOSMED_MASKS = ["labelcol", "masks", "mask", "labels", "label", "GT"]


def collect(tree: SourceTree) -> Collected:
    def split(names: Sequence[str], required: bool) -> list[Case] | None:
        folder = tree.require_dir(names) if required else tree.find_dir(names)
        if folder is None:
            return None
        return pair_folders(
            child_dir(folder, _MOSMED_IMAGES), child_dir(folder, _MOSMED_MASKS), mask_prefixes=("", "mask_")
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


CONVERTER = DatasetConverter(
    "mosmed",
    "MosMedPlus",
    True,
    collect,
    "MosMedData+ COVID-19 lung infection CT slices, LViT split (train + val, test)",
    "Li et al., LViT: language meets vision transformer in medical image segmentation, IEEE TMI 2023;"
    " Morozov et al., MosMedData, arXiv:2005.06465; https://github.com/HUANGLIZI/LViT",
    "MosMedData terms (see mosmed.ai); cite Morozov et al. 2020 and, for the + split, Li et al. 2023",
)
