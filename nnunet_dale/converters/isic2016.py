"""The ISIC 2016 (ISBI 2016 challenge, part 1) converter: where its images and masks are in the official layout."""

from __future__ import annotations

from nnunet_dale.converters.source import Collected, DatasetConverter, SourceTree, optional_pair, pair_folders

__all__ = ["CONVERTER", "collect"]


def collect(tree: SourceTree) -> Collected:
    train_data = tree.require_dir(["ISBI2016_ISIC_Part1_Training_Data"])
    train_gt = tree.require_dir(["ISBI2016_ISIC_Part1_Training_GroundTruth"])
    splits = {"Tr": pair_folders(train_data, train_gt, mask_suffix="_Segmentation")}
    notes = []
    test = optional_pair(
        tree, ["ISBI2016_ISIC_Part1_Test_Data"], ["ISBI2016_ISIC_Part1_Test_GroundTruth"], mask_suffix="_Segmentation"
    )
    if test is None:
        notes.append("no ISBI2016_ISIC_Part1_Test_Data/_Test_GroundTruth found: no imagesTs written")
    else:
        splits["Ts"] = test
    return Collected(splits, notes=notes)


CONVERTER = DatasetConverter(
    "isic2016",
    "ISIC2016",
    False,
    collect,
    "ISBI 2016 ISIC challenge, part 1: skin lesion segmentation in dermoscopic images (900 train, 379 test)",
    "Gutman et al., Skin lesion analysis toward melanoma detection: a challenge at ISBI 2016, arXiv:1605.01397;"
    " https://challenge.isic-archive.com/data/#2016",
    "ISIC challenge data: see the terms at https://challenge.isic-archive.com/data/; cite Gutman et al. 2016",
)
