"""The comparison figure: per-case scatter plots of the baseline against each method, and example rows (image,
reference, each method's contour, the fuzzy map, and DALE's omega when given) picked by the largest Dice differences.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_dale.compare.stats import LOWER_IS_BETTER, as_float, nanmean
from nnunet_dale.files import read_segmentation, supported_endings

__all__ = [
    "FIGURE_COLUMNS",
    "FIGURE_DPI",
    "LARGE_VOLUME",
    "METHOD_COLOURS",
    "PANEL_INCHES",
    "REFERENCE_COLOUR",
    "SCATTER_INCHES",
    "SCATTER_METRICS",
    "render_figure",
]

SCATTER_METRICS = ("Dice", "HD95")
FIGURE_DPI = 80
PANEL_INCHES = 1.75
SCATTER_INCHES = 2.7
LARGE_VOLUME = 16_000_000  # voxels: above this the AE&ER map of a 3D case is computed on the shown slab only
METHOD_COLOURS = ("#1f77b4", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
REFERENCE_COLOUR = "#2ca02c"
FIGURE_COLUMNS = ("image", "reference", "reference contour", "fuzzy map", "ω")  # not usable as method names


def _endings() -> list[str]:
    return supported_endings()


def _ending_of(path: Path) -> str | None:
    return next((e for e in _endings() if path.name.lower().endswith(e)), None)


def _reader(path: Path):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    ending = _ending_of(path)
    if ending is None:
        raise ValueError(f"{path}: no nnU-Net reader for this file ending")
    return determine_reader_writer_from_file_ending(ending, str(path), allow_nonmatching_filename=True, verbose=False)()


def _read_seg(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    return read_segmentation(_reader(path), path)


def _read_image(path: Path) -> np.ndarray:
    data, _ = _reader(path).read_images([str(path)])
    data = np.asarray(data, dtype=np.float32)[0]  # first channel
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    return data


def _resolve(path_text: str | None, folder: Path) -> Path | None:
    """A file named in a summary: as written (absolute or relative to the working directory), else next to it."""
    if not path_text:
        return None
    path = Path(path_text)
    for candidate in (path, folder / path, folder / path.name):
        if candidate.is_file():
            return candidate
    return None


def _pick_examples(cases: list[str], baseline_dice: np.ndarray, method_dice: np.ndarray, k: int) -> list[str]:
    """k cases with the largest Dice difference (method - baseline), alternating method-better and baseline-better;
    ties by case name. Cases without a finite difference come last."""
    diff = method_dice - baseline_dice
    finite = [i for i in range(len(cases)) if math.isfinite(diff[i])]
    best = sorted(finite, key=lambda i: (-diff[i], cases[i]))
    worst = sorted(finite, key=lambda i: (diff[i], cases[i]))
    chosen: list[int] = []
    for pair in zip(best, worst):
        for i in pair:
            if i not in chosen and len(chosen) < k:
                chosen.append(i)
    rest = [i for i in sorted(range(len(cases)), key=lambda i: cases[i]) if i not in chosen]
    chosen += rest[: k - len(chosen)]
    return [cases[i] for i in chosen]


def _slice_index(masks: Sequence[np.ndarray]) -> int:
    """Middle of the foreground extent along axis 0 (of the first non-empty mask), snapped to a foreground slice."""
    for mask in masks:
        per_slice = mask.reshape(mask.shape[0], -1).any(axis=1)
        if per_slice.any():
            z = np.flatnonzero(per_slice)
            middle = (z.min() + z.max()) / 2
            return int(z[np.argmin(np.abs(z - middle))])
    return masks[0].shape[0] // 2


def _crop_box(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Bounding box of the masks' union, enlarged by half its size (at least 8 pixels, at least 32 wide)."""
    union = np.zeros(shape, dtype=bool)
    for mask in masks:
        union |= mask
    if not union.any():
        return slice(0, shape[0]), slice(0, shape[1])
    box = []
    for axis, n in enumerate(shape):
        idx = np.flatnonzero(union.any(axis=1 - axis))
        lo, hi = int(idx.min()), int(idx.max()) + 1
        margin = max(8, (hi - lo) // 2, (32 - (hi - lo) + 1) // 2)
        box.append(slice(max(lo - margin, 0), min(hi + margin, n)))
    return box[0], box[1]


def _fuzzy_map(
    ref: np.ndarray, image: np.ndarray | None, spacing, z: int | None, split_patch: Sequence[int] | None = None
) -> tuple[np.ndarray, str]:
    """With an image: the AE&ER patch fuzziness m of the split (Eq. 3-5), in `split_patch` patches (a trainer's split
    patch; a 2D patch splits each slice of a 3D case) or else the evaluation's fuzzy-region patches; without an
    image: the evaluation's fuzzy region. Returns the map and its title, which says which patches it used."""
    import torch

    from nnunet_dale.config import default_patch_size
    from nnunet_dale.metrics import FUZZY_PATCH_BASE, reference_fuzzy_mask
    from nnunet_dale.split import fuzzy_split, score_map

    if spacing is None or len(spacing) != ref.ndim:
        spacing = (1.0,) * ref.ndim
    if image is None:
        region = reference_fuzzy_mask(ref, spacing).astype(np.float32)
        return (region if z is None else region[z]), "fuzzy region (Dice_fuzzy)"
    if split_patch is not None:  # the trainer's split
        patch = tuple(int(p) for p in split_patch)
        patch = (1,) * (ref.ndim - len(patch)) + patch
        patch = tuple(min(p, n) for p, n in zip(patch, ref.shape))
        source = "the trainer's split"
    else:
        patch = default_patch_size(spacing, ref.shape, FUZZY_PATCH_BASE)  # the evaluation's fuzzy-region patches
        source = "evaluation patches"
    size = "×".join(map(str, patch[-2:]))
    if z is not None and ref.size > LARGE_VOLUME:  # the patch slab holding slice z
        lo = (z // patch[0]) * patch[0]
        sl = slice(lo, min(lo + patch[0], ref.shape[0]))
        ref, image, z = ref[sl], image[sl], z - lo
        patch = (ref.shape[0], *patch[1:])
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    lab = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None, None]
    split = fuzzy_split(img, lab, patch)
    m = score_map(split, patch)[0].numpy()
    return (m if z is None else m[z]), f"AE&ER fuzziness m\n{size} px, {source}"


def _load_omega(omega_dir: Path | None, case: str, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str | None]:
    if omega_dir is None:
        return None, None
    path = Path(omega_dir) / f"{case}.npy"
    if not path.is_file():
        return None, None
    omega = np.load(path)
    while omega.ndim > len(shape) and omega.shape[0] == 1:
        omega = omega[0]
    if omega.shape != shape:
        return None, f"{path.name}: shape {omega.shape} does not match the reference {shape}"
    return omega.astype(np.float32), None


def _style(ax, title: str) -> None:
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _contour(ax, mask: np.ndarray, colour: str, width: float = 1.2, style: str = "solid") -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width, linestyles=style)


