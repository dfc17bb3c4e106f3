"""Feature extractors for Fréchet distances: a shared interface and the offline classifier.

Every extractor maps uint8 images ``(B, C, H, W)`` (``C`` = 1 or 3, any ``H, W``) to features
``(B, D)`` in fp32 and carries the facts the reference-statistics cache is keyed on: a
``name``, the ``metric`` prefix its logs use (``fid_offline``, ``fid_clip``, ...) and a hash of
its weights.

:class:`ClassifierFeatures` is the offline metric used in tests and CPU runs: the 128-d
penultimate features of :class:`~lightning_infdiff.metrics.classifier.SmallClassifier`, trained
once on the bundled digits (or silhouettes) and cached. Images of any resolution are made grey
(channel mean) and resized to the classifier's 32x32 input (bilinear, antialiased), so the same
metric compares samples at 16², 64² or 48x80 with real images at that resolution. It is a
plumbing-grade FID, not comparable with published Inception or CLIP numbers.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from torch import Tensor, nn

from ..images import to_uint8
from .classifier import SmallClassifier, load_classifier

__all__ = ["FeatureExtractor", "ClassifierFeatures", "build_extractor", "weights_hash", "quantise", "check_uint8"]


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


class ClassifierFeatures(FeatureExtractor):
    """128-d features of the small classifier trained on a bundled dataset (offline FID).

    Args:
        dataset: ``digits`` or ``animals``: the classifier trained (once, cached under
            ``$LIGHTNING_INFDIFF_CACHE``) on that bundled set; ``infdiff train_classifier``
            trains it ahead of time.
        model: use this classifier instead (tests, or your own trained weights).
    """

    metric = "fid_offline"
    num_features = 128

    def __init__(self, dataset: Literal["digits", "animals"] = "digits", model: SmallClassifier | None = None) -> None:
        super().__init__()
        if dataset not in ("digits", "animals"):
            raise ValueError(f"ClassifierFeatures.dataset must be 'digits' or 'animals', got {dataset!r}")
        # the cached weights are loaded (or trained, once) on first use, so building a config is cheap
        self.classifier = model if model is not None else SmallClassifier(10)
        self.classifier.requires_grad_(False)
        self._pending: str | None = None if model is not None else dataset
        self.name = f"classifier_{dataset}" if model is None else "classifier_custom"
        self.eval()

    def _ensure_loaded(self) -> None:
        if self._pending is not None:
            trained, _ = load_classifier(self._pending)  # type: ignore[arg-type]
            self.classifier.load_state_dict(trained.state_dict())
            self._pending = None

    def weights_hash(self) -> str:
        """Hash of the (loaded) classifier weights."""
        self._ensure_loaded()
        return super().weights_hash()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> ``(B, 128)``: grey, resized to 32x32, scaled to ``[-1, 1]``."""
        check_uint8(images, "ClassifierFeatures")
        self._ensure_loaded()
        x = images.float() / 127.5 - 1.0
        return self.classifier.embed(x).float()


def build_extractor(
    metric: str,
    offline_dataset: Literal["digits", "animals"] = "digits",
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | None = "openai",
    clip_weights: str | None = None,
    inception_weights: str | None = None,
) -> FeatureExtractor:
    """An extractor by metric name: ``offline``, ``clip`` or ``inception`` (CLIP/Inception lazily imported)."""
    if metric == "offline":
        return ClassifierFeatures(offline_dataset)
    if metric == "clip":
        from .clip import CLIPFeatures

        return CLIPFeatures(clip_model, clip_pretrained, clip_weights)
    if metric == "inception":
        from .inception import InceptionFeatures

        return InceptionFeatures(inception_weights)
    raise ValueError(f"unknown metric {metric!r}; expected 'offline', 'clip' or 'inception'")
