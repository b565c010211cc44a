"""DALE's per-epoch statistics in nnU-Net's logger: extra lists, their plot progress_dale.png, the config."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

__all__ = [
    "CONFIG_KEY",
    "DALE_STATS",
    "NOT_ALWAYS_DEFINED",
    "PANEL_LOSSES",
    "PANEL_SHARES",
    "DALELocalLogger",
]

# logged key -> label in the log file and the plot
DALE_STATS = {
    "dale_fuzzy_fraction": "fuzzy fraction",
    "dale_mean_omega": "mean omega",
    "dale_noisy_share": "noisy share",
    "dale_l_w": "L_W",
    "dale_alpha_l_w": "alpha*omega*L_W",
    "dale_seg_loss_f": "fuzzy seg loss",
    "dale_grad_norm_n": "grad norm (non-fuzzy or single step)",
    "dale_grad_norm_f": "grad norm (fuzzy step)",
    "dale_omega_fg": "omega fuzzy fg",
    "dale_omega_bg": "omega fuzzy bg",
    "dale_noisy_fg": "noisy share fg",
    "dale_noisy_bg": "noisy share bg",
    "dale_omega_moved": "share omega moved",
    "dale_nonfuzzy_fg_share": "fg share non-fuzzy",
}
NOT_ALWAYS_DEFINED = ("dale_grad_norm_n", "dale_grad_norm_f", "dale_seg_loss_f")  # NaN without such a step / loss
CONFIG_KEY = "_dale_config"
PANEL_SHARES = ("dale_fuzzy_fraction", "dale_mean_omega", "dale_noisy_fg", "dale_noisy_bg", "dale_omega_moved",
                "dale_nonfuzzy_fg_share")  # fmt: skip
PANEL_LOSSES = ("dale_l_w", "dale_alpha_l_w", "dale_seg_loss_f", "dale_grad_norm_n", "dale_grad_norm_f")


class DALELocalLogger(LocalLogger):
    """nnU-Net's LocalLogger with one list per DALE statistic; its checkpoint also carries the DALE configuration."""

    def __init__(self, dale_config: dict[str, Any], verbose: bool = False):
        super().__init__(verbose)
        self.my_fantastic_logging.update({k: [] for k in DALE_STATS})
        self.dale_config = dale_config
        self.loaded_dale_config: dict[str, Any] | None = None

    def get_checkpoint(self) -> dict:
        return {**self.my_fantastic_logging, CONFIG_KEY: self.dale_config}

    def load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint = dict(checkpoint)
        self.loaded_dale_config = checkpoint.pop(CONFIG_KEY, None)
        epochs = len(checkpoint.get("lrs", []))
        for key in DALE_STATS:  # a checkpoint without DALE statistics: pad so every list has one entry per epoch
            checkpoint.setdefault(key, [math.nan] * epochs)
        self.my_fantastic_logging = checkpoint

    def plot_progress_png(self, output_folder: str) -> None:
        """nnU-Net's progress.png, and DALE's statistics in progress_dale.png beside it (a separate, small figure:
        appending a panel to nnU-Net's 3000 x 5400 px image cost ~2.4 s per epoch in PNG decoding and encoding)."""
        super().plot_progress_png(output_folder)
        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        x = np.arange(epochs)
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), dpi=80, sharex=True)
        for key in PANEL_SHARES:
            top.plot(x, self.my_fantastic_logging[key][:epochs], label=DALE_STATS[key])
        top.set_ylabel("share / omega")
        for key in PANEL_LOSSES:
            bottom.plot(x, self.my_fantastic_logging[key][:epochs], label=DALE_STATS[key])
        bottom.set_ylabel("loss / gradient norm")
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            ax.legend(loc="upper left", fontsize="small", ncol=2)
        fig.tight_layout()
        fig.savefig(join(output_folder, "progress_dale.png"))
        plt.close(fig)
