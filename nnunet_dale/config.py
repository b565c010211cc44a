"""DALE hyper-parameters: defaults of the paper, overrides from a JSON file or environment variables, validation.

Precedence (later wins): the trainer class's defaults, the JSON file named by ``NNUNET_DALE_CONFIG``, single
variables ``NNUNET_DALE_<FIELD>`` (e.g. ``NNUNET_DALE_TAU=0.8``, ``NNUNET_DALE_PATCH_SIZE=8,16,16``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_FILE = "NNUNET_DALE_CONFIG"
ENV_PREFIX = "NNUNET_DALE_"
FEATURE_SITES = ("head", "bottleneck")
OMEGA_MODES = ("exact", "fast")


class DALEConfigError(ValueError):
    """A DALE hyper-parameter is invalid; the message names it and the accepted values."""


@dataclass(frozen=True)
class DALEConfig:
    """DALE's hyper-parameters; defaults are the paper's (Sec. 4.1)."""

    tau: float = 0.9  # soft threshold of Eq. 6, in (0, 1]
    alpha: float = 0.05  # weight of L_W in Eq. 15, >= 0
    lookahead_steps: int = 1  # K of Algorithm 1, >= 1
    omega_lr: float = 0.1  # Adam learning rate of omega (the paper's "omega = 0.1")
    patch_size: tuple[int, ...] | None = None  # h x w (x d) of Eq. 3-4; None: 16 per axis, scaled for anisotropy
    entropy_bins: int = 32  # histogram bins of Eq. 3
    use_entropy: bool = True  # AE criterion (Table 4 ablation)
    use_edges: bool = True  # ER criterion (Table 4 ablation)
    use_omega: bool = True  # learn omega (Eq. 8-11); off: omega = 1
    use_alignment: bool = True  # L_W (Eq. 12-14); off: alpha is ignored
    omega_mode: str = "exact"  # "exact": Eq. 8-11 with the exact hypergradient; "fast": first-order approximation
    feature_site: str = "head"  # "head": input of the final segmentation layer; "bottleneck": encoder output
    cov_perturbation: float = 0.01  # scale of the random eps of Eq. 13, relative to the mean variance
    ridge: float = 1e-4  # added to covariance diagonals before matrix square roots
    min_class_mass: float = 8.0  # a class needs this much voxel weight in both regions to enter L_W

    def __post_init__(self):
        check = _Checker(self)
        check(0 < self.tau <= 1, "tau", "a number in (0, 1]")
        check(self.alpha >= 0, "alpha", "a number >= 0")
        check(self.lookahead_steps >= 1, "lookahead_steps", "an integer >= 1")
        check(self.omega_lr > 0, "omega_lr", "a number > 0")
        check(self.entropy_bins >= 2, "entropy_bins", "an integer >= 2")
        check(self.use_entropy or self.use_edges, "use_entropy/use_edges", "at least one of them true")
        check(self.feature_site in FEATURE_SITES, "feature_site", f"one of {FEATURE_SITES}")
        check(self.omega_mode in OMEGA_MODES, "omega_mode", f"one of {OMEGA_MODES}")
        check(self.cov_perturbation >= 0, "cov_perturbation", "a number >= 0")
        check(self.ridge > 0, "ridge", "a number > 0")
        check(self.min_class_mass >= 0, "min_class_mass", "a number >= 0")
        if self.patch_size is not None:
            check(len(self.patch_size) >= 1 and all(p >= 1 for p in self.patch_size), "patch_size", "integers >= 1")

    def replace(self, **changes: Any) -> DALEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


class _Checker:
    def __init__(self, config: DALEConfig):
        self.config = config

    def __call__(self, ok: bool, name: str, expected: str) -> None:
        if not ok:
            values = {n: getattr(self.config, n, None) for n in name.split("/")}
            raise DALEConfigError(f"DALE hyper-parameter {name} must be {expected}; got {values}")


def _coerce(name: str, raw: Any) -> Any:
    """Parse one value (from JSON or an environment string) into the field's type."""
    kinds = {f.name: f.type for f in fields(DALEConfig)}
    if name not in kinds:
        raise DALEConfigError(f"unknown DALE hyper-parameter {name!r}; known: {sorted(kinds)}")
    kind = kinds[name]
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text in ("1", "true", "yes")
        if kind == "int":
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "str":
            return str(raw).strip()
        # patch size: null, an int, a list, or "16,16"
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        items = raw.split(",") if isinstance(raw, str) else (raw if isinstance(raw, Sequence) else [raw])
        return tuple(int(i) for i in items)
    except (TypeError, ValueError):
        raise DALEConfigError(f"DALE hyper-parameter {name}: cannot read {raw!r} as {kind}") from None


def load_config(
    defaults: DALEConfig | Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> DALEConfig:
    """The configuration for a trainer: class defaults, then the JSON file, then single environment variables."""
    environ = os.environ if environ is None else environ
    base = defaults if isinstance(defaults, DALEConfig) else DALEConfig(**dict(defaults or {}))
    changes: dict[str, Any] = {}
    if environ.get(ENV_FILE):
        path = Path(environ[ENV_FILE])
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise DALEConfigError(f"{ENV_FILE}={path}: cannot read the file ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise DALEConfigError(f"{ENV_FILE}={path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise DALEConfigError(f"{ENV_FILE}={path}: expected a JSON object of hyper-parameters")
        changes.update({k: _coerce(k, v) for k, v in data.items()})
    for f in fields(DALEConfig):
        key = ENV_PREFIX + f.name.upper()
        if key in environ:
            changes[f.name] = _coerce(f.name, environ[key])
    return base.replace(**changes)


def default_patch_size(spacing: Sequence[float], cap: Sequence[int], base: int = 16) -> tuple[int, ...]:
    """`base` voxels along the finest axis and the same physical length along coarser ones, capped at `cap`."""
    finest = min(spacing)
    return tuple(min(int(n), max(1, round(base * finest / s))) for s, n in zip(spacing, cap))


def resolve_patch_size(
    config: DALEConfig, network_patch: Sequence[int], spacing: Sequence[float], base: int = 16
) -> tuple[int, ...]:
    """The split's patch size in voxels for a plan: the configured one, or `base` voxels along the finest axis and
    the same physical length along coarser ones (capped at the network's patch size). A configured patch size
    larger than the network's patch size is an error."""
    dims = len(network_patch)
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
