"""Controlled label noise for an nnU-Net raw dataset: a new dataset whose training labels are corrupted on purpose.

``add_label_noise(dataset, dataset_id, alpha, kind)`` (``nnunet-dale label-noise``) writes ``DatasetNNN_<name>`` with
the same images and test split (hard links where possible) and corrupted ``labelsTr``; the original labels are kept
in ``labelsTr_clean`` (nnU-Net ignores that folder), as in the built-in benchmark. The protocol is the one of
confident-learning and PyMIC's noisy-label examples:

* each training case is **selected** with probability ``alpha``;
* a selected case is corrupted by one **operation**: ``kind="mixed"`` dilates, erodes or shifts it with equal chance,
  ``"biased"`` always dilates (a generous annotator), ``"eroded"`` always erodes (a tight one), ``"missed"`` drops one
  connected component (lesion) of a multi-lesion mask, chosen uniformly; a selected case with fewer than two lesions
  is left clean and counted;
* the size of the error is **relative to each lesion** (each connected component of each label, full connectivity):
  a fraction ``f ~ U(lo, hi)`` (default ``U(0.1, 0.3)``, one draw per case) of the lesion's equivalent radius
  ``R = sqrt(A / pi)`` (2D, area A in pixels) or ``R = (3 V / (4 pi))^(1/3)`` (3D, volume V in voxels), so small and
  large lesions are hurt alike: ``r = max(1, floor(f R + 1/2))`` voxels. Dilation and erosion use the digital disk or
  ball ``{x : |x|^2 <= r^2}``; erosion treats the outside of the image as lesion, so a lesion that touches the image
  border keeps that border. A shift moves the lesion by ``offset = floor(r u + 1/2)`` (per axis) along a random unit
  direction ``u`` (one per case); what leaves the image is lost. Erosion can remove a lesion thinner than ``2 r + 1``
  voxels (counted per lesion in the record as ``voxels_after`` 0).

Lengths are in voxels: the spacing plays no part (on strongly anisotropic volumes the disk/ball is one in index space).

**Multi-label datasets**: every label value present in a case (except dataset.json's ``ignore`` label) is treated on
its own with the case's operation and fraction, lesion by lesion, and the corrupted labels are painted in ascending
order: where two corrupted labels overlap the higher value wins, and a voxel no label covers any more becomes
background. Ignore-label voxels are left where they are. For nested structures (a label inside another) erosion of the
outer label therefore also opens a background gap at the inner boundary; use the per-label reading accordingly.

**Determinism**: a case's draws come from its own generator, ``default_rng(SeedSequence(seed, spawn_key=(4 words of
sha256(case id))))``, always drawn in the same order (selection ``s``, operation, fraction, lesion pick, direction),
so a case depends only on the seed and its identifier, not on the other cases or their order. A case is selected when
``s < alpha``: the cases noisy at alpha 0.5 are also noisy at 0.8 with the same corruption, and the kinds select the
same cases at the same alpha. ``alpha = 0`` gives labels byte-identical to the source (the files are linked).

The dataset is built in a hidden folder beside its destination and renamed into place: on any error nothing is left.
What was done is recorded per case (operation, fraction, each lesion's radius, Dice(noisy, clean)) in
``label_noise.json`` and summarised under ``label_noise`` in the new ``dataset.json``. docs/label-noise.md has the
how-to.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from nnunet_dale.files import atomic_write, staging_dir
from nnunet_dale.metrics import dice
from nnunet_dale.nnunet_env import warn_nnunet_pitfalls
from nnunet_dale.raw_datasets import (
    ConversionError,
    check_id,
    claim_dataset_id,
    discard_work,
    find_dataset,
    link_or_copy,
    read_training_cases,
    remove,
    resolve_raw_root,
    swap_into_place,
)

__all__ = [
    "CLEAN_LABELS",
    "DEFAULT_RADIUS_FRACTION",
    "KINDS",
    "OPERATIONS",
    "RECORD_FILE",
    "RECORD_KEY",
    "CaseDraws",
    "NoiseSettings",
    "add_label_noise",
    "case_draws",
    "corrupt_label",
    "digital_ball",
    "equivalent_radius",
    "format_summary",
    "lesion_radius",
    "shift_mask",
]

VERSION = 1
KINDS = ("mixed", "biased", "eroded", "missed")
OPERATIONS = ("dilate", "erode", "shift")  # the three of the mixed kind, in the order its draw picks them
KIND_OPERATION = {"biased": "dilate", "eroded": "erode", "missed": "drop"}
DEFAULT_RADIUS_FRACTION = (0.1, 0.3)
CLEAN_LABELS = "labelsTr_clean"
RECORD_FILE = "label_noise.json"
RECORD_KEY = "label_noise"  # the summary in dataset.json
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class NoiseSettings:
    """What to corrupt and how: the selection probability, the kind, the seed and the radius fraction's range."""

    alpha: float
    kind: str = "mixed"
    seed: int = 0
    radius_fraction: tuple[float, float] = DEFAULT_RADIUS_FRACTION

    def __post_init__(self) -> None:
        problems = []
        if not _number(self.alpha) or not 0 <= self.alpha <= 1:
            problems.append(f"alpha (the share of noisy training cases) must be a number in [0, 1], got {self.alpha!r}")
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            problems.append(f"seed must be a non-negative integer, got {self.seed!r}")
        fraction = self.radius_fraction
        if (
            not isinstance(fraction, (tuple, list))
            or len(fraction) != 2
            or not all(_number(v) for v in fraction)
            or not 0 < fraction[0] <= fraction[1] <= 1
        ):
            problems.append(f"radius fraction must be two numbers 0 < LO <= HI <= 1, got {fraction!r}")
        if problems:
            raise ConversionError("; ".join(problems))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "radius_fraction", (float(fraction[0]), float(fraction[1])))

    def as_record(self) -> dict[str, Any]:
        """The settings as written to dataset.json and label_noise.json."""
        fraction = list(self.radius_fraction)
        return {"alpha": self.alpha, "kind": self.kind, "seed": self.seed, "radius_fraction": fraction}


