"""A small CNN classifier of the bundled 28x28 datasets: an offline recognisability check.

Trained once on the bundled digits (or silhouettes), held-out accuracy reported, cached on
disk (weights-only). Generated samples of any resolution are resized to 32x32 (bilinear,
antialiased) and classified; for class-conditional samples the *accuracy against the requested
label* measures whether the samples are recognisable, and for unconditional ones the mean
confidence does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SmallClassifier", "bundled_arrays", "train_classifier", "load_classifier", "classify", "ink_window_starts",
    "ink_windows", "cache_dir", "classifier_path",
]

INPUT = 32


def cache_dir() -> Path:
    """``$LIGHTNING_INFDIFF_CACHE`` or ``~/.cache/lightning_infdiff``."""
    return Path(os.environ.get("LIGHTNING_INFDIFF_CACHE", Path.home() / ".cache" / "lightning_infdiff"))


class SmallClassifier(nn.Module):
    """conv(32)-pool-conv(64)-pool-conv(128)-global pool-linear on 1x32x32 inputs in [-1, 1]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(128, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """128-d features (usable as an offline feature extractor)."""
        return self.features(prepare(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)``."""
        return self.head(self.embed(x))


def prepare(x: Tensor) -> Tensor:
    """Any ``(B, C, H, W)`` in ``[-1, 1]`` -> grey ``(B, 1, 32, 32)`` (channel mean, antialiased bilinear)."""
    x = x.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (INPUT, INPUT):
        x = F.interpolate(x, size=(INPUT, INPUT), mode="bilinear", antialias=True, align_corners=False)
    return x


def bundled_arrays(name: Literal["digits", "animals"]) -> tuple[np.ndarray, np.ndarray]:
    """The bundled 28x28 uint8 images and labels (needs the ``data`` extra)."""
    if name == "digits":
        from ..data.bundled import _mnist_arrays

        return _mnist_arrays()
    if name == "animals":
        from ..data.bundled import AnimalSilhouettes

        src = AnimalSilhouettes(channels=1)
        return src.images, src.labels  # type: ignore[attr-defined]
    raise ValueError(f"unknown bundled dataset {name!r}; expected 'digits' or 'animals'")


def train_classifier(
    name: Literal["digits", "animals"] = "digits", epochs: int = 6, holdout: int = 500, seed: int = 0
) -> tuple[SmallClassifier, float]:
    """Train on all but ``holdout`` images (fixed shuffle); returns the model and held-out accuracy."""
    images, labels = bundled_arrays(name)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[order][:, None] / 127.5 - 1.0
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))[order]
    x = prepare(x)
    xt, yt, xv, yv = x[holdout:], y[holdout:], x[:holdout], y[:holdout]
    torch.manual_seed(seed)
    model = SmallClassifier(int(y.max()) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(xt) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            # small random shifts so the classifier tolerates imperfect centring
            batch = torch.roll(xt[idx], shifts=tuple(torch.randint(-2, 3, (2,), generator=gen).tolist()), dims=(2, 3))
            loss = F.cross_entropy(model.head(model.features(batch)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model.head(model.features(xv)).argmax(1) == yv).float().mean().item()
    return model, acc


def classifier_path(name: Literal["digits", "animals"] = "digits") -> Path:
    """Where the trained classifier of ``name`` is cached."""
    return cache_dir() / f"classifier_{name}_v1.pt"


def load_classifier(name: Literal["digits", "animals"] = "digits", retrain: bool = False) -> tuple[SmallClassifier, float]:
    """The cached classifier (trained on first use, once per cache)."""
    path = classifier_path(name)
    if path.is_file() and not retrain:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = SmallClassifier(state["num_classes"])
        model.load_state_dict(state["state_dict"])
        return model.eval(), float(state["accuracy"])
    model, acc = train_classifier(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "accuracy": acc, "num_classes": model.head.out_features}, tmp)
    tmp.replace(path)
    return model, acc


@torch.no_grad()
def ink_window_starts(images: Tensor) -> Tensor:
    """First column of the square window (the images' height) holding the most ink (values above
    the -1 background), per image ``(B, C, H, W)`` in ``[-1, 1]``; zeros for square or tall images."""
    h, w = images.shape[-2:]
    if w <= h:
        return torch.zeros(len(images), dtype=torch.long)
    ink = (images + 1).clamp_min(0).sum(dim=(1, 2))  # (B, W) per column
    return ink.unfold(1, h, 1).sum(-1).argmax(dim=1)


def ink_windows(images: Tensor) -> Tensor:
    """The square windows of :func:`ink_window_starts`, ``(B, C, H, H)``: where a wide canvas of a
    digits model drew its digit. Square or tall images are returned as they are."""
    h, w = images.shape[-2:]
    if w <= h:
        return images
    starts = ink_window_starts(images)
    return torch.stack([img[:, :, int(i) : int(i) + h] for img, i in zip(images, starts, strict=True)])


@torch.no_grad()
def classify(model: SmallClassifier, images: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted labels and their probabilities for images in ``[-1, 1]`` of any size."""
    probs = model(images.cpu()).softmax(dim=1)
    conf, pred = probs.max(dim=1)
    return pred, conf
