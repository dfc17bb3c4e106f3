"""The one denoiser interface shared by point (sparse) models and grid models.

Every denoiser is called as::

    out = denoiser(values, coords, logsnr, grid, cond=None)

with ``values (B, N, C_in)`` the noisy field at ``N`` points, ``coords (B, N, 2)`` their
pixel-centre coordinates ``(y, x)`` in domain units (see :mod:`lightning_infdiff.coords`),
``logsnr (B,)`` the noise level, ``grid = (H, W)`` the pixel grid the points live on (a
:class:`~lightning_infdiff.coords.Grid` says where it lies: every position-dependent part of a
denoiser reads its geometry from there; a plain tuple is the unit square) and
``cond`` an optional condition (e.g. integer class labels ``(B,)``). It returns
``(B, N, C_out)``. The process and the LightningModule never know which kind they hold.

What a denoiser is conditioned on is its own business too: :meth:`Denoiser.condition` gives the
condition of a training or validation batch (class labels, with classifier-free dropout, by
default), :meth:`Denoiser.auxiliary_losses` any loss of its own added to the diffusion loss, and
:meth:`Denoiser.sampling_condition` the condition to sample with. A diffusion autoencoder
(:class:`~lightning_infdiff.denoisers.SparseAutoencoder`) overrides all three: its condition is
the encoder's latent, its extra loss the latent prior's, and it samples from latents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..batch import FieldBatch
from ..coords import check_grid, coords_to_index, gather, scatter

__all__ = ["Denoiser", "GridDenoiser"]


class Denoiser(nn.Module, ABC):
    """Base class of every denoiser (see the module docstring for the call contract).

    Args:
        in_channels: channels of the noisy field.
        out_channels: channels of the prediction (defaults to ``in_channels``).
        num_classes: number of classes for class conditioning; ``0`` for none. When positive,
            label ``num_classes`` is the null condition used by classifier-free guidance.

    Attributes:
        full_canvas_cost: ``True`` if the model's compute is that of the whole ``H x W`` grid
            whatever the number of points ``N`` (grid models, which scatter the points onto a
            canvas, and models whose point-wise layers run on the canvas), so training on a
            random subset of the pixels saves no time. ``False`` if it shrinks with ``N``.
    """

    full_canvas_cost: ClassVar[bool] = False
    #: whether classifier-free guidance applies to this denoiser's condition
    supports_guidance: ClassVar[bool] = True

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, num_classes: int = 0) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes

    @property
    def null_class(self) -> int | None:
        """Label of the unconditional (null) class, or ``None`` if unconditional."""
        return self.num_classes if self.num_classes > 0 else None

    @abstractmethod
    def forward(
        self, values: Tensor, coords: Tensor, logsnr: Tensor, grid: tuple[int, int], cond: Tensor | None = None
    ) -> Tensor:
        """Predict the target at the points (see module docstring)."""

    # ------------------------------------------------------------------ conditioning hooks
    def condition(self, batch: FieldBatch, train: bool, drop_prob: float = 0.0) -> Tensor | None:
        """The condition for ``batch``: its labels for a class-conditional model, else ``None``.

        In training each label becomes the null class with probability ``drop_prob``
        (classifier-free guidance, Ho & Salimans 2022).
        """
        if not self.num_classes or batch.label is None:
            return None
        cond = batch.label.long()
        if train and drop_prob > 0:
            drop = torch.rand(cond.shape, device=cond.device) < drop_prob
            cond = torch.where(drop, torch.full_like(cond, self.num_classes), cond)
        return cond

    def auxiliary_losses(self, cond: Tensor | None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Weighted losses of the denoiser's own, added to the diffusion loss (none by default)."""
        return {}

    def sampling_condition(
        self, seeds: list[int], labels: Tensor | None, latents: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """The condition to sample ``seeds`` with: the given class labels (or none)."""
        if latents is not None:
            raise ValueError("latents were given but the denoiser is not a diffusion autoencoder")
        return labels.to(device) if labels is not None else None

    def cycling_labels(self, n: int, device: torch.device | str | None = None) -> Tensor | None:
        """Labels ``0, 1, 2, ...`` (cycling over the classes) for a conditional model, else ``None``."""
        return torch.arange(n, device=device) % self.num_classes if self.num_classes else None

    @staticmethod
    def check_inputs(values: Tensor, coords: Tensor, logsnr: Tensor, grid: tuple[int, int]) -> tuple[int, int]:
        """Shared shape checks; returns the validated grid."""
        h, w = check_grid(grid)
        if values.dim() != 3 or coords.shape[:2] != values.shape[:2] or coords.shape[-1] != 2:
            raise ValueError(
                f"expected values (B, N, C) and coords (B, N, 2), got {tuple(values.shape)} and {tuple(coords.shape)}"
            )
        if logsnr.shape != (values.shape[0],):
            raise ValueError(f"logsnr must have shape (B,)=({values.shape[0]},), got {tuple(logsnr.shape)}")
        if values.shape[1] > h * w:
            raise ValueError(f"{values.shape[1]} points do not fit on a {h}x{w} grid")
        return h, w


class GridDenoiser(Denoiser):
    """Base of grid models (U-Net, FNO, U-ViT): scatter points onto a canvas, run, gather back.

    When fewer points than pixels are given, the canvas is zero where no point landed and a
    mask channel (1 at the sampled pixels) is appended, so ``forward_grid`` receives
    ``in_channels + 1`` channels. Subclasses implement :meth:`forward_grid`.
    """

    full_canvas_cost: ClassVar[bool] = True

    @property
    def grid_in_channels(self) -> int:
        """Channels of the canvas handed to :meth:`forward_grid` (data + mask)."""
        return self.in_channels + 1

    @abstractmethod
    def forward_grid(
        self, canvas: Tensor, logsnr: Tensor, cond: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        """``(B, in_channels + 1, H, W)`` canvas -> ``(B, out_channels, H, W)`` prediction; ``grid``
        places the canvas in the image plane (default: the unit square)."""

    def forward(
        self, values: Tensor, coords: Tensor, logsnr: Tensor, grid: tuple[int, int], cond: Tensor | None = None
    ) -> Tensor:
        h, w = self.check_inputs(values, coords, logsnr, grid)
        # Points may come in any order (and any subset): put them where their coordinates say.
        indices = coords_to_index(coords, grid)
        canvas, mask = scatter(values, indices, (h, w))
        out = self.forward_grid(torch.cat([canvas, mask], dim=1), logsnr, cond, grid=grid)
        return gather(out, indices)
