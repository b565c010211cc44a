"""The Kvasir-SEG (polyps) converter: where its images and masks are in the official layout."""

from __future__ import annotations

from nnunet_dale.converters.source import Collected, DatasetConverter, SourceTree, child_dir, pair_folders

__all__ = ["CONVERTER", "collect"]


def collect(tree: SourceTree) -> Collected:
    root = tree.dataset_root("Kvasir-SEG", "images", "with images/ and masks/")
    cases = pair_folders(child_dir(root, ["images"]), child_dir(root, ["masks"]))
    return Collected({"Tr": cases}, notes=["Kvasir-SEG has no official test split: all cases are in imagesTr"])


CONVERTER = DatasetConverter(
    "kvasir",
    "KvasirSEG",
    False,
    collect,
    "Kvasir-SEG polyp segmentation (1000 cases)",
    "Jha et al., Kvasir-SEG: a segmented polyp dataset, MMM 2020; https://datasets.simula.no/kvasir-seg/",
    "Kvasir-SEG, free for research and educational use (see its web page); cite Jha et al. 2020",
)
