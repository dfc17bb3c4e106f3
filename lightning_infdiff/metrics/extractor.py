"""The feature-extractor interface every Fréchet-distance backbone implements, and its helpers.

An extractor maps uint8 images ``(B, C, H, W)`` (``C`` = 1 or 3, any ``H, W``) to fp32
features ``(B, D)`` and carries what the reference-statistics cache is keyed on: a ``name``,
the ``metric`` prefix of its logs and :func:`weights_hash` of its weights. The extractors
(:mod:`.features`, :mod:`.clip`, :mod:`.inception`) import this module and nothing imports
back.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from ..images import to_uint8

__all__ = ["FeatureExtractor", "check_uint8", "quantise", "weights_hash"]


def weights_hash(module: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's state dict: names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def quantise(x: Tensor) -> Tensor:
    """Images ``(B, C, H, W)`` in ``[-1, 1]`` -> uint8 ``(B, C, H, W)`` (round to nearest, as saved PNGs)."""
    return to_uint8(x).permute(0, 3, 1, 2).contiguous()


def check_uint8(images: Tensor, who: str) -> None:
    """Raise a clear error unless ``images`` is uint8 ``(B, C, H, W)`` with ``C`` in (1, 3)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"{who} expects uint8 images (B, C, H, W) with C in (1, 3), got {images.dtype} "
            f"{tuple(images.shape)}: quantise samples in [-1, 1] with lightning_infdiff.metrics.quantise"
        )


class FeatureExtractor(nn.Module):
    """Base of the extractors: uint8 ``(B, C, H, W)`` -> fp32 ``(B, num_features)``, always in eval mode.

    Attributes:
        name: identifies the network and its weights source (part of the cache key).
        metric: log prefix, e.g. ``fid_offline`` -> ``fid_offline/32x32``.
        num_features: feature dimension (read by torchmetrics instead of a dummy forward).
    """

    name: str = "features"
    metric: str = "fid"
    num_features: int = 0
    _hash: str | None = None

    def weights_hash(self) -> str:
        """Hash of the weights (computed once)."""
        if self._hash is None:
            self._hash = weights_hash(self)
        return self._hash

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: extractors are frozen."""
        return super().train(False)

    def cache_identity(self) -> dict[str, str]:
        """The extractor's part of a reference-statistics cache key."""
        return {"name": self.name, "weights": self.weights_hash()}
