"""Inception-v3 FID features, only from a local weights file (never downloaded at run time).

torchmetrics' default ``FrechetInceptionDistance`` builds torch-fidelity's Inception-v3 (the
TF-FID port, Heusel et al. 2017) and downloads its weights on first use. :class:`InceptionFeatures`
uses the same network but only with weights that already exist locally: an explicit file, or
torch-fidelity's file ``weights-inception-2015-12-05-6726825d.pth`` in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``). Otherwise it fails at once, saying how to provide them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from .extractor import FeatureExtractor, check_uint8

__all__ = ["InceptionFeatures", "INCEPTION_FILE", "find_inception_weights"]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def find_inception_weights(weights: str | None = None) -> str:
    """The local Inception weights file, or ``FileNotFoundError`` with instructions (no network)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file not found: {weights}")
        return str(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return str(cached)
    raise FileNotFoundError(
        f"no local Inception-v3 FID weights (looked for {cached}; nothing is downloaded at run time). "
        f"On a machine with internet download {INCEPTION_URL}, copy it here and pass weights=<file> "
        f"(CLI: --inception_weights) or put it at {cached}."
    )


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of the TF-FID Inception-v3 (needs ``torch-fidelity`` and local weights).

    Args:
        weights: the weights file (default: torch-fidelity's file in the torch hub cache).
    """

    metric = "fid_inception"
    num_features = 2048

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        path = find_inception_weights(weights)
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ImportError("InceptionFeatures needs torch-fidelity: pip install torch-fidelity")
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path)
        self.name = f"inception_{Path(path).name}"
        self.eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` of any size -> ``(B, 2048)`` (resized to 299 inside the network)."""
        check_uint8(images, "InceptionFeatures")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images).float()
