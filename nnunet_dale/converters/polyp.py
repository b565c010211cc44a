"""The polyp segmentation, PraNet split converter: where its images and masks are in the official layout."""

from __future__ import annotations

from nnunet_dale.converters.source import (
    Collected,
    DatasetConverter,
    SourceTree,
    case_id,
    child_dir,
    is_hidden,
    pair_folders,
)
from nnunet_dale.raw_datasets import ConversionError

__all__ = ["CONVERTER", "collect"]


def collect(tree: SourceTree) -> Collected:
    train = tree.require_dir(["TrainDataset"])
    splits = {"Tr": pair_folders(child_dir(train, ["image", "images"]), child_dir(train, ["mask", "masks"]))}
    notes = []
    test = tree.find_dir(["TestDataset"])
    if test is None:
        notes.append("no TestDataset folder found: no test sets written")
    else:
        sets = sorted(p for p in test.iterdir() if p.is_dir() and not is_hidden(p))
        if not sets:
            raise ConversionError(f"no test set folders (CVC-300, CVC-ClinicDB, ...) found in {test}")
        for s in sets:
            key = "Ts_" + case_id(s.name)
            if key in splits:
                raise ConversionError(f"two test sets with the same name {key[3:]} in {test}")
            splits[key] = pair_folders(child_dir(s, ["images", "image"]), child_dir(s, ["masks", "mask"]))
    return Collected(splits, notes=notes)


CONVERTER = DatasetConverter(
    "polyp",
    "PolypPraNet",
    False,
    collect,
    "Polyp segmentation, PraNet split: Kvasir-SEG + CVC-ClinicDB training set, five test sets",
    "Fan et al., PraNet: parallel reverse attention network for polyp segmentation, MICCAI 2020;"
    " https://github.com/DengPingFan/PraNet",
    "licences of Kvasir-SEG, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, CVC-300 (EndoScene) apply",
)
