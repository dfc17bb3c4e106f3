"""Orthonormal multi-level Haar wavelet transform, used as the U-ViT's input/output transform.

Simple diffusion (Hoogeboom, Heek and Salimans 2023, section 3.3 and figure 6) moves the first
levels of a high-resolution U-Net into a discrete wavelet transform: the image is split into
low- and high-frequency responses at half the resolution, which are concatenated over
channels; with several levels, the finer responses are brought to the coarsest resolution by a
space-to-depth reshape. The paper uses the 5/3 (LeGall) wavelet; we use the Haar wavelet, whose
2x2 blocks make the transform local, orthonormal and exactly invertible on any even grid.

One level on a 2x2 block ``[[a, b], [c, d]]`` (rows, columns)::

    LL = (a + b + c + d) / 2      LH = (a - b + c - d) / 2   (horizontal detail)
    HL = (a + b - c - d) / 2      HH = (a - b - c + d) / 2   (diagonal: HH)

i.e. ``y = W x`` with ``W = ½ [[1,1,1,1], [1,-1,1,-1], [1,1,-1,-1], [1,-1,-1,1]]`` and
``W Wᵀ = I``, so the inverse is ``Wᵀ = W``. ``L`` levels recurse on LL; the detail responses
of level ``l`` (side ``H/2^l``) are pixel-unshuffled by ``2^(L-l)`` to side ``H/2^L`` (a
permutation), so the whole map ``(B, C, H, W) -> (B, 4^L C, H/2^L, W/2^L)`` is orthogonal:
it preserves the Euclidean norm and its inverse is its transpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HaarDWT", "haar_forward", "haar_inverse"]


def _haar_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The 4x4 orthonormal Haar analysis matrix on flattened 2x2 blocks ``[a, b, c, d]``."""
    w = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], device=device, dtype=dtype)
    return 0.5 * w


def haar_forward(x: Tensor) -> Tensor:
    """One Haar level: ``(B, C, H, W)`` -> ``(B, 4C, H/2, W/2)`` ordered ``[LL, LH, HL, HH]`` x C.

    Raises:
        ValueError: if ``H`` or ``W`` is odd.
    """
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"the Haar DWT needs an even grid, got {h}x{w}")
    blocks = F.pixel_unshuffle(x, 2).view(b, c, 4, h // 2, w // 2)  # [a, b, c, d] per channel
    out = torch.einsum("kj,bcjhw->bkchw", _haar_matrix(x.device, x.dtype), blocks)
    return out.reshape(b, 4 * c, h // 2, w // 2)


def haar_inverse(y: Tensor) -> Tensor:
    """Inverse of :func:`haar_forward`: ``(B, 4C, h, w)`` -> ``(B, C, 2h, 2w)``."""
    b, c4, h, w = y.shape
    if c4 % 4:
        raise ValueError(f"the inverse Haar DWT needs a multiple of 4 channels, got {c4}")
    c = c4 // 4
    coeffs = y.view(b, 4, c, h, w)
    blocks = torch.einsum("kj,bkchw->bcjhw", _haar_matrix(y.device, y.dtype), coeffs)
    return F.pixel_shuffle(blocks.reshape(b, 4 * c, h, w), 2)


class HaarDWT(nn.Module):
    """``levels``-level orthonormal Haar transform with space-to-depth of the finer details.

    ``forward``: ``(B, C, H, W)`` -> ``(B, 4^L C, H / 2^L, W / 2^L)``, channels ordered
    ``[LL_L, details of level L, pixel-unshuffled details of level L-1, ...]``; ``inverse`` undoes
    it exactly (up to float rounding). ``H`` and ``W`` must be multiples of ``2^L``.

    Args:
        levels: number of wavelet levels ``L >= 1``.
    """

    def __init__(self, levels: int = 1) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"HaarDWT levels must be >= 1, got {levels}")
        self.levels = levels

    def out_channels(self, channels: int) -> int:
        """Channels after the transform of a ``channels``-channel field."""
        return channels * 4**self.levels

    def forward(self, x: Tensor) -> Tensor:
        """Analysis (see class docstring)."""
        factor = 2**self.levels
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"a {self.levels}-level Haar DWT needs sides divisible by {factor}, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        c = x.shape[1]
        details: list[Tensor] = []
        low = x
        for level in range(1, self.levels + 1):
            y = haar_forward(low)
            low, det = y[:, :c], y[:, c:]
            rest = self.levels - level
            details.append(F.pixel_unshuffle(det, 2**rest) if rest else det)
        return torch.cat([low, *reversed(details)], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        """Synthesis: the exact inverse (and transpose) of :meth:`forward`."""
        c = y.shape[1] // 4**self.levels
        if y.shape[1] != c * 4**self.levels:
            raise ValueError(f"expected a multiple of {4 ** self.levels} channels, got {y.shape[1]}")
        low, pos = y[:, :c], c
        for level in range(self.levels, 0, -1):
            rest = self.levels - level
            n = 3 * c * 4**rest
            det = y[:, pos:pos + n]
            pos += n
            if rest:
                det = F.pixel_shuffle(det, 2**rest)
            low = haar_inverse(torch.cat([low, det], dim=1))
        return low
