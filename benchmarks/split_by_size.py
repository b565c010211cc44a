"""Where the shipped split puts a lesion, by lesion size (size-shift hypothesis H4 of docs/study-log.md).

    python -m benchmarks.split_by_size RAW_DATASET [RAW_DATASET ...] [--results docs/study-log.md]
    python -m benchmarks.split_by_size RAW_DATASET --omega OMEGA_DIR --key split-by-size-omega   # with omega

For every case of each 2D raw dataset (imagesTr/labelsTr and imagesTs/labelsTs, PNG), the AE&ER split of the
shipped trainer (`nnunet_dale.split.fuzzy_split` with `config.SHIPPED`'s options and split patch: the network patch,
64 px by default, over `split_patches` per side) is computed on the image (z-scored per channel, as nnU-Net
normalises natural images) and its label. Per case: the lesion share of the image, the foreground share of the
non-fuzzy weight (Σ M^n·fg / Σ fg, what the shipped trainer logs as `dale_nonfuzzy_fg_share`), the mean fuzzy weight
on foreground and on background; with `--omega` (a folder of `<case>.npy` maps written by `nnunet-dale omega-maps`
for the dataset's training and test cases) also the mean omega over the fuzzy foreground (Σ ω·M^f·fg / Σ M^f·fg)
and the fuzzy background. Cases are binned by lesion share (`compare.size_bins.SIZE_EDGES`). Writes
`docs/data/split_by_size.json` and the section `<!-- split-by-size -->` of --results. No training: seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.report import write_section
from nnunet_dale.compare.size_bins import SIZE_EDGES
from nnunet_dale.config import SHIPPED, DALEConfig, resolve_patch_size, split_options
from nnunet_dale.files import atomic_write
from nnunet_dale.split import fuzzy_split

REPO = Path(__file__).resolve().parents[1]
SPLITS = (("imagesTr", "labelsTr", "train"), ("imagesTs", "labelsTs", "test"))


def read_case(image_file: Path, label_file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, H, W) image z-scored per channel and (1, 1, H, W) integer label."""
    with Image.open(image_file) as img:
        image = np.asarray(img, dtype=np.float64)
    image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    image = (image - image.mean((1, 2), keepdims=True)) / image.std((1, 2), keepdims=True).clip(1e-8)
    with Image.open(label_file) as lab:
        label = np.asarray(lab).astype(np.int64)
    return torch.from_numpy(image)[None].float(), torch.from_numpy(label)[None, None]


def case_statistics(
    image: torch.Tensor, label: torch.Tensor, patch: tuple[int, ...], config: DALEConfig, omega: np.ndarray | None
) -> dict:
    """Lesion share, foreground share of the non-fuzzy weight, mean fuzzy weight on foreground and background, and
    (given an omega map) the fuzzy-weighted mean omega on foreground and background."""
    split = fuzzy_split(image, label, patch, **split_options(config))
    fg = (label > 0).float()
    bg = 1 - fg
    n_fg = float(fg.sum())
    stats = {
        "share": n_fg / fg.numel(),
        "nonfuzzy_fg_share": float((split.nonfuzzy * fg).sum()) / n_fg if n_fg else None,
        "fuzzy_fg": float((split.fuzzy * fg).sum()) / n_fg if n_fg else None,
        "fuzzy_bg": float((split.fuzzy * bg).sum() / bg.sum().clamp_min(1)),
    }
    if omega is not None:
        w = torch.from_numpy(omega.astype(np.float32)).reshape(fg.shape)
        stats["omega_fuzzy_fg"] = float((w * split.fuzzy * fg).sum() / (split.fuzzy * fg).sum()) if n_fg else None
        stats["omega_fuzzy_bg"] = float((w * split.fuzzy * bg).sum() / (split.fuzzy * bg).sum().clamp_min(1e-8))
    return stats


def dataset_statistics(folder: Path, network_patch: int, config: DALEConfig, omega: Path | None = None) -> list[dict]:
    patch = resolve_patch_size(config, (network_patch, network_patch), (1.0, 1.0))
    records = []
    for images, labels, part in SPLITS:
        for label_file in sorted((folder / labels).glob("*.png")):
            case = label_file.name[: -len(".png")]
            image, label = read_case(folder / images / f"{case}_0000.png", label_file)
            omega_map = np.load(omega / f"{case}.npy") if omega is not None else None
            stats = case_statistics(image, label, patch, config, omega_map)
            records.append({"dataset": folder.name, "part": part, "case": case, **stats})
    return records


def binned_table(records: list[dict]) -> str:
    """Markdown: per dataset, part and lesion-share bin, the cases and the means of the per-case statistics."""
    lines = [
        "| dataset | part | lesion share | cases | non-fuzzy share of foreground | fuzzy weight on foreground "
        "| fuzzy weight on background |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    columns = ["nonfuzzy_fg_share", "fuzzy_fg", "fuzzy_bg"]
    if all("omega_fuzzy_fg" in r for r in records):
        columns += ["omega_fuzzy_fg", "omega_fuzzy_bg"]
        lines[0] += " mean ω, fuzzy foreground | mean ω, fuzzy background |"
        lines[1] += " --- | --- |"
    keys = sorted({(r["dataset"], r["part"]) for r in records}, key=lambda k: (k[0], k[1] != "train"))
    for dataset, part in keys:
        for lo, hi in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:]):
            rows = [r for r in records if (r["dataset"], r["part"]) == (dataset, part) and lo < r["share"] <= hi]
            if not rows:
                continue
            means = [statistics.fmean(r[k] for r in rows) for k in columns]
            lines.append(
                f"| {dataset} | {part} | {100 * lo:g}–{100 * hi:g} % | {len(rows)} | "
                + " | ".join(f"{m:.3f}" for m in means)
                + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path, help="2D raw dataset folders with imagesTs/labelsTs")
    parser.add_argument("--network-patch", type=int, default=64, help="the plan's patch side in px (default 64)")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "study-log.md")
    parser.add_argument("--omega", type=Path, help="folder of omega maps <case>.npy (one dataset only)")
    parser.add_argument("--key", default="split-by-size", help="section key and data file name")
    parser.add_argument("--data", type=Path, help="the JSON data file (default docs/data/<key>.json)")
    args = parser.parse_args(argv)
    if args.omega is not None and len(args.datasets) != 1:
        parser.error("--omega goes with one dataset")
    args.data = args.data or REPO / "docs" / "data" / f"{args.key.replace('-', '_')}.json"
    for folder in args.datasets:
        if not (folder / "labelsTs").is_dir():
            parser.error(f"{folder} is not a raw dataset with a test split (imagesTs/labelsTs)")
    records = [r for f in args.datasets for r in dataset_statistics(f, args.network_patch, SHIPPED, args.omega)]
    args.data.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.data, lambda f: f.write(json.dumps(records, indent=1) + "\n"))
    command = "python -m benchmarks.split_by_size " + " ".join(
        Path(a).name if Path(a).is_dir() else a for a in sys.argv[1:]
    )
    text = "\n".join(
        [
            "## The shipped split by lesion size (H4)",
            "",
            f"Command: `{command}`. The shipped split (split patch = network patch {args.network_patch} px / "
            f"{SHIPPED.split_patches} per side, tau {SHIPPED.tau}) on every training and test case; data "
            f"`docs/data/{args.data.name}`. Means over the cases of each lesion-share bin.",
            "",
            binned_table(records),
        ]
    )
    write_section(args.results, args.key, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
