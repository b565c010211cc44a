"""Converters from public lesion-segmentation datasets, in their official download layouts, to nnU-Net v2 raw
datasets (docs/datasets.md): ``convert(name, source, dataset_id)`` and ``add_test_set(...)``.

One module per dataset (``isic2016``, ``isic2017``, ``ph2``, ``kvasir``, ``polyp``, ``mosmed``, ``busi``) says where
its images and masks are; they share ``source`` (folders, zip files, pairing images with masks), ``images``
(reading, binarising, resizing, writing) and ``nnunet_dale.raw_datasets`` (raw root, dataset ids, folder swaps);
``registry`` lists them and ``api`` writes a dataset.
"""

from nnunet_dale.converters.api import LABELS, add_test_set, convert
from nnunet_dale.converters.busi import BUSI_CLASSES
from nnunet_dale.converters.images import (
    FILE_ENDING,
    LOSSY_SUFFIXES,
    convert_case,
    read_image,
    read_mask,
    split_folders,
    target_size,
    write_split,
)
from nnunet_dale.converters.registry import CONVERTERS, get_converter
from nnunet_dale.converters.source import (
    GREY_CHANNELS,
    IMAGE_SUFFIXES,
    RGB_CHANNELS,
    Case,
    Collected,
    DatasetConverter,
    SourceTree,
    pair_folders,
)
from nnunet_dale.raw_datasets import SPLITS_FILE, ConversionError, discard_work, remove, swap_into_place

__all__ = [
    "BUSI_CLASSES",
    "CONVERTERS",
    "FILE_ENDING",
    "GREY_CHANNELS",
    "IMAGE_SUFFIXES",
    "LABELS",
    "LOSSY_SUFFIXES",
    "RGB_CHANNELS",
    "SPLITS_FILE",
    "Case",
    "Collected",
    "ConversionError",
    "DatasetConverter",
    "SourceTree",
    "add_test_set",
    "convert",
    "convert_case",
    "discard_work",
    "get_converter",
    "pair_folders",
    "read_image",
    "read_mask",
    "remove",
    "split_folders",
    "swap_into_place",
    "target_size",
    "write_split",
]
