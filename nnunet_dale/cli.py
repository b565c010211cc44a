"""The `nnunet-dale` command line: trainers-path, make-benchmark, evaluate, compare, convert, label-noise, demo, audit,
omega-maps."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from nnunet_dale import __version__, trainers_path
from nnunet_dale.config import DALEConfigError
from nnunet_dale.demo import DemoError

__all__ = ["USER_ERRORS", "build_parser", "main"]

# errors a user can cause by what they typed or pointed at: reported in one line, without a traceback
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, DALEConfigError, DemoError)


def _raw_root(value: str | None) -> Path:
    root = value or os.environ.get("nnUNet_raw")
    if not root:
        raise ValueError("no output folder: pass --raw or set the nnUNet_raw environment variable")
    return Path(root)


def _cmd_trainers_path(args: argparse.Namespace) -> int:
    print(trainers_path())
    return 0


def _cmd_make_benchmark(args: argparse.Namespace) -> int:
    from nnunet_dale.benchmark_data import make_benchmark, plot_noise_examples
    from nnunet_dale.files import check_output_folder

    if args.figure:  # before the dataset is written
        check_output_folder(Path(args.figure).parent, "the folder of --figure")
        if Path(args.figure).is_dir():
            raise ValueError(f"--figure {args.figure} is a folder; give the PNG file to write")
    folder = make_benchmark(
        _raw_root(args.raw),
        dataset_id=args.id,
        name=args.name,
        num_train=args.train,
        num_test=args.test,
        size=args.size,
        seed=args.seed,
        noise=args.noise,
        dims=args.dims,
        overwrite=args.overwrite,
        test_lesion_scale=args.test_lesion_scale,
    )
    print(folder)
    print(json.dumps(json.loads((folder / "cases.json").read_text())["summary"], indent=1))
    if args.figure:
        print(plot_noise_examples(folder, Path(args.figure)))
    return 0


def _evaluate_folders_of(args: argparse.Namespace) -> tuple[Path, Path]:
    """PRED and REF from the positionals or -pred/-ref; mixing them, or giving one twice, is an error."""
    named = args.pred_flag is not None or args.ref_flag is not None
    positional = [d for d in (args.pred_dir, args.ref_dir) if d is not None]
    if named and positional:
        raise ValueError("give PRED REF as positionals or as -pred/-ref, not both")
    pred, ref = (args.pred_flag, args.ref_flag) if named else (args.pred_dir, args.ref_dir)
    if pred is None or ref is None:
        raise ValueError("both folders are needed: PRED REF, or -pred and -ref")
    return Path(pred), Path(ref)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nnunet_dale.evaluation import evaluate_folders

    pred_dir, ref_dir = _evaluate_folders_of(args)
    summary = evaluate_folders(
        pred_dir,
        ref_dir,
        Path(args.output),
        labels=args.labels,
        file_ending=args.file_ending,
        fuzzy=not args.no_fuzzy,
        num_processes=args.np,
    )
    print(json.dumps(summary["mean"], indent=1))
    print(f"wrote {Path(args.output) / 'summary.json'} and per_case.csv")
    return 0


def _parse_run(value: str) -> tuple[str, list[Path]]:
    name, sep, dirs = value.partition("=")
    folders = [Path(d) for d in dirs.split(",") if d]
    if not sep or not name or not folders:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR[,DIR...], got {value!r}")
    return name, folders


def _cmd_compare(args: argparse.Namespace) -> int:
    from nnunet_dale.compare import DEFAULT_METRICS, compare, format_table

    runs: dict[str, list[Path]] = {}
    for name, folders in args.runs:
        if name in runs:
            raise ValueError(f"method {name!r} given twice (list its folders comma-separated)")
        runs[name] = folders
    for flag, folder in (("--images", args.images), ("--omega", args.omega)):
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder} is not a folder")
    unknown = sorted(set(args.metrics or ()) - set(DEFAULT_METRICS))
    if unknown:
        raise ValueError(f"--metrics: unknown {unknown}; known: {' '.join(DEFAULT_METRICS)}")
    result = compare(
        runs,
        Path(args.output),
        baseline=args.baseline,
        images_dir=Path(args.images) if args.images else None,
        omega_dir=Path(args.omega) if args.omega else None,
        num_examples=args.examples,
        metrics=args.metrics or DEFAULT_METRICS,
        label=args.label,
    )
    print(format_table(result), end="")
    print(f"wrote {Path(args.output) / 'comparison.md'}, comparison.json and comparison.png")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from nnunet_dale.converters import add_test_set, convert

    raw = Path(args.raw) if args.raw else None  # None: $nnUNet_raw
    if (args.hold_out_seed is not None or args.hold_out_by != "random") and args.hold_out is None:
        raise ValueError("--hold-out-seed and --hold-out-by only go with --hold-out")
    if args.add_test_set and args.hold_out is not None:
        raise ValueError("--hold-out splits a converted dataset's training cases; it cannot go with --add-test-set")
    if args.add_test_set:
        folder = add_test_set(
            args.dataset, Path(args.source), args.id, raw_root=raw, max_size=args.max_size, set_name=args.name,
            overwrite=args.overwrite,
        )  # fmt: skip
    else:
        folder = convert(
            args.dataset, Path(args.source), args.id, raw_root=raw, max_size=args.max_size, dataset_name=args.name,
            overwrite=args.overwrite, hold_out=args.hold_out,
            hold_out_seed=args.hold_out_seed or 0, hold_out_by=args.hold_out_by,
        )  # fmt: skip
    print(folder)
    return 0


def _cmd_label_noise(args: argparse.Namespace) -> int:
    from nnunet_dale.label_noise import add_label_noise

    add_label_noise(
        int(args.dataset) if args.dataset.isdigit() else Path(args.dataset), args.id, args.alpha, kind=args.kind,
        seed=args.seed, name=args.name, radius_fraction=tuple(args.radius_fraction), raw_root=args.raw,
        overwrite=args.overwrite,
    )  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_dale.demo import DemoSettings, run_demo

    settings = DemoSettings(seed=args.seed)
    if args.quick:  # a few minutes: tiny data, the 2-epoch schedules and default nnU-Net's 5 epochs at DALE's time
        settings = DemoSettings(
            num_train=10, num_test=4, seed=args.seed, baseline="nnUNetTrainer_quick", dale="nnUNetTrainerDALE_quick",
            same_time="nnUNetTrainer_quickSameTime",
        )  # fmt: skip
    run_demo(Path(args.output), settings)
    return 0


def _omega_settings(args: argparse.Namespace, **summary):
    """The audit settings of the omega arguments (`_add_omega_arguments`) plus `summary` ones; sets --threads."""
    from nnunet_dale.audit import AuditSettings

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return AuditSettings(
        passes=args.passes, shadow_lr=args.shadow_lr, reference=args.reference, context=args.context, **summary
    )


def _progress(verb: str):
    return lambda n, total, case: print(f"{verb} {n}/{total}: {case}", file=sys.stderr)


def _cmd_audit(args: argparse.Namespace) -> int:
    from nnunet_dale.audit import audit, audit_quality, check_clean_labels, clean_labels_folder
    from nnunet_dale.files import atomic_write, json_safe

    raw = check_clean_labels(args.raw) if args.raw else None  # before the audit runs, not after
    settings = _omega_settings(args, band=args.band, threshold=args.threshold, top=args.top)
    csv_path = audit(
        args.result_folder, args.output, fold=args.fold, settings=settings, checkpoint=args.checkpoint,
        device=args.device, progress=_progress("audited"),
    )  # fmt: skip
    print(f"wrote {csv_path}, audit.json and top/")
    raw = raw or clean_labels_folder(csv_path.parent)
    if raw is not None:
        quality = audit_quality(csv_path, raw)
        text = json.dumps(json_safe(quality), indent=1)
        atomic_write(csv_path.parent / "quality.json", lambda f: f.write(text + "\n"))
        print(f"audit quality against the clean labels in {raw}:")
        print(text)
    return 0


def _cmd_omega_maps(args: argparse.Namespace) -> int:
    from nnunet_dale.omega_maps import omega_maps

    written = omega_maps(
        args.result_folder, args.images, args.labels, args.output, fold=args.fold, settings=_omega_settings(args),
        cases=args.cases, checkpoint=args.checkpoint, device=args.device, progress=_progress("omega map"),
    )  # fmt: skip
    print(f"wrote {len(written)} omega maps to {args.output} (nnunet-dale compare ... --omega {args.output})")
    return 0


def _add_omega_arguments(p: argparse.ArgumentParser) -> None:
    """The model and omega arguments shared by `audit` and `omega-maps`."""
    p.add_argument("result_folder", help=".../<Trainer>__<plans>__2d/fold_X (or its parent with -f)")
    p.add_argument("-f", "--fold", help="fold, when RESULT_FOLDER is the parent of fold_X")
    p.add_argument("--passes", type=int, default=8, help="flip/rotation passes averaged per pixel (default 8)")
    p.add_argument("--shadow-lr", type=float, default=1e-2, help="learning rate of the shadow step (default 1e-2)")
    p.add_argument(
        "--reference", choices=("others", "self"), default="others",
        help="non-fuzzy direction from (other) training cases (default) or from the case itself",
    )  # fmt: skip
    p.add_argument("--context", type=int, default=4, help="training cases in the reference (default 4)")
    p.add_argument("--checkpoint", help="checkpoint file name (default: checkpoint_final.pth, else _best)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def build_parser() -> argparse.ArgumentParser:
    from nnunet_dale.converters import CONVERTERS

    parser = argparse.ArgumentParser(
        prog="nnunet-dale", description="DALE (Minding Fuzzy Regions, CVPR 2025) for nnU-Net v2."
    )
    parser.add_argument("--version", action="version", version=f"nnunet-dale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("trainers-path", help="print the folder to set as nnUNet_extTrainer")
    p.set_defaults(func=_cmd_trainers_path)

    p = sub.add_parser("make-benchmark", help="write the built-in noisy-label lesion dataset (nnU-Net raw format)")
    p.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("-d", "--id", type=int, default=990, help="dataset id (default 990)")
    p.add_argument("--name", default="DALEBench")
    p.add_argument("--train", type=int, default=40, help="training cases (noisy labels)")
    p.add_argument("--test", type=int, default=20, help="test cases (clean labels in labelsTs)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (voxels in 3D)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=1.0, help="annotator noise strength (0 = clean labels)")
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument(
        "--test-lesion-scale", type=float, default=1.0, metavar="S",
        help="size-shift test: scale the test lesions' semi-axes by S (training cases unchanged; default 1)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--figure", help="also write a PNG of example cases (image, clean, noisy label, difference)")
    p.set_defaults(func=_cmd_make_benchmark)

    p = sub.add_parser(
        "evaluate",
        help="Dice, IoU, HD95, ASD and fuzzy-region Dice of a prediction folder",
        description="Positional order PRED REF is the reverse of nnUNetv2_evaluate_folder's GT PRED: name them with "
        "-pred/-ref to be sure.",
    )
    p.add_argument("pred_dir", nargs="?", help="folder of predicted segmentations (or -pred)")
    p.add_argument("ref_dir", nargs="?", help="folder of reference segmentations, same file names (or -ref)")
    p.add_argument("-pred", dest="pred_flag", metavar="PRED", help="predictions, named as nnU-Net names them")
    p.add_argument("-ref", "-gt", dest="ref_flag", metavar="REF", help="references (nnU-Net's GT folder)")
    p.add_argument("-o", "--output", required=True, help="folder for summary.json and per_case.csv")
    p.add_argument("--labels", type=int, nargs="+", help="labels to evaluate (default: all in the references)")
    p.add_argument("--file-ending", help="e.g. .png or .nii.gz (default: guessed)")
    p.add_argument("--no-fuzzy", action="store_true", help="skip the fuzzy-region Dice")
    p.add_argument("-np", type=int, default=1, help="processes")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="compare evaluated methods: mean ± sd, paired t-tests, per-case figure")
    p.add_argument(
        "runs",
        nargs="+",
        type=_parse_run,
        metavar="NAME=DIR[,DIR...]",
        help="a method and its evaluation folders (one per run/seed); the first method is the baseline",
    )
    p.add_argument("-o", "--output", required=True, help="folder for comparison.md/.json/.png")
    p.add_argument("--baseline", help="baseline method (default: the first)")
    p.add_argument("--images", help="images folder (<case>_0000.png/.nii.gz) for the overlays")
    p.add_argument("--omega", help="folder of per-case omega maps <case>.npy")
    p.add_argument("--examples", type=int, default=4, help="example cases in the figure")
    p.add_argument("--metrics", nargs="+", help="default: Dice IoU HD95 ASD Dice_fuzzy")
    p.add_argument("--label", help="one class label (default: every foreground class)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("convert", help="public dataset (official layout or .zip) -> nnU-Net raw dataset")
    p.add_argument("dataset", choices=list(CONVERTERS))
    p.add_argument("source", help="the dataset's folder as downloaded (or its .zip)")
    p.add_argument("-d", "--id", type=int, required=True, help="nnU-Net dataset id")
    p.add_argument("--max-size", type=int, help="downsample: longer side at most PX")
    p.add_argument("--name", help="dataset name (default e.g. ISIC2017); with --add-test-set: the test set name")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--add-test-set", action="store_true", help="add as imagesTs_<name> to existing dataset --id")
    p.add_argument(
        "--hold-out", type=float, metavar="F",
        help="move this fraction of the training cases to imagesTs/labelsTs (datasets without a test split)",
    )  # fmt: skip
    p.add_argument("--hold-out-seed", type=int, help="seed of the hold-out's random choice (default 0)")
    p.add_argument(
        "--hold-out-by", choices=("random", "largest"), default="random",
        help="random: seeded, stratified by empty mask (default); largest: hold out the largest lesions (size shift)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "label-noise", help="copy a raw dataset with a known share of its training labels corrupted (label-noise.md)"
    )
    p.add_argument("dataset", help="the source raw dataset: its folder, or its id in --raw / $nnUNet_raw")
    p.add_argument("-d", "--id", type=int, required=True, help="id of the new dataset")
    p.add_argument("--name", help="name of the new dataset (default <source>_<kind><100 alpha>, e.g. ISIC2017_mixed50)")
    p.add_argument("--alpha", type=float, required=True, help="probability that a training case is corrupted, 0-1")
    p.add_argument(
        "--kind", default="mixed",
        help="mixed: dilate, erode or shift, equally likely (default); biased: dilate; eroded: erode; missed: drop "
        "one lesion of a multi-lesion mask",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the per-case draws (default 0)")
    p.add_argument(
        "--radius-fraction", type=float, nargs=2, default=(0.1, 0.3), metavar=("LO", "HI"),
        help="error size: a fraction U(LO, HI) of each lesion's equivalent radius (default 0.1 0.3)",
    )  # fmt: skip
    p.add_argument(
        "--raw", help="where an id is looked up and the new dataset goes (default: $nnUNet_raw for an id, else the "
        "source's parent folder)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace the dataset that already uses --id")
    p.set_defaults(func=_cmd_label_noise)

    p = sub.add_parser(
        "demo", help="built-in benchmark end to end: default nnU-Net, DALE, and default nnU-Net given DALE's wall time "
        "(2.5 x the epochs); about 14 min on 2 cores",
    )  # fmt: skip
    p.add_argument("-o", "--output", default="dale_demo", help="output folder (default ./dale_demo); reused if present")
    p.add_argument("--seed", type=int, default=0, help="benchmark data seed")
    p.add_argument(
        "--quick", action="store_true", help="tiny data, 2-epoch schedules and 5 epochs at DALE's time (a few minutes)"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("audit", help="rank the training labels of a trained 2d model by DALE's omega (docs/audit.md)")
    _add_omega_arguments(p)
    p.add_argument("-o", "--output", help="output folder (default: RESULT_FOLDER's fold folder/label_audit)")
    p.add_argument("--top", type=int, default=10, help="overlay PNGs of the K top-scored cases (default 10)")
    p.add_argument("--band", type=int, default=3, help="half-width of the boundary band in pixels (default 3)")
    p.add_argument("--threshold", type=float, default=0.5, help="noisy share that flags a pixel (default 0.5)")
    p.add_argument("--raw", help="raw dataset folder with labelsTr_clean/ or cases.json, to measure the audit")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("omega-maps", help="per-pixel omega of test cases against their labels, for compare --omega")
    _add_omega_arguments(p)
    p.add_argument("-i", "--images", required=True, help="raw test images CASE_0000<ending>, ...")
    p.add_argument("-r", "--labels", required=True, help="reference labels CASE<ending>")
    p.add_argument("-o", "--output", required=True, help="folder for the maps <case>.npy")
    p.add_argument("--cases", nargs="+", help="only these cases (default: every image in --images)")
    p.set_defaults(func=_cmd_omega_maps)
    return parser


def _message(error: Exception) -> str:
    """A user error in words: Python's own OSError text (``[Errno 20] Not a directory: 'a/b'``) becomes the path and
    what is wrong with it."""
    if not isinstance(error, OSError) or error.filename is None or not str(error).startswith("[Errno"):
        return str(error)
    from nnunet_dale.files import blocking_file

    blocker = blocking_file(Path(error.filename))
    if isinstance(error, NotADirectoryError) and blocker is not None:
        return f"{error.filename}: {blocker} is a file, not a folder"
    return f"{error.filename}: {error.strerror}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"nnunet-dale {args.command}"
    with warnings.catch_warnings():  # a warning is one line, like an error
        warnings.showwarning = lambda message, *_: print(f"{prefix}: warning: {message}", file=sys.stderr)
        try:
            return args.func(args)
        except USER_ERRORS as e:
            print(f"nnunet-dale {args.command}: error: {_message(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"nnunet-dale {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
