"""Built-in noisy-label lesion benchmark: a synthetic nnU-Net v2 raw dataset whose clean labels are known.

``make_benchmark`` draws grey images with 0-3 bright lesions of varying contrast, boundary blur and boundary
irregularity among distractors and noise, and labels the training cases with a simulated annotator whose boundary
errors grow with each lesion's fuzziness (and who sometimes misses a faint lesion). Test labels are clean, and the
clean training labels are kept in ``labelsTr_clean/`` so that label noise can be measured. The image and annotator
models, with their formulas and the measured noise at the defaults, are documented in docs/noise-model.md.

All lengths are given in pixels of a 64-pixel image (``REFERENCE_SIZE``) and scaled by ``size / 64``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from nnunet_dale.files import blocking_file, load_array, staging_dir
from nnunet_dale.metrics import dice
from nnunet_dale.nnunet_env import warn_nnunet_pitfalls

__all__ = [
    "GENERATOR_VERSION",
    "REFERENCE_SIZE",
    "Lesion",
    "annotate",
    "clean_label",
    "draw_case",
    "lesion_fuzziness",
    "make_benchmark",
    "miss_probability",
    "nearest_lesion_cells",
    "noise_statistics",
    "plot_noise_examples",
    "signed_distance",
]

GENERATOR_VERSION = 1
REFERENCE_SIZE = 64
TRAIN, TEST = 0, 1  # split codes in the per-case seed keys
IMAGE_STREAM, ANNOTATOR_STREAM = 0, 1  # per-case random streams: images never depend on the annotator's draws

# --- image model (lengths in pixels at REFERENCE_SIZE) ---
LESION_COUNT_PROBS = (0.05, 0.45, 0.30, 0.20)  # P(0), P(1), P(2), P(3) lesions per image
RADIUS_RANGE = (5.0, 10.0)  # longest semi-axis, uniform
ASPECT_RANGE = (0.6, 1.0)  # other semi-axes / longest, uniform
CONTRAST_RANGE = (0.07, 0.45)  # lesion peak intensity above background (image range 0..1), log-uniform
BLUR_RANGE = (0.4, 3.0)  # Gaussian sigma of the lesion's intensity profile, uniform
IRREGULARITY_RANGE = (0.0, 0.3)  # sum of the radial Fourier amplitudes (relative radius), uniform
HARMONICS = (2, 3, 4, 5, 6)
MIN_GAP = 4.0  # minimal distance between the bounding circles of two lesions
MAX_TEST_LESION_SCALE = 4.0  # make_benchmark's test_lesion_scale: beyond this hardly any lesion fits the image
MAX_SIZE = {2: 1024, 3: 256}  # make_benchmark's size per dims: a 1024^2 image or 256^3 volume is 1-17 M voxels
EDGE_MARGIN = 3.0  # minimal distance between a lesion's bounding circle and the image border
BACKGROUND_LEVEL = 0.25
NOISE_SIGMA_RANGE = (0.015, 0.04)  # additive Gaussian noise, uniform
SPECKLE_RANGE = (0.03, 0.10)  # multiplicative (speckle-like) noise, uniform

# --- fuzziness score: weights of the contrast, blur and irregularity terms (sum to 1) ---
FUZZINESS_WEIGHTS = (0.5, 0.3, 0.2)

# --- annotator model (lengths in pixels at REFERENCE_SIZE) ---
MAX_DISPLACEMENT = 3.0  # D: boundary shift of a lesion of fuzziness 1 at noise 1 (times u ~ U(0.5, 1.5))
DISPLACEMENT_EXPONENT = 1.5  # gamma: shift grows like fuzziness**gamma
DILATION_PROBABILITY = 0.5  # the shift is outwards (dilation) with this probability, else inwards (erosion)
MAX_EROSION_FRACTION = 0.6  # an erosion never exceeds this fraction of the lesion's inradius
MAX_JITTER = 1.5  # J: amplitude of the smooth contour jitter at fuzziness 1 and noise 1
JITTER_CORRELATION = 3.0  # Gaussian sigma of the jitter field
JITTER_CLIP = 3.0  # the unit-variance jitter field is clipped to +-3
MISS_PROBABILITY = 0.5  # P(miss) of a lesion of fuzziness 1 at noise 1 ...
MISS_ONSET = 0.5  # ... which is 0 up to this fuzziness and grows quadratically above it


# ----------------------------------------------------------------------------------------------------------------------
# fuzziness and metrics
# ----------------------------------------------------------------------------------------------------------------------


def lesion_fuzziness(
    contrast: float | np.ndarray,
    blur: float | np.ndarray,
    irregularity: float | np.ndarray,
    size: int = REFERENCE_SIZE,
) -> float | np.ndarray:
    """Fuzziness score in [0, 1] of a lesion: 0 = clear (high contrast, sharp, smooth edge), 1 = fuzziest.

    ``0.5 * c + 0.3 * b + 0.2 * i`` with ``c = log(C_max / contrast) / log(C_max / C_min)``,
    ``b = (blur * 64 / size - B_min) / (B_max - B_min)``, ``i = irregularity / I_max``, each clipped to [0, 1];
    ``blur`` is the Gaussian sigma in pixels of an image of ``size`` pixels.
    """
    (c_min, c_max), (b_min, b_max), (_, i_max) = CONTRAST_RANGE, BLUR_RANGE, IRREGULARITY_RANGE
    c = np.clip(np.log(c_max / np.asarray(contrast, dtype=float)) / np.log(c_max / c_min), 0, 1)
    b = np.clip((np.asarray(blur, dtype=float) * REFERENCE_SIZE / size - b_min) / (b_max - b_min), 0, 1)
    i = np.clip(np.asarray(irregularity, dtype=float) / i_max, 0, 1)
    w_c, w_b, w_i = FUZZINESS_WEIGHTS
    score = w_c * c + w_b * b + w_i * i
    return float(score) if score.ndim == 0 else score


def miss_probability(fuzziness: float, noise: float = 1.0) -> float:
    """P(the annotator misses a lesion) = min(1, noise * P_miss * clip((f - f0) / (1 - f0), 0, 1) ** 2)."""
    ramp = float(np.clip((fuzziness - MISS_ONSET) / (1 - MISS_ONSET), 0, 1))
    return min(1.0, noise * MISS_PROBABILITY * ramp**2)


def nearest_lesion_cells(label_map: np.ndarray) -> np.ndarray:
    """Voronoi cells of the lesions of an integer label map: every pixel gets the label of its nearest lesion pixel.

    Per-lesion annotations and per-lesion noise measurements are confined to these cells. All zeros if no lesion.
    """
    if not label_map.any():
        return np.zeros_like(label_map)
    _, indices = ndimage.distance_transform_edt(label_map == 0, return_indices=True)
    return label_map[tuple(indices)]


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (pixels) to the boundary of a binary mask: negative inside, positive outside, never 0.

    Pixel centres are half a pixel from the contour, so ``signed_distance(mask) < 0`` is exactly ``mask``.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, 0.5 - inside, outside - 0.5)


# ----------------------------------------------------------------------------------------------------------------------
# image model
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Lesion:
    """One drawn lesion: its shape and appearance parameters (lengths in pixels of the actual image)."""

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray  # columns: the lesion's axes in image coordinates
    irregularity: float
    amplitudes: np.ndarray  # radial Fourier amplitudes, sum = irregularity
    phases: np.ndarray  # 2D: phases of cos(k phi + p); 3D: signs of the Chebyshev terms
    directions: np.ndarray | None  # 3D only: axis v_k of each zonal term
    contrast: float
    blur: float
    fuzziness: float
    mask: np.ndarray | None = field(repr=False, default=None)  # clean mask, set when drawn

    @property
    def bounding_radius(self) -> float:
        return float(self.semi_axes.max() * (1 + self.irregularity))

    def metadata(self) -> dict[str, Any]:
        return {
            "center": [round(float(c), 3) for c in self.center],
            "radius": round(float(self.semi_axes.max()), 4),
            "semi_axes": [round(float(a), 4) for a in self.semi_axes],
            "contrast": round(self.contrast, 6),
            "blur": round(self.blur, 6),
            "irregularity": round(self.irregularity, 6),
            "fuzziness": round(self.fuzziness, 6),
            "area": int(self.mask.sum()),
        }


def _random_rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    if dims == 2:
        angle = rng.uniform(0, np.pi)
        return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    return q * np.sign(np.diag(r))


def _draw_lesion_shape(rng: np.random.Generator, dims: int, scale: float, lesion_scale: float = 1.0) -> dict[str, Any]:
    """Shape and appearance parameters of one lesion (its centre is placed afterwards); `lesion_scale` multiplies the
    semi-axes only, so the same draws give the same lesion, larger."""
    radius = rng.uniform(*RADIUS_RANGE) * scale * lesion_scale
    aspects = np.concatenate([[1.0], rng.uniform(*ASPECT_RANGE, size=dims - 1)])
    rotation = _random_rotation(rng, dims)
    irregularity = rng.uniform(*IRREGULARITY_RANGE)
    weights = rng.uniform(0, 1, size=len(HARMONICS)) / np.asarray(HARMONICS)
    amplitudes = irregularity * weights / weights.sum()
    if dims == 2:
        phases = rng.uniform(0, 2 * np.pi, size=len(HARMONICS))
        directions = None
    else:
        phases = rng.choice([-1.0, 1.0], size=len(HARMONICS))
        directions = rng.standard_normal((len(HARMONICS), dims))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    contrast = float(np.exp(rng.uniform(*np.log(CONTRAST_RANGE))))
    blur = rng.uniform(*BLUR_RANGE) * scale
    return dict(
        semi_axes=radius * aspects,
        rotation=rotation,
        irregularity=float(irregularity),
        amplitudes=amplitudes,
        phases=phases,
        directions=directions,
        contrast=contrast,
        blur=float(blur),
    )


def _lesion_mask(lesion: Lesion, coords: np.ndarray) -> np.ndarray:
    """Pixels inside the perturbed ellipse(-oid): |q| < 1 + sum_k a_k cos(k phi + p_k) in normalised coordinates q."""
    dims, shape = coords.shape[0], coords.shape[1:]
    box = _box(lesion.center - lesion.bounding_radius - 1, lesion.center + lesion.bounding_radius + 1, shape)
    coords = coords[(slice(None),) + box]  # nothing outside the bounding ball is inside the lesion
    offset = coords - lesion.center.reshape((dims,) + (1,) * dims)
    q = np.tensordot(lesion.rotation.T, offset, axes=1) / lesion.semi_axes.reshape((dims,) + (1,) * dims)
    rho = np.sqrt((q**2).sum(axis=0))
    unit = q / np.maximum(rho, 1e-9)
    perturbation = np.zeros_like(rho)
    for j, k in enumerate(HARMONICS):
        if dims == 2:
            perturbation += lesion.amplitudes[j] * np.cos(k * np.arctan2(unit[1], unit[0]) + lesion.phases[j])
        else:  # zonal Chebyshev term T_k(u . v_k) = cos(k * angle(u, v_k)): smooth on the sphere
            cos_angle = np.clip(np.tensordot(lesion.directions[j], unit, axes=1), -1, 1)
            perturbation += lesion.amplitudes[j] * lesion.phases[j] * np.cos(k * np.arccos(cos_angle))
    mask = np.zeros(shape, dtype=bool)
    mask[box] = ndimage.binary_fill_holes(rho < 1 + perturbation)
    return mask


def _box(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of the pixels between the points lo and hi (inclusive, widened to whole pixels), clipped to shape."""
    start = np.maximum(np.floor(lo), 0).astype(int)
    stop = np.minimum(np.ceil(hi) + 1, shape).astype(int)
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit standard deviation."""
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (smooth - smooth.mean()) / smooth.std()


def _place_lesions(rng: np.random.Generator, shapes: list[dict], size: int, dims: int, scale: float) -> list[Lesion]:
    """Rejection-sample non-overlapping centres; a lesion that does not fit after 50 tries is dropped."""
    placed: list[Lesion] = []
    for shape in shapes:
        bound = float(shape["semi_axes"].max() * (1 + shape["irregularity"]))
        margin = bound + EDGE_MARGIN * scale
        if 2 * margin >= size - 1:  # larger than the image (a large lesion_scale): it cannot be placed
            continue
        for _ in range(50):
            center = rng.uniform(margin, size - 1 - margin, size=dims)
            if all(
                np.linalg.norm(center - other.center) > bound + other.bounding_radius + MIN_GAP * scale
                for other in placed
            ):
                fuzz = lesion_fuzziness(shape["contrast"], shape["blur"], shape["irregularity"], size=size)
                placed.append(Lesion(center=center, fuzziness=float(fuzz), **shape))
                break
    return placed


def _distractors(rng: np.random.Generator, coords: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, list]:
    """1-3 non-lesion structures: dark blobs, small bright spots, thin bright curvilinear lines."""
    dims = coords.shape[0]
    shape = coords.shape[1:]
    out = np.zeros(shape)
    kinds = []
    for _ in range(int(rng.integers(1, 4))):
        kind = ("dark_blob", "bright_spot", "line")[int(rng.integers(0, 3))]
        kinds.append(kind)
        center = rng.uniform(0, size - 1, size=dims).reshape((dims,) + (1,) * dims)
        if kind == "dark_blob":
            sigma, amplitude = rng.uniform(3, 7) * scale, -rng.uniform(0.05, 0.15)
        elif kind == "bright_spot":
            sigma, amplitude = rng.uniform(0.7, 1.5) * scale, rng.uniform(0.1, 0.3)
        if kind != "line":
            out += amplitude * np.exp(-((coords - center) ** 2).sum(axis=0) / (2 * sigma**2))
            continue
        direction = rng.standard_normal(dims)
        direction /= np.linalg.norm(direction)
        bend = rng.standard_normal(dims) * rng.uniform(0, 0.02) / scale
        length = rng.uniform(0.3, 0.8) * size
        amplitude = rng.uniform(0.06, 0.2)
        t = np.arange(-length / 2, length / 2, 0.25)[:, None]
        points = np.rint(center.reshape(1, dims) + t * direction + t**2 * bend).astype(int)
        points = points[np.all((points >= 0) & (points < size), axis=1)]
        line = np.zeros(shape)
        line[tuple(points.T)] = 1.0
        out += amplitude * np.clip(ndimage.gaussian_filter(line, 0.6 * scale) / 0.35, 0, 1)
    return out, kinds


def draw_case(
    rng: np.random.Generator, size: int, dims: int = 2, lesion_scale: float = 1.0
) -> tuple[np.ndarray, list[Lesion], dict[str, Any]]:
    """One image (uint8, ``(size,) * dims``) with its lesions (clean masks in ``Lesion.mask``) and image metadata.
    ``lesion_scale`` multiplies the lesions' semi-axes (the size-shift test set); a lesion that no longer fits is
    dropped, as any lesion the placement cannot fit."""
    scale = size / REFERENCE_SIZE
    shape = (size,) * dims
    coords = np.indices(shape, dtype=float)
    num = int(rng.choice(len(LESION_COUNT_PROBS), p=LESION_COUNT_PROBS))
    shapes = [_draw_lesion_shape(rng, dims, scale, lesion_scale) for _ in range(num)]
    lesions = _place_lesions(rng, shapes, size, dims, scale)

    image = (
        BACKGROUND_LEVEL + 0.06 * _smooth_noise(rng, shape, 8 * scale) + 0.025 * _smooth_noise(rng, shape, 1.5 * scale)
    )
    heterogeneity = _smooth_noise(rng, shape, 2 * scale)
    for lesion in lesions:
        lesion.mask = _lesion_mask(lesion, coords)
        profile = ndimage.gaussian_filter(lesion.mask.astype(float), lesion.blur)
        image += lesion.contrast * profile * (1 + 0.15 * heterogeneity)
    distractors, kinds = _distractors(rng, coords, size, scale)
    image += distractors
    noise_sigma, speckle = rng.uniform(*NOISE_SIGMA_RANGE), rng.uniform(*SPECKLE_RANGE)
    image *= 1 + speckle * _smooth_noise(rng, shape, 0.6 * scale)
    image += noise_sigma * rng.standard_normal(shape)
    image = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    info = {"noise_sigma": round(float(noise_sigma), 6), "speckle": round(float(speckle), 6), "distractors": kinds}
    return image, lesions, info


def clean_label(lesions: Sequence[Lesion], shape: tuple[int, ...]) -> np.ndarray:
    """Integer map: 0 background, i + 1 inside lesion i."""
    label_map = np.zeros(shape, dtype=np.int32)
    for i, lesion in enumerate(lesions):
        label_map[lesion.mask] = i + 1
    return label_map


# ----------------------------------------------------------------------------------------------------------------------
# annotator model
# ----------------------------------------------------------------------------------------------------------------------


def annotate(
    rng: np.random.Generator, lesions: Sequence[Lesion], shape: tuple[int, ...], noise: float = 1.0
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Noisy annotation (bool mask) of the lesions and per-lesion annotator metadata (docs/noise-model.md).

    Per lesion i with fuzziness f, drawn independently of ``noise`` so that ``noise`` only scales them:
      shift       d = s * noise * D * f**gamma * u,  s = +1 (dilate, p = 0.5) or -1 (erode),  u ~ U(0.5, 1.5),
                  erosions capped at MAX_EROSION_FRACTION of the inradius
      jitter      j(x) = noise * J * f * clip(g(x), -3, 3),  g = white noise smoothed with sigma JITTER_CORRELATION,
                  normalised to unit variance
      annotation  fill_holes(signed_distance(clean_i)(x) < d + j(x)), restricted to the lesion's Voronoi cell
      miss        with probability miss_probability(f, noise) the lesion is not annotated at all.
    With noise = 0 the annotation equals the clean label exactly.
    """
    size = shape[0]
    scale = size / REFERENCE_SIZE
    label_map = clean_label(lesions, shape)
    cells = nearest_lesion_cells(label_map)
    noisy = np.zeros(shape, dtype=bool)
    records = []
    for i, lesion in enumerate(lesions):
        miss_draw = rng.random()
        sign = 1.0 if rng.random() < DILATION_PROBABILITY else -1.0
        magnitude = rng.uniform(0.5, 1.5)
        jitter_field = _smooth_noise(rng, shape, JITTER_CORRELATION * scale)

        f = lesion.fuzziness
        p_miss = miss_probability(f, noise)
        missed = bool(miss_draw < p_miss)
        jitter = noise * MAX_JITTER * scale * f
        shift = sign * noise * MAX_DISPLACEMENT * scale * f**DISPLACEMENT_EXPONENT * magnitude
        # the annotation lies within max(shift, 0) + JITTER_CLIP * jitter of the clean contour: work on that box
        reach = max(shift, 0.0) + JITTER_CLIP * jitter + 2
        where = np.argwhere(lesion.mask)
        box = _box(where.min(axis=0) - reach, where.max(axis=0) + reach, shape)
        distance = signed_distance(lesion.mask[box])
        inradius = 0.5 - float(distance.min())
        shift = max(shift, -MAX_EROSION_FRACTION * inradius)
        annotation = np.zeros(shape, dtype=bool)
        if not missed:
            threshold = shift + jitter * np.clip(jitter_field[box], -JITTER_CLIP, JITTER_CLIP)
            annotation[box] = ndimage.binary_fill_holes(distance < threshold) & (cells[box] == i + 1)
        noisy |= annotation
        records.append(
            {
                "missed": missed,
                "miss_probability": round(p_miss, 6),
                "displacement": round(float(shift), 6),
                "jitter": round(float(jitter), 6),
                "noisy_area": int(annotation.sum()),
                "dice": round(dice(annotation, lesion.mask), 6),
            }
        )
    return noisy, records