def _scatter(ax, comparison: dict, metric: str, examples: list[str]) -> None:
    baseline = comparison["baseline"]
    cases = comparison["cases"]
    markers = "os^vDP*X"
    lo, hi, shown = math.inf, -math.inf, 0
    methods = [m for m in comparison["methods"] if m != baseline]
    for mi, method in enumerate(methods):
        for li, label in enumerate(comparison["labels"]):
            x = np.array([as_float(v) for v in comparison["per_case"][label][baseline][metric]])
            y = np.array([as_float(v) for v in comparison["per_case"][label][method][metric]])
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            name = method if len(comparison["labels"]) == 1 else f"{method}, label {label}"
            colour = METHOD_COLOURS[(mi + 1) % len(METHOD_COLOURS)]
            ax.scatter(x[ok], y[ok], s=12, alpha=0.75, color=colour, marker=markers[li % 8], label=name, linewidths=0)
            lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
            shown += int(ok.sum())
            if mi == 0 and li == 0:
                for row, case in enumerate(examples, start=1):
                    i = cases.index(case)
                    if ok[i]:
                        ax.annotate(str(row), (x[i], y[i]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    if shown:
        pad = 0.03 * (hi - lo) if hi > lo else 0.5
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=0.8, ls="--")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.legend(fontsize=6, loc="best")
    else:
        ax.text(0.5, 0.5, "no finite pairs", ha="center", va="center", transform=ax.transAxes, fontsize=7)
    better = "below" if metric in LOWER_IS_BETTER else "above"
    ax.set_title(f"per-case {metric} (n={shown}); {better} the diagonal: method better", fontsize=7)
    ax.set_xlabel(f"{baseline} {metric}", fontsize=7)
    ax.set_ylabel(f"method {metric}", fontsize=7)
    ax.tick_params(labelsize=6)


def _load_example(case, loaded, methods, baseline, images_dir, omega_dir, notes: list[str]) -> dict:
    """Reference, predictions (first run of each method), image and omega of one example case."""
    ref_path = _resolve(loaded[baseline][0]["cases"][case].get("reference_file"), loaded[baseline][0]["folder"])
    if ref_path is None:
        notes.append(f"{case}: reference file not found; example row left blank")
        return {"case": case, "missing": True}
    ref, spacing = _read_seg(ref_path)
    preds = {}
    for method in methods:
        run = loaded[method][0]
        pred_path = _resolve(run["cases"][case].get("prediction_file"), run["folder"])
        if pred_path is None:
            notes.append(f"{case}: {method}'s prediction not found")
            preds[method] = None
            continue
        pred, _ = _read_seg(pred_path)
        preds[method] = pred if pred.shape == ref.shape else None
        if pred.shape != ref.shape:
            notes.append(f"{case}: {method}'s prediction {pred.shape} differs from the reference {ref.shape}")
    image = None
    if images_dir is not None:
        ending = _ending_of(ref_path)
        candidates = [ending] + [e for e in _endings() if e != ending]
        found = [Path(images_dir) / f"{case}_0000{e}" for e in candidates]
        path = next((f for f in found if f.is_file()), None)
        if path is None:
            notes.append(f"{case}: no image {case}_0000.* in {images_dir}")
        else:
            image = _read_image(path)
            if image.shape != ref.shape:
                notes.append(f"{case}: image {image.shape} differs from the reference {ref.shape}")
                image = None
    omega, problem = _load_omega(omega_dir, case, ref.shape)
    if problem:
        notes.append(problem)
    return {"case": case, "ref": ref, "spacing": spacing, "preds": preds, "image": image, "omega": omega}


def render_figure(
    comparison: dict, loaded, images_dir, omega_dir, num_examples: int, split_patch: Sequence[int] | None = None
) -> tuple[bytes, dict]:
    from matplotlib.figure import Figure

    baseline = comparison["baseline"]
    methods = list(comparison["methods"])
    others = [m for m in methods if m != baseline]
    cases = comparison["cases"]
    notes: list[str] = []

    scatter_metrics = [m for m in SCATTER_METRICS if m in comparison["metrics"]] or comparison["metrics"][:2]
    # examples by the Dice difference of the first compared method (mean over the compared classes)
    choose_by = "Dice" if "Dice" in comparison["metrics"] else comparison["metrics"][0]
    sign = -1.0 if choose_by in LOWER_IS_BETTER else 1.0

    def per_case_mean(method: str) -> np.ndarray:
        values = [[as_float(v) for v in comparison["per_case"][lb][method][choose_by]] for lb in comparison["labels"]]
        return nanmean(np.array(values, dtype=np.float64), axis=0)

    b_val, m_val = per_case_mean(baseline), per_case_mean(others[0])
    examples = _pick_examples(cases, sign * b_val, sign * m_val, min(max(num_examples, 0), len(cases)))

    # load the example rows first, to know which columns exist
    rows = []
    have_image = images_dir is not None
    for case in examples:
        try:
            rows.append(_load_example(case, loaded, methods, baseline, images_dir, omega_dir, notes))
        except (OSError, ValueError, RuntimeError) as e:  # a figure problem must not lose the statistics
            notes.append(f"{case}: could not be drawn ({type(e).__name__}: {e})")
            rows.append({"case": case, "missing": True})
    with_omega = any(r.get("omega") is not None for r in rows)
    columns = ["image" if have_image else "reference", "reference contour", *methods, "fuzzy map"]
    if with_omega:
        columns.append("ω")

    n_cols = len(columns)
    width = max(PANEL_INCHES * n_cols, 3.3 * len(scatter_metrics))
    # fixed margins in inches: title above the scatter plots, room for their x labels and the first row's titles
    top_margin, gap, bottom_margin = 0.3, 0.75, 0.1
    height = top_margin + SCATTER_INCHES + (gap + PANEL_INCHES * len(rows) if rows else 0.45) + bottom_margin
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    if rows:
        ratios = [SCATTER_INCHES, gap, PANEL_INCHES * len(rows)]
        outer = fig.add_gridspec(3, 1, height_ratios=ratios, hspace=0)
    else:
        outer = fig.add_gridspec(2, 1, height_ratios=[SCATTER_INCHES, 0.45], hspace=0)
    top = outer[0].subgridspec(1, len(scatter_metrics), wspace=0.35)
    for i, metric in enumerate(scatter_metrics):
        _scatter(fig.add_subplot(top[0, i]), comparison, metric, examples)
    slices: dict[str, int | None] = {}
    if rows:
        grid = outer[2].subgridspec(len(rows), n_cols, wspace=0.05, hspace=0.2)
        for r, row in enumerate(rows):
            axes = [fig.add_subplot(grid[r, c]) for c in range(n_cols)]
            if row.get("missing"):
                for ax in axes:
                    _style(ax, "")
                text = f"{row['case']}: files not found"
                axes[0].text(0.5, 0.5, text, ha="center", va="center", fontsize=6, transform=axes[0].transAxes)
                continue
            slices[row["case"]] = _draw_row(axes, columns, row, methods, comparison, r + 1, split_patch)
    fig.subplots_adjust(
        left=0.55 / width, right=1 - 0.15 / width, top=1 - top_margin / height, bottom=bottom_margin / height
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    size_px = [int(round(height * FIGURE_DPI)), int(round(width * FIGURE_DPI))]
    info = {
        "examples": examples,
        "examples_chosen_by": choose_by,
        "columns": columns,
        "scatter_metrics": scatter_metrics,
        "size_px": size_px,
        "slices": slices,
        "split_patch": None if split_patch is None else [int(p) for p in split_patch],
        "notes": notes,
    }
    return buffer.getvalue(), info


def _draw_row(axes, columns, row, methods, comparison, number: int, split_patch=None) -> int | None:
    """One example row; returns the shown slice index (axis 0) of a 3D case, None for 2D."""
    ref3 = row["ref"]
    labels = [int(lb) for lb in comparison["labels"] if lb.lstrip("-").isdigit()]
    fg = np.isin(ref3, labels) if labels else ref3 > 0
    pred_fg = {m: (None if p is None else (np.isin(p, labels) if labels else p > 0)) for m, p in row["preds"].items()}
    z = None
    if ref3.ndim == 3:
        z = _slice_index([fg, *[p for p in pred_fg.values() if p is not None]])

    def take(a: np.ndarray) -> np.ndarray:
        return a if z is None else a[z]

    ref2 = take(fg)
    preds2 = {m: (None if p is None else take(p)) for m, p in pred_fg.items()}
    box = _crop_box([ref2, *[p for p in preds2.values() if p is not None]], ref2.shape)

    def crop(a: np.ndarray) -> np.ndarray:
        return a[box]

    image = row["image"]
    if image is not None:
        background = take(image)
        lo, hi = np.percentile(background, [1, 99])
        background = crop(np.clip((background - lo) / (hi - lo if hi > lo else 1.0), 0, 1))
    else:
        background = crop(ref2).astype(np.float32) * 0.5
    case = row["case"]
    where = f" z={z}" if z is not None else ""
    dice = {
        m: as_float(comparison["per_case"][comparison["labels"][0]][m]["Dice"][comparison["cases"].index(case)])
        for m in methods
        if "Dice" in comparison["metrics"]
    }
    for ax, column in zip(axes, columns):
        if column in ("image", "reference"):
            ax.imshow(background, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            _style(ax, f"{number}. {case}{where}")
        elif column == "reference contour":
            ax.imshow(background, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            _contour(ax, crop(ref2), REFERENCE_COLOUR)
            _style(ax, "reference")
        elif column in row["preds"]:
            ax.imshow(background, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            _contour(ax, crop(ref2), REFERENCE_COLOUR, 0.8, "dotted")
            colour = METHOD_COLOURS[methods.index(column) % len(METHOD_COLOURS)]
            pred = preds2[column]
            if pred is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            else:
                _contour(ax, crop(pred), colour)
            title = column + (f" (Dice {dice[column]:.2f})" if column in dice and math.isfinite(dice[column]) else "")
            _style(ax, title)
        elif column == "fuzzy map":
            fuzzy, what = _fuzzy_map(ref3, row["image"], row["spacing"], z, split_patch)
            heat = ax.imshow(crop(fuzzy), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            _contour(ax, crop(ref2), REFERENCE_COLOUR, 0.8)
            _style(ax, what)
        elif column == "ω":
            omega = row["omega"]
            if omega is None:
                ax.text(0.5, 0.5, "no ω", ha="center", va="center", fontsize=6, transform=ax.transAxes)
                _style(ax, "ω")
            else:
                omega2 = crop(take(omega))
                heat = ax.imshow(omega2, cmap="viridis", interpolation="nearest")
                ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
                _contour(ax, crop(ref2), "white", 0.8)
                _style(ax, f"ω [{omega2.min():.2f}, {omega2.max():.2f}]")
    return z
