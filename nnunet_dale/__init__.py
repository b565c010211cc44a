"""nnunet-dale: DALE (Minding Fuzzy Regions, CVPR 2025) as an nnU-Net v2 trainer plugin.

The public API is listed here once (as MONAI's package ``__init__`` lists its own) and imported on first use, so that
``import nnunet_dale`` (and the ``nnunet-dale`` command) stays light: ``from nnunet_dale import nnUNetTrainerDALE``
loads the trainer and nnU-Net only then. Layers, each importing only the ones before it:

* plumbing: ``files`` (atomic writes, JSON-safe values, readers), ``nnunet_env`` (nnU-Net folders and environment),
  ``inprocess`` (nnU-Net's steps in this process);
* the method, pure torch: ``config``, ``split``, ``confidence``, ``alignment``, ``weighted_loss``, ``metrics``,
  ``robust_loss``;
* nnU-Net glue: ``progress`` (the logger), ``trainer``, ``variants``;
* tools: ``evaluation``, ``compare/``, ``audit/``, ``omega_maps``, ``raw_datasets``, ``converters/``, ``holdout``,
  ``benchmark_data``, ``label_noise``;
* apps: ``demo``, ``cli``.

The functions ``audit``, ``compare`` and ``omega_maps`` share their name with their module and are not re-exported
here: use ``nnunet_dale.audit.audit``, ``nnunet_dale.compare.compare``, ``nnunet_dale.omega_maps.omega_maps``.
"""

import importlib
import importlib.resources
from pathlib import Path

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    # the trainer and its configuration
    "nnUNetTrainerDALE": "nnunet_dale.trainer",
    "DALEConfig": "nnunet_dale.config",
    "DALEConfigError": "nnunet_dale.config",
    "PAPER": "nnunet_dale.config",
    "PAPER_CHANGES": "nnunet_dale.config",
    "SHIPPED": "nnunet_dale.config",
    "load_config": "nnunet_dale.config",
    # the method
    "FuzzySplit": "nnunet_dale.split",
    "fuzzy_split": "nnunet_dale.split",
    "Confidence": "nnunet_dale.confidence",
    "first_order_confidence": "nnunet_dale.confidence",
    "learn_confidence": "nnunet_dale.confidence",
    "Alignment": "nnunet_dale.alignment",
    "alignment_loss": "nnunet_dale.alignment",
    "PixelWeightedDCandBCE": "nnunet_dale.weighted_loss",
    "PixelWeightedDCandCE": "nnunet_dale.weighted_loss",
    "pixel_weighted_loss": "nnunet_dale.weighted_loss",
    "weight_pyramid": "nnunet_dale.weighted_loss",
    "case_metrics": "nnunet_dale.metrics",
    "dice": "nnunet_dale.metrics",
    "reference_fuzzy_mask": "nnunet_dale.metrics",
    "surface_distances": "nnunet_dale.metrics",
    # tools
    "evaluate_folders": "nnunet_dale.evaluation",
    "format_table": "nnunet_dale.compare",
    "AuditError": "nnunet_dale.audit",
    "AuditSettings": "nnunet_dale.audit",
    "audit_quality": "nnunet_dale.audit",
    "load_trained_model": "nnunet_dale.audit",
    "CONVERTERS": "nnunet_dale.converters",
    "ConversionError": "nnunet_dale.converters",
    "add_test_set": "nnunet_dale.converters",
    "convert": "nnunet_dale.converters",
    "hold_out_test_set": "nnunet_dale.holdout",
    "add_label_noise": "nnunet_dale.label_noise",
    "make_benchmark": "nnunet_dale.benchmark_data",
    "plot_noise_examples": "nnunet_dale.benchmark_data",
    # apps
    "DemoSettings": "nnunet_dale.demo",
    "run_demo": "nnunet_dale.demo",
}

__all__ = ["__version__", "trainers_path", *_EXPORTS]


def trainers_path() -> Path:
    """The folder to put in nnUNet_extTrainer: thin modules exposing nnunet-dale's trainer classes."""
    return Path(str(importlib.resources.files("nnunet_dale.trainers")))


def __getattr__(name: str):
    """A public name of `_EXPORTS`, imported from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
