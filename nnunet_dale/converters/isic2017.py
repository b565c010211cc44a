"""The ISIC 2017 (challenge part 1) converter: where its images and masks are in the official layout."""

from __future__ import annotations

from nnunet_dale.converters.source import Collected, DatasetConverter, SourceTree, optional_pair
from nnunet_dale.raw_datasets import ConversionError

__all__ = ["CONVERTER", "collect"]


def collect(tree: SourceTree) -> Collected:
    kwargs = {"mask_suffix": "_segmentation", "skip": lambda p: p.stem.casefold().endswith("_superpixels")}
    train = optional_pair(tree, ["ISIC-2017_Training_Data"], ["ISIC-2017_Training_Part1_GroundTruth"], **kwargs)
    val = optional_pair(tree, ["ISIC-2017_Validation_Data"], ["ISIC-2017_Validation_Part1_GroundTruth"], **kwargs)
    test = optional_pair(
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


CONVERTER = DatasetConverter(
    "isic2017",
    "ISIC2017",
    False,
    collect,
    "ISIC 2017 challenge, part 1: skin lesion segmentation (2000 train + 150 validation, 600 test)",
    "Codella et al., Skin lesion analysis toward melanoma detection: a challenge at ISBI 2017, ISBI 2018;"
    " https://challenge.isic-archive.com/data/#2017",
    "ISIC challenge data: see the terms at https://challenge.isic-archive.com/data/; cite Codella et al. 2018",
)