@dataclass(frozen=True)
class CaseDraws:
    """A case's random draws: selected or not, its operation, the radius fraction, the lesion pick of the missed
    kind (in [0, 1)) and the unit shift direction (array-axis order)."""

    selected: bool
    operation: str
    fraction: float
    pick: float
    direction: tuple[float, ...]


def case_draws(case_id: str, ndim: int, settings: NoiseSettings) -> CaseDraws:
    """The draws of one case from its own generator (seed, sha256 of the case id), always in the same order:
    selection s ~ U(0,1) (selected when s < alpha), operation draw o ~ U(0,1) (mixed: OPERATIONS[floor(3 o)]),
    fraction ~ U(lo, hi), lesion pick ~ U(0,1), direction = a standard normal vector / its norm."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    key = tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))
    rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=key))
    selection, operation_draw = rng.random(), rng.random()
    fraction = rng.uniform(*settings.radius_fraction)
    pick = rng.random()
    normal = rng.standard_normal(ndim)
    norm = float(np.linalg.norm(normal))
    direction = normal / norm if norm > 0 else np.eye(ndim)[0]
    operation = KIND_OPERATION.get(settings.kind) or OPERATIONS[min(int(3 * operation_draw), 2)]
    return CaseDraws(
        selected=bool(selection < settings.alpha),
        operation=operation,
        fraction=float(fraction),
        pick=float(pick),
        direction=tuple(float(d) for d in direction),
    )


# ----------------------------------------------------------------------------------------------------------------------
# morphology
# ----------------------------------------------------------------------------------------------------------------------


def equivalent_radius(voxels: int, ndim: int) -> float:
    """The radius of the disk (2D: sqrt(A / pi)) or ball (3D: (3 V / (4 pi))^(1/3)) with the lesion's size."""
    if ndim == 2:
        return math.sqrt(voxels / math.pi)
    return (3 * voxels / (4 * math.pi)) ** (1 / 3)


def lesion_radius(voxels: int, ndim: int, fraction: float) -> int:
    """r = max(1, floor(f R + 1/2)): the fraction f of the equivalent radius R, in whole voxels, at least one."""
    return max(1, math.floor(fraction * equivalent_radius(voxels, ndim) + 0.5))


def digital_ball(radius: int, ndim: int) -> np.ndarray:
    """The digital disk (2D) or ball (3D) {x : |x|^2 <= r^2}, a (2r+1)^ndim boolean array."""
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(axis=0) <= radius * radius


def _paste(out: np.ndarray, crop: np.ndarray, corner: tuple[int, ...]) -> None:
    """out |= crop placed with its first voxel at index `corner` (which may lie outside `out`); clipped."""
    target, source = [], []
    for start, size, limit in zip(corner, crop.shape, out.shape):
        lo, hi = max(start, 0), min(start + size, limit)
        if lo >= hi:
            return
        target.append(slice(lo, hi))
        source.append(slice(lo - start, hi - start))
    out[tuple(target)] |= crop[tuple(source)]


