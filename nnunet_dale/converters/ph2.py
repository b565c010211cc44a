"""The PH2 (dermoscopy, test-only) converter: where its images and masks are in the official layout."""

from __future__ import annotations

from nnunet_dale.converters.source import (
    Case,
    Collected,
    DatasetConverter,
    SourceTree,
    case_id,
    child_dir,
    image_files,
    is_hidden,
    norm_name,
)
from nnunet_dale.raw_datasets import ConversionError

__all__ = ["CONVERTER", "collect"]


def collect(tree: SourceTree) -> Collected:
    images_root = tree.require_dir(["PH2 Dataset images"], what=" (PH2Dataset/PH2 Dataset images/IMDxxx/...)")
    cases = []
    for case_dir in sorted(p for p in images_root.iterdir() if p.is_dir() and not is_hidden(p)):
        name = case_dir.name
        image_dir = child_dir(case_dir, [f"{name}_Dermoscopic_Image"])
        lesion_dir = child_dir(case_dir, [f"{name}_lesion"], required=False)
        images = [p for p in image_files(image_dir) if p.stem.casefold() == name.casefold()]
        if not images:
            raise ConversionError(f"expected image {image_dir / (name + '.bmp')} not found")
        masks = (
            []
            if lesion_dir is None
            else [p for p in image_files(lesion_dir) if norm_name(p.stem) == norm_name(name + "_lesion")]
        )
        if not masks:
            raise ConversionError(
                f"image without mask: {images[0]} (expected {case_dir / (name + '_lesion') / (name + '_lesion.bmp')})"
            )
        cases.append(Case(case_id(name), images[0], (masks[0],)))
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


CONVERTER = DatasetConverter(
    "ph2",
    "PH2",
    False,
    collect,
    "PH2 dermoscopic images with lesion masks (200 cases), test-only",
    "Mendonca et al., PH2 - a dermoscopic image database for research and benchmarking, EMBC 2013;"
    " https://www.fc.up.pt/addi/ph2%20database.html",
    "PH2 database, free for research use (see its web page); cite Mendonca et al. 2013",
)
