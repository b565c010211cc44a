"""The converter registry: every supported dataset by its short name (``nnunet-dale convert NAME``), one module
per dataset beside this one."""

from __future__ import annotations

from nnunet_dale.converters import busi, isic2016, isic2017, kvasir, mosmed, ph2, polyp
from nnunet_dale.converters.source import DatasetConverter
from nnunet_dale.raw_datasets import ConversionError

__all__ = ["CONVERTERS", "get_converter"]

CONVERTERS: dict[str, DatasetConverter] = {
    m.CONVERTER.name: m.CONVERTER for m in (isic2016, isic2017, ph2, kvasir, polyp, mosmed, busi)
}


def get_converter(name: str) -> DatasetConverter:
    key = name.strip().casefold().replace("-", "").replace("_", "")
    if key not in CONVERTERS:
        raise ConversionError(f"unknown dataset {name!r}; known: {', '.join(CONVERTERS)}")
    return CONVERTERS[key]