def shift_mask(mask: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
    """The mask moved by an integer `offset` (array-axis order); what leaves the array is lost, the rest is empty."""
    out = np.zeros(mask.shape, dtype=bool)
    _paste(out, np.asarray(mask, dtype=bool), tuple(int(o) for o in offset))
    return out


def _lesions(mask: np.ndarray) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """The connected components (full connectivity) of a binary mask: (bounding box, component inside it)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labelled, _ = ndimage.label(mask, structure=structure)
    boxes = ndimage.find_objects(labelled)
    return [(box, labelled[box] == i) for i, box in enumerate(boxes, start=1) if box is not None]


def _corrupt_mask(mask: np.ndarray, draws: CaseDraws, label: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One label's binary mask after the case's dilation, erosion or shift, lesion by lesion, and one record each."""
    out = np.zeros(mask.shape, dtype=bool)
    records = []
    for box, lesion in _lesions(mask):
        voxels = int(lesion.sum())
        radius = lesion_radius(voxels, mask.ndim, draws.fraction)
        record: dict[str, Any] = {
            "label": label,
            "voxels": voxels,
            "equivalent_radius": round(equivalent_radius(voxels, mask.ndim), 4),
            "radius": radius,
        }
        corner = tuple(s.start for s in box)
        if draws.operation == "shift":
            offset = tuple(math.floor(radius * d + 0.5) for d in draws.direction)
            _paste(out, lesion, tuple(c + o for c, o in zip(corner, offset)))
            record["offset"] = list(offset)
        else:
            # the lesion in its box padded by the radius (clipped to the image): the ball never reaches past an
            # inner side of the crop, and past a clipped side erosion sees lesion (border_value=1)
            padded = tuple(slice(max(s.start - radius, 0), min(s.stop + radius, n)) for s, n in zip(box, mask.shape))
            crop = np.zeros(tuple(s.stop - s.start for s in padded), dtype=bool)
            crop[tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(box, padded))] = lesion
            ball = digital_ball(radius, mask.ndim)
            if draws.operation == "dilate":
                changed = ndimage.binary_dilation(crop, structure=ball)
            else:
                changed = ndimage.binary_erosion(crop, structure=ball, border_value=1)
            _paste(out, changed, tuple(p.start for p in padded))
            record["voxels_after"] = int(changed.sum())
        records.append(record)
    return out, records


def _label_dice(noisy: np.ndarray, clean: np.ndarray, values: list[int]) -> dict[int, float]:
    return {v: dice(noisy == v, clean == v) for v in values if (noisy == v).any() or (clean == v).any()}


