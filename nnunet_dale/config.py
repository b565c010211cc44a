"""DALE hyper-parameters: the shipped defaults, the paper's literal reading as changes to them, overrides from a JSON
file or environment variables, validation.

Precedence (later wins): the trainer class's defaults, the JSON file named by ``NNUNET_DALE_CONFIG``, single
variables ``NNUNET_DALE_<FIELD>`` (e.g. ``NNUNET_DALE_TAU=0.8``, ``NNUNET_DALE_PATCH_SIZE=8,16,16``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nnunet_dale.files import short_repr

ENV_FILE = "NNUNET_DALE_CONFIG"
ENV_PREFIX = "NNUNET_DALE_"
ALLOW_CONFIG_CHANGE = "NNUNET_DALE_ALLOW_CONFIG_CHANGE"  # =1: resume or overwrite with changed settings
CONTROL_VARIABLES = (ENV_FILE, ALLOW_CONFIG_CHANGE)  # NNUNET_DALE_* that are not hyper-parameters
FEATURE_SITES = ("head", "bottleneck")
LW_SCALES = ("none", "trace")
OMEGA_MODES = ("exact", "fast", "first_order", "first_order_jvp", "stale")
FUSED_OMEGA_MODES = ("first_order", "first_order_jvp", "stale")  # omega taken inside the single update

__all__ = [
    "ALLOW_CONFIG_CHANGE",
    "CONTROL_VARIABLES",
    "ENV_FILE",
    "ENV_PREFIX",
    "FEATURE_SITES",
    "FUSED_OMEGA_MODES",
    "LW_SCALES",
    "OMEGA_MODES",
    "PAPER",
    "PAPER_CHANGES",
    "RETIRED",
    "SHIPPED",
    "DALEConfig",
    "DALEConfigError",
    "default_patch_size",
    "load_config",
    "patches_per_side",
    "read_record",
    "resolve_patch_size",
    "split_options",
]


class DALEConfigError(ValueError):
    """A DALE hyper-parameter is invalid; the message names it and the accepted values."""


@dataclass(frozen=True)
class DALEConfig:
    """DALE's hyper-parameters. The defaults are what nnUNetTrainerDALE ships (`SHIPPED`): the paper's (Sec. 4.1) and,
    where the validity study departed from its literal reading, the study's choice; `PAPER_CHANGES` restores the
    literal reading (`PAPER`, nnUNetTrainerDALE_paper)."""

    tau: float = 0.9  # soft threshold of Eq. 6, in (0, 1]
    alpha: float = 0.05  # weight of L_W in Eq. 15, >= 0
    lookahead_steps: int = 1  # K of Algorithm 1, >= 1
    omega_lr: float = 0.1  # Adam learning rate of omega (the paper's "omega = 0.1")
    patch_size: tuple[int, ...] | None = None  # h x w (x d) of Eq. 3-4 (with split_patches 0); None: 16 per axis
    entropy_bins: int = 32  # histogram bins of Eq. 3
    use_entropy: bool = True  # AE criterion (Table 4 ablation)
    use_edges: bool = True  # ER criterion (Table 4 ablation)
    use_omega: bool = True  # learn omega (Eq. 8-11); off: omega = 1
    use_alignment: bool = True  # L_W (Eq. 12-14); off: alpha is ignored
    omega_mode: str = "exact"  # "exact": Eq. 8-11 with the exact hypergradient; the others: first-order (method.md)
    omega_every: int = 1  # omega is learned on every k-th iteration; the others train at omega = 1 (as use_omega off)
    feature_site: str = "head"  # "head": input of the final segmentation layer; "bottleneck": encoder output
    cov_perturbation: float = 0.01  # scale of the random eps of Eq. 13, relative to the mean variance
    ridge: float = 1e-4  # added to covariance diagonals before matrix square roots
    min_class_mass: float = 8.0  # a class needs this much voxel weight in both regions to enter L_W
    # --- departures from the literal reading (docs/method.md, "What the shipped trainer changes"): the shipped values;
    # --- PAPER_CHANGES holds the paper's. Changing another default of this class: add the paper's value there.
    split_patches: int = 16  # > 0: the split patch is the network patch / split_patches per axis; 0: patch_size rules
    lw_scale: str = "trace"  # "trace": each class's W^2 divided by the trace of its target covariance; "none"
    min_class_mass_per_dim: float = 4.0  # a class also needs this many times the feature dimension in weight
    target_momentum: float = 0.9  # > 0: the target Gaussians are a running (EMA) estimate over iterations
    omega_normalise: bool = True  # hypergradient centred within each class, divided by its RMS, before Adam
    clean_threshold: float = 0.05  # clean: omega rose by more than this; noisy: fell by more than this
    single_update: bool = True  # one optimiser update per iteration on (L_n + L_f) / 2; False: Algorithm 1's two steps
    mask_input: bool = False  # False: the passes see the real image, masks as weights only; True: masked (Eq. 7)
    warmup_fraction: float = 0.1  # the first share of epochs are plain nnU-Net steps

    def __post_init__(self):
        check = _Checker(self)
        check(0 < self.tau <= 1, "tau", "a number in (0, 1]")
        check(0 <= self.alpha <= MAX_ALPHA, "alpha", f"a number in [0, {MAX_ALPHA:g}]")
        check(
            1 <= self.lookahead_steps <= MAX_LOOKAHEAD_STEPS,
            "lookahead_steps",
            f"an integer in 1..{MAX_LOOKAHEAD_STEPS}",
        )
        check(
            0 < self.omega_lr <= MAX_OMEGA_LR, "omega_lr", f"a number in (0, {MAX_OMEGA_LR:g}] (omega = 1 -/+ omega_lr)"
        )
        check(2 <= self.entropy_bins <= MAX_ENTROPY_BINS, "entropy_bins", f"an integer in 2..{MAX_ENTROPY_BINS}")
        check(self.use_entropy or self.use_edges, "use_entropy/use_edges", "at least one of them true")
        check(self.feature_site in FEATURE_SITES, "feature_site", f"one of {FEATURE_SITES}")
        check(self.omega_mode in OMEGA_MODES, "omega_mode", f"one of {OMEGA_MODES}")
        check(0 <= self.cov_perturbation <= 1, "cov_perturbation", "a number in [0, 1]")
        check(0 < self.ridge <= 1, "ridge", "a number in (0, 1]")
        check(self.min_class_mass >= 0, "min_class_mass", "a number >= 0")
        check(
            0 <= self.split_patches <= MAX_SPLIT_PATCHES,
            "split_patches",
            f"an integer in 0..{MAX_SPLIT_PATCHES} (0: patch_size decides)",
        )
        check(self.split_patches == 0 or self.patch_size is None, "split_patches/patch_size", "not both set")
        check(self.lw_scale in LW_SCALES, "lw_scale", f"one of {LW_SCALES}")
        check(self.min_class_mass_per_dim >= 0, "min_class_mass_per_dim", "a number >= 0")
        check(0 <= self.target_momentum < 1, "target_momentum", "a number in [0, 1)")
        check(0 <= self.clean_threshold < 1, "clean_threshold", "a number in [0, 1)")
        check(0 <= self.warmup_fraction < 1, "warmup_fraction", "a number in [0, 1)")
        check(self.omega_every >= 1, "omega_every", "an integer >= 1 (1: omega on every iteration)")
        check(self.use_omega or self.omega_every == 1, "omega_every/use_omega", "1 without omega (nothing to skip)")
        check(
            not (self.single_update and self.omega_mode == "fast"),
            "single_update/omega_mode",
            "not single_update with omega_mode 'fast' (fast mode looks along the non-fuzzy step's own gradient)",
        )
        check(
            self.single_update or self.omega_mode not in FUSED_OMEGA_MODES,
            "single_update/omega_mode",
            f"single_update with omega_mode in {FUSED_OMEGA_MODES} (they take v from the single update: its "
            "non-fuzzy gradient or the momentum buffer; with two steps use 'fast')",
        )
        if self.patch_size is not None:
            check(
                len(self.patch_size) >= 1 and all(p >= 1 for p in self.patch_size) and max(self.patch_size) >= 2,
                "patch_size",
                "integers >= 1, one of them >= 2 (a 1-voxel patch has entropy 0)",
            )

    def replace(self, **changes: Any) -> DALEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


# the paper's literal reading (Eq. 3-15 and Algorithm 1 as docs/method.md reads them) as changes to the defaults
PAPER_CHANGES: dict[str, Any] = {
    "split_patches": 0,  # 16-voxel patches (patch_size None)
    "lw_scale": "none",
    "min_class_mass_per_dim": 0.0,
    "target_momentum": 0.0,
    "omega_normalise": False,
    "clean_threshold": 0.0,
    "single_update": False,
    "mask_input": True,
    "warmup_fraction": 0.0,
}


# fields an earlier version recorded in its checkpoints and this one does not have, at the value that left the step
# as it is now: 0.2's study-only omega_centre, omega_shuffle and dice_scope (the study's trainers record their own)
RETIRED: dict[str, Any] = {"omega_centre": "mean", "omega_shuffle": False, "dice_scope": "region"}


def read_record(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as a checkpoint recorded it, in this version's fields: a field it lacks was written before the
    field existed, when every default was the literal reading's, so it counts with PAPER's value; a retired field
    (RETIRED) is left out at its neutral value and kept at any other, so that it counts as a change."""
    record = {**PAPER.to_dict(), **saved}
    return {k: v for k, v in record.items() if not (k in RETIRED and v == RETIRED[k])}


