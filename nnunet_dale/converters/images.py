"""Reading, binarising, resizing and writing the cases of a conversion: one ``<case>_0000.png`` image (RGB or grey)
and one 0/1 label ``<case>.png`` per case, in ``images<split>`` / ``labels<split>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from nnunet_dale.converters.source import Case
from nnunet_dale.raw_datasets import ConversionError

__all__ = [
    "FILE_ENDING",
    "LOSSY_SUFFIXES",
    "convert_case",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_mask",
    "split_folders",
    "target_size",
    "write_split",
]

LOSSY_SUFFIXES = (".jpg", ".jpeg")
FILE_ENDING = ".png"


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, Image.DecompressionBombError) as error:
        raise ConversionError(f"could not read {path}: {error}") from error
    return image


def read_image(path: Path, grey: bool) -> tuple[np.ndarray, bool]:
    """(H x W grey or H x W x 3 RGB array, True if a colour image was converted to grey by luma).

    Grey images stay uint8 or uint16; RGB images are uint8 (a grey image in an RGB dataset gets 3 equal channels).
    In a grey dataset an RGB image whose channels are all equal becomes one channel; one with colour (e.g. coloured
    calliper marks in BUSI) is converted with Pillow's ITU-R 601-2 luma.
    """
    image = _open(path)
    if image.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa", "La", "LA"):
        image = image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    array = np.asarray(image)
    if image.mode == "I" or array.dtype.kind == "f":
        if array.min() < 0 or array.max() > 65535 or not np.array_equal(array, np.round(array)):
            raise ConversionError(f"{path}: unsupported pixel values (mode {image.mode}); expected 8 or 16 bit")
        array = array.astype(np.uint16)
    elif array.dtype != np.uint8 and array.dtype != np.uint16:
        array = array.astype(np.uint16)  # big-endian 16-bit variants
    converted = False
    if array.ndim == 3:
        array = array[..., :3]
        if grey:
            if (array == array[..., :1]).all():
                array = np.ascontiguousarray(array[..., 0])
            else:
                array, converted = np.asarray(Image.fromarray(array).convert("L")), True
    elif not grey:
        if array.dtype != np.uint8:
            raise ConversionError(f"{path}: 16-bit grey image in an RGB dataset is not supported")
        array = np.repeat(array[..., None], 3, axis=2)
    return array, converted


def read_mask(path: Path) -> np.ndarray:
    """Boolean lesion mask: JPEG masks thresholded at 128 (grey) or any channel > 127 (RGB); lossless masks stored as
    0/1 are taken as they are, other lossless masks also thresholded at 128."""
    image = _open(path)
    if image.mode in ("1", "P", "PA", "LA", "La", "CMYK", "YCbCr"):
        image = image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3]
    lossless = path.suffix.lower() not in LOSSY_SUFFIXES
    if lossless and array.size and array.min() >= 0 and array.max() <= 1:
        fg = array > 0.5
    else:
        fg = array > 127
    return fg.any(axis=2) if fg.ndim == 3 else fg


def target_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most ``max_size`` (unchanged if already smaller)."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_image(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (array.shape[1], array.shape[0]) == size:
        return array
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BICUBIC))
    resized = np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC))
    return np.clip(np.round(resized), 0, 65535).astype(np.uint16)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    array = mask.astype(np.uint8)
    if (array.shape[1], array.shape[0]) == size:
        return array
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.NEAREST))


def convert_case(case: Case, image_out: Path, label_out: Path, grey: bool, max_size: int | None) -> bool:
    """Writes one case (image PNG, 0/1 label PNG); returns True if a colour image was converted to grey."""
    image, converted = read_image(case.image, grey)
    height, width = image.shape[:2]
    mask = np.zeros((height, width), dtype=bool)
    for path in case.masks:
        part = read_mask(path)
        if part.shape != (height, width):
            raise ConversionError(
                f"size mismatch: mask {path} is {part.shape[1]}x{part.shape[0]} but its image {case.image} is "
                f"{width}x{height} (width x height)"
            )
        mask |= part
    size = target_size(width, height, max_size)
    Image.fromarray(resize_image(image, size)).save(image_out)
    Image.fromarray(resize_mask(mask, size)).save(label_out)
    return converted


def split_folders(key: str) -> tuple[str, str]:
    return f"images{key}", f"labels{key}"


def write_split(
    cases: list[Case], out: Path, key: str, grey: bool, max_size: int | None, verbose: bool
) -> tuple[int, int]:
    """Writes the cases of one split; returns (number of cases, number of colour images converted to grey)."""
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise ConversionError(
                f"two cases with the identifier {c.case_id} in {key}: {seen[c.case_id]} and {c.image}"
            )
        seen[c.case_id] = c.image
    images_name, labels_name = split_folders(key)
    (out / images_name).mkdir(parents=True)
    (out / labels_name).mkdir(parents=True)
    converted = 0
    for c in tqdm(cases, desc=images_name, unit="case", disable=None if verbose else True, leave=False):
        converted += convert_case(
            c,
            out / images_name / f"{c.case_id}_0000{FILE_ENDING}",
            out / labels_name / f"{c.case_id}{FILE_ENDING}",
            grey,
            max_size,
        )
    return len(cases), converted