# ----------------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------------


def _save(array: np.ndarray, path: Path) -> None:
    """uint8 array to PNG (2D) or gzipped NIfTI (3D, identity affine), byte-deterministic."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 2:
        Image.fromarray(array).save(path, format="PNG")
        return
    import nibabel

    nifti = nibabel.Nifti1Image(array, affine=np.eye(4))
    nifti.header.set_xyzt_units("mm")
    path.write_bytes(gzip.compress(nifti.to_bytes(), compresslevel=6, mtime=0))


def _case_rng(seed: int, split: int, index: int, stream: int) -> np.random.Generator:
    """Independent generator of one case and stream: the child (split, index, stream) of ``SeedSequence(seed)``.

    Keyed by position rather than spawned in order, so a case never depends on how many other cases are drawn.
    """
    root = np.random.SeedSequence(seed)
    return np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(split, index, stream)))


def noise_statistics(cases: dict[str, Any]) -> dict[str, Any]:
    """Label-noise summary of the training cases of a ``cases.json`` content (or its ``cases`` dict).

    Lesion Dice is computed inside the lesion's Voronoi cell; fuzziness thirds split the lesions by score.
    """
    cases = cases.get("cases", cases)
    train = [c for c in cases.values() if c["split"] == "train"]
    lesions = [lesion for c in train for lesion in c["lesions"]]
    stats: dict[str, Any] = {
        "num_cases": len(train),
        "num_lesions": len(lesions),
        "cases_without_lesion": sum(c["num_lesions"] == 0 for c in train),
        "mean_case_dice": float(np.mean([c["dice_noisy_clean"] for c in train])) if train else float("nan"),
    }
    if not lesions:
        return stats
    fuzz = np.array([lesion["fuzziness"] for lesion in lesions])
    lesion_dice = np.array([lesion["dice"] for lesion in lesions])
    missed = np.array([lesion["missed"] for lesion in lesions])
    order = np.argsort(fuzz, kind="stable")
    thirds = np.array_split(order, 3)
    stats.update(
        {
            "mean_lesion_dice": float(lesion_dice.mean()),
            "mean_lesion_dice_annotated": float(lesion_dice[~missed].mean()) if (~missed).any() else float("nan"),
            "missed_share": float(missed.mean()),
            "num_missed": int(missed.sum()),
        }
    )
    for name, idx in zip(("clearest_third", "middle_third", "fuzziest_third"), thirds, strict=True):
        if len(idx):
            stats[name] = {
                "fuzziness_range": [float(fuzz[idx].min()), float(fuzz[idx].max())],
                "mean_lesion_dice": float(lesion_dice[idx].mean()),
                "missed_share": float(missed[idx].mean()),
            }
    return stats


def _validate(raw_root, dataset_id, name, num_train, num_test, size, seed, noise, dims, test_lesion_scale) -> None:
    def integer(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    problems = []
    if not integer(dataset_id) or not 1 <= dataset_id <= 999:
        problems.append(f"dataset_id must be an integer in 1..999, got {dataset_id!r}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        problems.append(f"name must be a non-empty string of letters, digits, '_' or '-', got {name!r}")
    if not integer(num_train) or num_train < 2:
        problems.append(f"num_train must be an integer >= 2, got {num_train!r}")
    if not integer(num_test) or num_test < 0:
        problems.append(f"num_test must be an integer >= 0, got {num_test!r}")
    largest = MAX_SIZE.get(dims, MAX_SIZE[2])
    if not integer(size) or not 32 <= size <= largest:
        problems.append(
            f"size must be an integer in 32..{MAX_SIZE[2]} (2D) or 32..{MAX_SIZE[3]} (3D), got {size!r} in {dims!r}D"
        )
    if not integer(seed) or seed < 0:
        problems.append(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(noise, (int, float, np.integer, np.floating)) or isinstance(noise, bool) or not noise >= 0:
        problems.append(f"noise must be a number >= 0, got {noise!r}")
    elif not np.isfinite(noise):
        problems.append(f"noise must be finite, got {noise!r}")
    number = (int, float, np.integer, np.floating)
    if (
        not isinstance(test_lesion_scale, number)
        or isinstance(test_lesion_scale, bool)
        or not 0.25 <= test_lesion_scale <= MAX_TEST_LESION_SCALE
    ):
        problems.append(
            f"test_lesion_scale must be a number in [0.25, {MAX_TEST_LESION_SCALE:g}], got {test_lesion_scale!r}"
        )
    if dims not in (2, 3) or isinstance(dims, bool):
        problems.append(f"dims must be 2 or 3, got {dims!r}")
    if not isinstance(raw_root, (str, os.PathLike)):
        problems.append(f"raw_root must be a path, got {raw_root!r}")
    elif (blocker := blocking_file(Path(raw_root))) is not None:
        problems.append(f"raw_root {raw_root} cannot be a folder: {blocker} is a file")
    if problems:
        raise ValueError("make_benchmark: " + "; ".join(problems))


def _write_dataset(folder: Path, params: dict[str, Any]) -> None:
    size, dims, noise, seed = params["size"], params["dims"], params["noise"], params["seed"]
    ending = ".png" if dims == 2 else ".nii.gz"
    shape = (size,) * dims
    for sub in ("imagesTr", "labelsTr", "labelsTr_clean", "imagesTs", "labelsTs"):
        (folder / sub).mkdir()
    cases: dict[str, Any] = {}
    test_scale = params.get("test_lesion_scale", 1.0)
    for split, prefix, count in ((TRAIN, "train", params["num_train"]), (TEST, "test", params["num_test"])):
        for index in range(count):
            case = f"{prefix}_{index:03d}"
            lesion_scale = test_scale if split == TEST else 1.0
            image, lesions, info = draw_case(_case_rng(seed, split, index, IMAGE_STREAM), size, dims, lesion_scale)
            clean = clean_label(lesions, shape) > 0
            record = {"split": prefix, "num_lesions": len(lesions), **info}
            lesion_records = [lesion.metadata() for lesion in lesions]
            if split == TRAIN:
                noisy, annotator = annotate(_case_rng(seed, split, index, ANNOTATOR_STREAM), lesions, shape, noise)
                for lesion_record, extra in zip(lesion_records, annotator, strict=True):
                    lesion_record.update(extra)
                record["dice_noisy_clean"] = round(dice(noisy, clean), 6)
                record["any_missed"] = any(a["missed"] for a in annotator)
                _save(image, folder / "imagesTr" / f"{case}_0000{ending}")
                _save(noisy, folder / "labelsTr" / f"{case}{ending}")
                _save(clean, folder / "labelsTr_clean" / f"{case}{ending}")
            else:
                _save(image, folder / "imagesTs" / f"{case}_0000{ending}")
                _save(clean, folder / "labelsTs" / f"{case}{ending}")
            record["lesions"] = lesion_records
            cases[case] = record

    dataset_json = {
        "name": params["name"],
        "description": "Synthetic lesions with noisy training labels (nnunet_dale.benchmark_data, "
        "docs/noise-model.md). labelsTr: noisy annotator; labelsTr_clean, labelsTs: clean.",
        "reference": "nnunet-dale",
        "licence": "Apache-2.0",
        "channel_names": {"0": "grey"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": params["num_train"],
        "file_ending": ending,
    }
    if dims == 2:
        dataset_json["overwrite_image_reader_writer"] = "NaturalImage2DIO"
    meta = {
        "generator": "nnunet_dale.benchmark_data",
        "version": GENERATOR_VERSION,
        "parameters": params,
        "summary": noise_statistics(cases),
        "cases": cases,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    (folder / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


def _existing_parameters(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "cases.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != GENERATOR_VERSION:
        return None
    return meta.get("parameters")


def make_benchmark(
    raw_root: Path,
    dataset_id: int = 990,
    name: str = "DALEBench",
    num_train: int = 40,
    num_test: int = 20,
    size: int = 64,
    seed: int = 0,
    noise: float = 1.0,
    dims: int = 2,
    overwrite: bool = False,
    test_lesion_scale: float = 1.0,
) -> Path:
    """Write the noisy-label lesion benchmark as nnU-Net raw dataset ``raw_root/Dataset{id:03d}_{name}``.

    imagesTr/labelsTr hold the images and NOISY labels of the training cases, labelsTr_clean their clean labels,
    imagesTs/labelsTs the test cases with CLEAN labels; cases.json the per-case/per-lesion metadata and the
    generation parameters. 2D: PNG (uint8); 3D: size^3 NIfTI volumes. Deterministic in ``seed``; a training case
    does not depend on ``num_test``, ``num_train`` or (its image) on ``noise``.

    ``test_lesion_scale`` S (the size-shift test): the test lesions' semi-axes are multiplied by S, drawn from the
    same random streams, so test case i is case i of the unscaled set with larger lesions (a lesion that no longer
    fits the image is dropped); the training cases do not change.

    The folder is built next to the destination and renamed into place. An existing destination is returned as is
    if it was made with the same parameters, replaced if ``overwrite``, else a FileExistsError is raised.
    """
    _validate(raw_root, dataset_id, name, num_train, num_test, size, seed, noise, dims, test_lesion_scale)
    raw_root = Path(raw_root)
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    params = {
        "dataset_id": int(dataset_id),
        "name": name,
        "num_train": int(num_train),
        "num_test": int(num_test),
        "size": int(size),
        "seed": int(seed),
        "noise": float(noise),
        "dims": int(dims),
    }
    if test_lesion_scale != 1.0:  # only then: datasets made before the option keep their parameters
        params["test_lesion_scale"] = float(test_lesion_scale)
    if raw_root.is_dir():
        clashes = sorted(p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder.name)
        if clashes:
            raise FileExistsError(
                f"{raw_root} already holds dataset id {dataset_id:03d} under another name ({', '.join(clashes)}); "
                "nnU-Net needs unique ids: choose another dataset_id or remove it"
            )
    if folder.exists() and not overwrite:
        if _existing_parameters(folder) == params:
            return folder
        raise FileExistsError(
            f"{folder} already exists and was not made by make_benchmark with these parameters; "
            "use --overwrite (overwrite=True in Python) to replace it"
        )

    raw_root.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(raw_root, f".{folder.name}.", ".tmp")
    try:
        _write_dataset(staging, params)
        if folder.exists():
            trash = staging_dir(raw_root, f".{folder.name}.", ".old")
            folder.rename(trash / folder.name)
            staging.rename(folder)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    warn_nnunet_pitfalls(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# figure and command line
# ----------------------------------------------------------------------------------------------------------------------


def _pick_cases(cases: dict[str, Any], num_cases: int) -> list[str]:
    """Training cases with lesions at evenly spaced quantiles of Dice(noisy, clean): from worst to best."""
    with_lesions = [k for k, c in cases.items() if c["split"] == "train" and c["num_lesions"] > 0]
    ranked = sorted(with_lesions, key=lambda k: (cases[k]["dice_noisy_clean"], k))
    if len(ranked) <= num_cases:
        return ranked
    picks = np.linspace(0, len(ranked) - 1, num_cases).round().astype(int)
    return [ranked[i] for i in picks]


def plot_noise_examples(
    dataset_folder: str | os.PathLike,
    output: str | os.PathLike,
    case_ids: Sequence[str] | None = None,
    num_cases: int = 4,
    dpi: int = 90,
) -> Path:
    """Figure of training cases: image, clean label, noisy label, difference (red: added, blue: removed).

    ``case_ids`` defaults to ``num_cases`` cases spanning the range of Dice(noisy, clean). 3D volumes are shown
    by the axial slice with the most clean lesion voxels. Returns the written PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(dataset_folder)
    meta = json.loads((folder / "cases.json").read_text())
    cases = meta["cases"]
    ending = ".png" if meta["parameters"]["dims"] == 2 else ".nii.gz"
    case_ids = list(case_ids) if case_ids is not None else _pick_cases(cases, num_cases)
    if not case_ids:
        raise ValueError(f"{folder} has no training case with a lesion to show")

    fig, axes = plt.subplots(len(case_ids), 4, figsize=(8, 2.1 * len(case_ids) + 0.3), squeeze=False)
    for row, case in zip(axes, case_ids, strict=True):
        image = load_array(folder / "imagesTr" / f"{case}_0000{ending}")
        clean = load_array(folder / "labelsTr_clean" / f"{case}{ending}") > 0
        noisy = load_array(folder / "labelsTr" / f"{case}{ending}") > 0
        if image.ndim == 3:
            z = int(np.argmax(clean.reshape(clean.shape[0], -1).sum(axis=1)))
            image, clean, noisy = image[z], clean[z], noisy[z]
        diff = np.zeros(clean.shape + (3,))
        diff[clean & noisy] = 0.6
        diff[noisy & ~clean] = (0.95, 0.25, 0.2)
        diff[clean & ~noisy] = (0.2, 0.5, 1.0)
        record = cases[case]
        fuzz = ", ".join(f"{les['fuzziness']:.2f}" + (" missed" if les["missed"] else "") for les in record["lesions"])
        panels = (
            (image, {"cmap": "gray"}, f"{case} (display windowed)"),
            (clean, {"cmap": "gray", "vmin": 0, "vmax": 1}, "clean label"),
            (noisy, {"cmap": "gray", "vmin": 0, "vmax": 1}, f"noisy label (Dice {record['dice_noisy_clean']:.2f})"),
            (diff, {}, "difference"),
        )
        for ax, (data, style, title) in zip(row, panels, strict=True):
            ax.imshow(data, interpolation="nearest", **style)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"fuzziness {fuzz}", fontsize=7)
    fig.text(
        0.5,
        0.005,
        "difference: red = added by the annotator, blue = removed (or missed), grey = agreement",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    return output