# upper bounds (docs/usage.md): beyond them a run cannot work, or spends its time on nothing
MAX_ALPHA = 10.0  # L_W at ten times the segmentation loss already drowns it
MAX_LOOKAHEAD_STEPS = 10  # each step costs a forward and backward pass of the shadow network
MAX_OMEGA_LR = 1.0  # a one-step omega is about 1 -/+ omega_lr per voxel: above 1 it turns negative
MAX_ENTROPY_BINS = 1024  # the entropy histogram holds patches x bins counts per image and channel
MAX_SPLIT_PATCHES = 64  # the paper's images hold 14-22 of its 16-pixel patches per side


class _Checker:
    def __init__(self, config: DALEConfig):
        self.config = config

    def __call__(self, ok: bool, name: str, expected: str) -> None:
        if not ok:
            values = ", ".join(f"{n}={short_repr(getattr(self.config, n, None))}" for n in name.split("/"))
            raise DALEConfigError(f"DALE hyper-parameter {name} must be {expected}; got {values}")


SHIPPED = DALEConfig()  # nnUNetTrainerDALE: the configuration the validity study chose
PAPER = DALEConfig(**PAPER_CHANGES)  # nnUNetTrainerDALE_paper: the literal reading, as shipped until 0.1


def _coerce(name: str, raw: Any) -> Any:
    """Parse one value (from JSON or an environment string) into the field's type."""
    kinds = {f.name: f.type for f in fields(DALEConfig)}
    if name not in kinds:
        raise DALEConfigError(
            f"unknown DALE hyper-parameter {short_repr(name)}{_suggestion(name, kinds)}; known: {sorted(kinds)}"
        )
    kind = kinds[name]
    try:
        if isinstance(raw, bool) and kind != "bool":  # JSON true/false where a number or a size is expected
            raise ValueError
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text in ("1", "true", "yes")
        if kind == "int":
            return _integer(raw)
        if kind == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind == "str":
            return str(raw).strip()
        # patch size: null, an int, a list, or "16,16"
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null")):
            return None
        items = raw.split(",") if isinstance(raw, str) else (raw if isinstance(raw, Sequence) else [raw])
        return tuple(_integer(i) for i in items)
    except (TypeError, ValueError, OverflowError):
        expected = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "text"}.get(
            kind, "integers (one, or one per axis)"
        )
        raise DALEConfigError(f"DALE hyper-parameter {name}: cannot read {short_repr(raw)} as {expected}") from None


