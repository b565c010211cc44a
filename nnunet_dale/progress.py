"""DALE's per-epoch statistics in nnU-Net's logger: extra lists, a fourth panel in progress.png, the config."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

# logged key -> label in the log file and the plot
DALE_STATS = {
    "dale_fuzzy_fraction": "fuzzy fraction",
    "dale_mean_omega": "mean omega",
    "dale_noisy_share": "noisy share",
    "dale_l_w": "L_W",
}
CONFIG_KEY = "_dale_config"


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
        """nnU-Net's three panels, then a fourth below them with DALE's statistics."""
        super().plot_progress_png(output_folder)
        path = join(output_folder, "progress.png")
        base = plt.imread(path)
        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        fig, ax = plt.subplots(1, 1, figsize=(base.shape[1] / 100, 18), dpi=100)
        x = np.arange(epochs)
        for key, colour in zip(("dale_fuzzy_fraction", "dale_mean_omega", "dale_noisy_share"), "bgr"):
            ax.plot(x, self.my_fantastic_logging[key][:epochs], color=colour, label=DALE_STATS[key], linewidth=4)
        ax2 = ax.twinx()
        ax2.plot(x, self.my_fantastic_logging["dale_l_w"][:epochs], color="k", ls="--", label="L_W", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("fraction / omega")
        ax2.set_ylabel("L_W")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.4, 1))
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        buffer.seek(0)
        panel = plt.imread(buffer)
        if panel.shape[1] == base.shape[1]:
            plt.imsave(path, np.concatenate([base[..., :3], panel[..., :3]], axis=0))
        else:  # a matplotlib that rounds figure sizes differently: keep nnU-Net's plot intact, write ours beside it
            plt.imsave(join(output_folder, "progress_dale.png"), panel)
