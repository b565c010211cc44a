"""The Kvasir-SEG (polyps) converter: where its images and masks are in the official layout."""

from __future__ import annotations

from nnunet_dale.converters.source import Collected, DatasetConverter, SourceTree, child_dir, pair_folders
from nnunet_dale.raw_datasets import ConversionError

__all__ = ["CONVERTER", "collect"]


def collect(tree: SourceTree) -> Collected:
    root = tree.find_dir(["Kvasir-SEG"], any_zip=True)
    if root is None:  # the source may be the dataset folder under another name
        root = next((r for r in tree.roots if child_dir(r, ["images"], required=False) is not None), None)
    if root is None:
        raise ConversionError(f"expected folder Kvasir-SEG (with images/ and masks/) not found in {tree.source}")
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