def corrupt_label(
    label_map: np.ndarray, draws: CaseDraws, ignore_label: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """A case's label map after its draws (unchanged unless selected), and the record of what was done.

    The record: ``selected``, ``operation`` (dilate / erode / shift / drop, or None when nothing changed),
    ``left_clean`` (why a selected case was not changed: "empty label" or "one lesion"), ``fraction``, ``lesions`` (per
    lesion: label, voxels, equivalent radius, radius, offset or voxels after), ``dropped`` (the missed kind's lesion)
    and ``dice``: the mean over the labels present in either map of Dice(noisy, clean) (1 for two empty maps).
    """
    label_map = np.asarray(label_map)
    values = [int(v) for v in np.unique(label_map) if v != 0 and v != ignore_label]
    record: dict[str, Any] = {"selected": draws.selected, "operation": None}
    noisy = label_map
    if draws.selected and not values:
        record["left_clean"] = "empty label"
    elif draws.selected and draws.operation == "drop":
        lesions = [(v, box, lesion) for v in values for box, lesion in _lesions(label_map == v)]
        record["num_lesions"] = len(lesions)
        if len(lesions) < 2:
            record["left_clean"] = "one lesion"
        else:
            value, box, lesion = lesions[min(int(draws.pick * len(lesions)), len(lesions) - 1)]
            noisy = label_map.copy()
            noisy[box][lesion] = 0
            record.update(operation="drop", dropped={"label": value, "voxels": int(lesion.sum())})
    elif draws.selected:
        noisy = np.zeros_like(label_map)
        lesion_records = []
        for value in values:  # ascending: a higher label wins where corrupted labels overlap
            mask, records = _corrupt_mask(label_map == value, draws, value)
            noisy[mask] = value
            lesion_records += records
        if ignore_label is not None:
            noisy[label_map == ignore_label] = ignore_label
        record.update(operation=draws.operation, fraction=round(draws.fraction, 6), lesions=lesion_records)
        if draws.operation == "shift":
            record["direction"] = [round(d, 6) for d in draws.direction]
    per_label = _label_dice(noisy, label_map, values)
    record["dice"] = round(float(np.mean(list(per_label.values()))), 6) if per_label else 1.0
    if len(per_label) > 1:
        record["dice_per_label"] = {str(v): round(d, 6) for v, d in per_label.items()}
    return noisy, record


# ----------------------------------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------------------------------


def _ignore_label(dataset_json: Mapping[str, Any]) -> int | None:
    value = (dataset_json.get("labels") or {}).get("ignore")
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def _default_name(source: Path, settings: NoiseSettings) -> str:
    base = re.sub(r"^Dataset\d{3}_", "", source.name)
    return f"{base}_{settings.kind}{100 * settings.alpha:g}".replace(".", "p")


def _read_label(reader, path: Path) -> tuple[np.ndarray, dict, bool]:
    """(integer label map, the reader's properties, whether it is a 2D image) of one label file."""
    try:
        seg, properties = reader.read_seg(str(path))
    except Exception as error:  # nnU-Net's readers raise anything from OSError to RuntimeError
        raise ConversionError(f"could not read label {path}: {error}") from error
    seg = np.asarray(seg)[0]  # (1, H, W) for 2D images, (D, H, W) for volumes
    rounded = np.rint(seg)
    if not np.array_equal(rounded, seg):
        raise ConversionError(f"label {path} holds non-integer values")
    flat = seg.shape[0] == 1
    return (rounded[0] if flat else rounded).astype(np.int32), properties, flat


def _check_target(out_root: Path, dataset_id: int, folder_name: str, source: Path, overwrite: bool) -> list[Path]:
    """The folders the new dataset replaces (with overwrite); an error for a target id in use or the source's id."""
    source_id = re.match(r"Dataset(\d{3})_", source.name)
    if source_id and int(source_id[1]) == dataset_id:
        raise ConversionError(f"the new dataset needs an id other than its source's ({dataset_id}, {source.name})")
    existing = claim_dataset_id(out_root, dataset_id, folder_name, overwrite)
    if source.resolve() in [p.resolve() for p in existing]:
        raise ConversionError(f"the new dataset would replace its source {source}: choose another id")
    return existing


def add_label_noise(
    dataset: Path | str | int,
    dataset_id: int,
    alpha: float,
    kind: str = "mixed",
    seed: int = 0,
    name: str | None = None,
    radius_fraction: tuple[float, float] = DEFAULT_RADIUS_FRACTION,
    raw_root: Path | str | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> Path:
    """Writes ``DatasetNNN_<name>``: the raw dataset ``dataset`` with its training labels corrupted (module docstring).

    ``dataset``: the source folder, or its id in ``raw_root``. ``raw_root``: where an id is looked up and where the new
    dataset goes (default: ``$nnUNet_raw`` for an id, the source's parent folder for a folder). ``name`` defaults to
    ``<source name>_<kind><100 alpha>`` (e.g. ``ISIC2017_mixed50``). ``overwrite`` replaces the dataset(s) that already
    use ``dataset_id`` there. Bad arguments, a source without labelled training cases, one that already holds
    ``labelsTr_clean``, or an id in use raise ``ConversionError`` (a ``ValueError``) before anything is written; any
    later error leaves nothing behind. Returns the new folder.
    """
    settings = NoiseSettings(alpha, kind, seed, radius_fraction)
    dataset_id = check_id(dataset_id)
    source = find_dataset(dataset, raw_root).resolve()
    if raw_root is not None:  # created only when the dataset is written
        out_root = Path(raw_root).expanduser().resolve()
        if out_root.exists() and not out_root.is_dir():
            raise ConversionError(f"nnU-Net raw folder {out_root} is not a folder")
    else:
        out_root = resolve_raw_root(None) if isinstance(dataset, (int, np.integer)) else source.parent
    name = _default_name(source, settings) if name is None else name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConversionError(f"dataset name {name!r} may contain only letters, digits, '-' and '_'")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    dataset_json, cases = read_training_cases(source, "the label-noise tool")
    if not cases:
        raise ConversionError(f"{source / 'labelsTr'} holds no labelled training case: nothing to corrupt")
    if (source / CLEAN_LABELS).exists() or RECORD_KEY in dataset_json:
        raise ConversionError(
            f"{source} already has noisy labels ({CLEAN_LABELS} beside labelsTr): corrupt the clean dataset instead"
        )
    existing = _check_target(out_root, dataset_id, folder_name, source, overwrite)

    out_root.mkdir(parents=True, exist_ok=True)
    work = staging_dir(out_root, f".tmp_{folder_name}_")
    try:
        new = work / folder_name
        summary = _write_noisy_dataset(source, new, dataset_json, cases, settings)
        swap_into_place(new, out_root / folder_name, existing, work)
    except BaseException as error:
        discard_work(work)
        if isinstance(error, (OSError, shutil.Error)):
            raise ConversionError(f"could not write {out_root / folder_name}: {error}") from error
        raise
    remove(work)  # with the replaced datasets (overwrite)
    target = out_root / folder_name
    if verbose:
        print(format_summary(target, summary))
    warn_nnunet_pitfalls(target)
    return target


def _write_noisy_dataset(
    source: Path, new: Path, dataset_json: dict, cases: dict[str, list[Path]], settings: NoiseSettings
) -> dict[str, Any]:
    """The new dataset in `new` (a folder that does not exist yet); returns the summary written to dataset.json."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    def replaced(folder: str, names: list[str]) -> list[str]:  # written below instead of linked
        return ["labelsTr", "dataset.json"] if folder == str(source) else []

    shutil.copytree(source, new, copy_function=link_or_copy, ignore=replaced)
    (new / "labelsTr").mkdir()
    (new / CLEAN_LABELS).mkdir()
    first = next(iter(cases.values()))
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(first[0]), verbose=False)()
    ignore = _ignore_label(dataset_json)
    records: dict[str, Any] = {}
    for case, files in cases.items():
        label = files[-1]
        clean, properties, flat = _read_label(reader, label)
        noisy, record = corrupt_label(clean, case_draws(case, clean.ndim, settings), ignore)
        link_or_copy(str(label), str(new / CLEAN_LABELS / label.name))
        if record["operation"] is None:
            link_or_copy(str(label), str(new / "labelsTr" / label.name))
        else:
            reader.write_seg(noisy[None] if flat else noisy, str(new / "labelsTr" / label.name), properties)
        records[case] = record
    summary = _summary(source, settings, records)
    noisy_json = {**dataset_json, RECORD_KEY: summary}
    atomic_write(new / "dataset.json", lambda f: f.write(json.dumps(noisy_json, indent=4)))
    text = json.dumps({**summary, "cases": records}, indent=1)
    atomic_write(new / RECORD_FILE, lambda f: f.write(text + "\n"))
    return summary


def _summary(source: Path, settings: NoiseSettings, records: dict[str, dict]) -> dict[str, Any]:
    corrupted = [r for r in records.values() if r["operation"] is not None]
    operations: dict[str, int] = {}
    left_clean: dict[str, int] = {}
    for r in records.values():
        if r["operation"] is not None:
            operations[r["operation"]] = operations.get(r["operation"], 0) + 1
        if "left_clean" in r:
            left_clean[r["left_clean"]] = left_clean.get(r["left_clean"], 0) + 1
    return {
        "made_by": "nnunet-dale label-noise",
        "version": VERSION,
        "source": source.name,
        **settings.as_record(),
        "num_cases": len(records),
        "num_selected": sum(r["selected"] for r in records.values()),
        "num_corrupted": len(corrupted),
        "operations": operations,
        "left_clean": left_clean,
        "mean_dice": round(float(np.mean([r["dice"] for r in records.values()])), 6),
        "mean_dice_corrupted": round(float(np.mean([r["dice"] for r in corrupted])), 6) if corrupted else None,
    }


def format_summary(folder: Path, summary: Mapping[str, Any]) -> str:
    """One paragraph: what was corrupted and how much the labels changed."""
    operations = ", ".join(f"{n} {op}" for op, n in sorted(summary["operations"].items())) or "none"
    clean = "".join(f"; selected but left clean ({why}): {n}" for why, n in sorted(summary["left_clean"].items()))
    corrupted_dice = summary["mean_dice_corrupted"]
    return (
        f"wrote {folder}: {summary['num_corrupted']} of {summary['num_cases']} training labels corrupted "
        f"(alpha {summary['alpha']:g}, kind {summary['kind']}, seed {summary['seed']}; operations: {operations}"
        f"{clean}); "
        f"mean Dice(noisy, clean) {summary['mean_dice']:.3f} over all training cases"
        + (f", {corrupted_dice:.3f} over the corrupted ones" if corrupted_dice is not None else "")
    )