def _integer(raw: Any) -> int:
    """An integer from an int, an integral float or a string of digits; booleans and fractions are refused."""
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError
    return int(raw.strip()) if isinstance(raw, str) else int(raw)


def _suggestion(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_config_file(path: Path) -> dict[str, Any]:
    """The JSON object of hyper-parameters in `path`; a DALEConfigError naming the file for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DALEConfigError(f"{ENV_FILE}={path}: cannot read the file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DALEConfigError(f"{ENV_FILE}={path}: not UTF-8 text (at byte {e.start}); save it as UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise DALEConfigError(f"{ENV_FILE}={path}: not valid JSON ({e})") from None
    except ValueError:  # Python's limit on the digits of an integer it converts
        message = "holds an integer too long to read; no hyper-parameter takes one"
        raise DALEConfigError(f"{ENV_FILE}={path}: {message}") from None
    if not isinstance(data, dict):
        raise DALEConfigError(f"{ENV_FILE}={path}: expected a JSON object of hyper-parameters")
    return data


def load_config(
    defaults: DALEConfig | Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> DALEConfig:
    """The configuration for a trainer: class defaults, then the JSON file, then single environment variables."""
    environ = os.environ if environ is None else environ
    base = defaults if isinstance(defaults, DALEConfig) else DALEConfig(**dict(defaults or {}))
    changes: dict[str, Any] = {}
    if environ.get(ENV_FILE):
        path = Path(environ[ENV_FILE])
        changes.update({k: _coerce(k, v) for k, v in _read_config_file(path).items()})
    known = {ENV_PREFIX + f.name.upper(): f.name for f in fields(DALEConfig)}
    for key in sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in CONTROL_VARIABLES):
        if key not in known:
            raise DALEConfigError(
                f"unknown environment variable {key}{_suggestion(key, known)}; DALE reads "
                f"{', '.join(sorted(known))} and {', '.join(CONTROL_VARIABLES)}"
            )
        if not environ[key].strip():
            raise DALEConfigError(f"{key} is set but empty: unset it to keep the class's value, or give one")
        changes[known[key]] = _coerce(known[key], environ[key])
    if "patch_size" in changes and "split_patches" not in changes:  # a patch size set here wins over the class's
        changes["split_patches"] = 0  # rule of patches per side
    return base.replace(**changes)


def default_patch_size(spacing: Sequence[float], cap: Sequence[int], base: int = 16) -> tuple[int, ...]:
    """`base` voxels along the finest axis and the same physical length along coarser ones, capped at `cap`."""
    finest = min(spacing)
    return tuple(min(int(n), max(1, round(base * finest / s))) for s, n in zip(spacing, cap))


def patches_per_side(network_patch: Sequence[int], count: int) -> tuple[int, ...]:
    """The split patch that tiles the network patch with `count` patches per axis (the paper: 224-352 px images in
    16 px patches, i.e. 14-22 per side), at least 1 voxel."""
    return tuple(max(1, math.ceil(int(n) / count)) for n in network_patch)


def resolve_patch_size(
    config: DALEConfig, network_patch: Sequence[int], spacing: Sequence[float], base: int = 16
) -> tuple[int, ...]:
    """The split's patch size in voxels for a plan: the configured one, or `base` voxels along the finest axis and
    the same physical length along coarser ones (capped at the network's patch size), or with `split_patches` the
    network patch divided into that many patches per axis. A configured patch size larger than the network's patch
    size is an error."""
    dims = len(network_patch)
    if config.split_patches:
        patch = patches_per_side(network_patch, config.split_patches)
        if max(patch) < 2:
            raise DALEConfigError(
                f"DALE hyper-parameter split_patches={config.split_patches} cuts the network's patch "
                f"{tuple(network_patch)} into 1-voxel split patches, whose entropy is always 0; use "
                f"1..{min(MAX_SPLIT_PATCHES, max(network_patch) - 1)} for this plan (0: patch_size decides)"
            )
        return patch
    if config.patch_size is not None:
        patch = tuple(config.patch_size) * dims if len(config.patch_size) == 1 else tuple(config.patch_size)
        if len(patch) != dims:
            raise DALEConfigError(f"DALE patch_size {config.patch_size} has {len(patch)} axes; the plan is {dims}D")
    else:
        return default_patch_size(spacing, network_patch, base)
    if any(p > n for p, n in zip(patch, network_patch)):
        raise DALEConfigError(
            f"DALE patch_size {patch} is larger than the network's patch size {tuple(network_patch)} along some axis"
        )
    return patch


def split_options(config: DALEConfig) -> dict[str, Any]:
    """The keyword arguments of `split.fuzzy_split` a configuration sets: the soft threshold tau (Eq. 6), the
    histogram bins (Eq. 3) and which criteria are used (AE, ER). The trainer and the audit split with these."""
    return {
        "tau": config.tau,
        "bins": config.entropy_bins,
        "use_entropy": config.use_entropy,
        "use_edges": config.use_edges,
    }
