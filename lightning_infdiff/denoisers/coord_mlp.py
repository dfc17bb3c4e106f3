"""Per-pixel coordinate MLP denoisers (the post-mortem baseline and an improved variant).

The post-mortem (``coordinate-mlp-diffusion_post-mortem.txt``) fed a 3-hidden-layer MLP with
``⟨x, t, I_t(x), N_1(x), …, N_k(x)⟩``: coordinate, time, noisy value and Gaussian blurs at
several scales, and got only noise. Its blurs were of the *clean* image, which no denoiser can
see at sampling time; here both variants blur the **noisy** input, the only honest choice.

Blurs on a point subset: the points are placed on the canvas of their grid and blurred with a
normalised Gaussian (Nadaraya-Watson over the present points,
:func:`~.layers.fourier.gaussian_blur_masked`), widths in fractions of the image side so that
the same physical blur is used at every resolution. Everything else is per point, so both
models are permutation-equivariant and accept any subset of pixel centres.

* :class:`CoordMLPBaseline`: the post-mortem design (plain MLP, raw inputs, scalar noise level
  ``logSNR / 10``), plus a class-embedding input for classifier-free guidance.
* :class:`CoordMLPDenoiser`: what a careful engineer tries next: Fourier features of the
  coordinates, a sinusoidal logSNR embedding, residual blocks with FiLM (modulated LayerNorm),
  the noisy value and its blurs (and their differences of Gaussians) as inputs, and a skip of
  the raw inputs into every block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..coords import as_grid, coords_to_index, gather, scatter
from .base import Denoiser
from .layers.common import ModulatedLayerNorm, PointMLP, head, output_head, zero_module
from .layers.embeddings import NoiseEmbedding
from .layers.fourier import FourierFeatures, gaussian_blur_masked

__all__ = ["CoordMLPBaseline", "CoordMLPDenoiser"]

_DEFAULT_SIGMAS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)


def blur_features(
    values: Tensor, coords: Tensor, grid: tuple[int, int], sigmas: Sequence[float], gradients: bool = False
) -> Tensor:
    """Normalised Gaussian blurs of the noisy points at each point: ``(B, N, len(sigmas)·C)``.

    With ``gradients``, also the scale-normalised gradient of each blur, ``σ ∂_y blur_σ`` and
    ``σ ∂_x blur_σ`` (central differences in domain units, the Gaussian-derivative "jet" of
    scale-space theory, Lindeberg 1994): ``(B, N, 3·len(sigmas)·C)``, the blurs first. Both are
    in domain units, so a grid twice as fine gives the same features of the same image.
    """
    if not sigmas:
        return values.new_zeros(*values.shape[:2], 0)
    g = as_grid(grid)
    idx = coords_to_index(coords, g)
    canvas, mask = scatter(values.float(), idx, g)
    blurred = gaussian_blur_masked(canvas, mask, tuple(sigmas), g.density)
    if gradients:
        dy, dx = torch.gradient(blurred, spacing=g.pitch, dim=(2, 3))
        scale = torch.tensor(sigmas, device=blurred.device).repeat_interleave(values.shape[-1]).view(1, -1, 1, 1)
        blurred = torch.cat([blurred, dy * scale, dx * scale], dim=1)
    return gather(blurred, idx).to(values.dtype)


class CoordMLPBaseline(Denoiser):
    """The post-mortem's MLP: ``MLP([c, λ/10, v, blur_σ1(v), …, blur_σk(v), e_class])``.

    Args:
        in_channels: channels of the noisy field.
        out_channels: prediction channels (defaults to ``in_channels``).
        num_classes: classes for conditioning (``0``: none; label ``num_classes`` = null).
        hidden: width of the hidden layers.
        depth: number of hidden layers (post-mortem: 3).
        blur_sigmas: Gaussian blur widths as fractions of the image side.
        class_dim: width of the class embedding appended to the input.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_classes: int = 0,
        hidden: int = 256,
        depth: int = 3,
        blur_sigmas: Sequence[float] = _DEFAULT_SIGMAS,
        class_dim: int = 16,
    ) -> None:
        super().__init__(in_channels, out_channels, num_classes)
        self.blur_sigmas = tuple(float(s) for s in blur_sigmas)
        self.label = nn.Embedding(num_classes + 1, class_dim) if num_classes > 0 else None
        d_in = 2 + 1 + in_channels * (1 + len(self.blur_sigmas)) + (class_dim if self.label is not None else 0)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden if depth else d_in, self.out_channels))
        self.mlp = nn.Sequential(*layers)

    def forward(
        self, values: Tensor, coords: Tensor, logsnr: Tensor, grid: tuple[int, int], cond: Tensor | None = None
    ) -> Tensor:
        """``(B, N, C_in)`` at ``coords`` -> ``(B, N, C_out)`` (see :mod:`.base`)."""
        h, w = self.check_inputs(values, coords, logsnr, grid)
        b, n, _ = values.shape
        feats = [coords.to(values.dtype) * 2 - 1, (logsnr / 10.0).to(values.dtype)[:, None, None].expand(b, n, 1),
                 values, blur_features(values, coords, grid, self.blur_sigmas)]
        if self.label is not None:
            if cond is None:
                cond = torch.full((b,), self.num_classes, dtype=torch.long, device=values.device)
            feats.append(self.label(cond.long())[:, None].expand(b, n, -1).to(values.dtype))
        elif cond is not None:
            raise ValueError("a condition was given but the denoiser was built with num_classes=0")
        return self.mlp(torch.cat(feats, dim=-1))


class _ResBlock(nn.Module):
    def __init__(self, hidden: int, in_dim: int, emb_dim: int, ratio: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.norm = ModulatedLayerNorm(hidden, emb_dim)
        self.mlp = PointMLP(hidden, ratio)
        zero_module(self.mlp.fc2)

    def forward(self, x: Tensor, raw: Tensor, emb: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x + self.inp(raw), emb))


class CoordMLPDenoiser(Denoiser):
    """Improved per-pixel MLP: Fourier features, FiLM residual blocks, blurs of the noisy input.

    ``raw = [γ(c), v, blur_σ(v) for σ, blur_σi - blur_σi+1]`` (and ``σ ∇blur_σ(v)`` with
    ``blur_gradients``); ``x = W raw``; ``x += MLP(FiLM-LN(x +
    W_l raw))`` per block (input skip, as in NeRF's skip layer, Mildenhall et al. 2020); output
    ``W_o GELU(LN(x))`` (zero-initialised). Noise level and class enter through FiLM of the
    shared :class:`~.layers.embeddings.NoiseEmbedding`.

    Args:
        in_channels: channels of the noisy field.
        out_channels: prediction channels (defaults to ``in_channels``).
        num_classes: classes for conditioning (``0``: none; label ``num_classes`` = null).
        hidden: residual stream width.
        depth: residual blocks.
        mlp_ratio: hidden expansion inside each block.
        blur_sigmas: blur widths as fractions of the image side (ascending).
        blur_gradients: also feed the scale-normalised gradient of every blur (stroke direction
            and edges at each scale, which a blur alone does not show; :func:`blur_features`).
        coord_freqs: octaves of the coordinate Fourier features (lowest 1/2 cycle per side).
        emb_dim: width of the logSNR/class embedding.
        zero_init_output: zero-initialise the output layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_classes: int = 0,
        hidden: int = 256,
        depth: int = 6,
        mlp_ratio: int = 2,
        blur_sigmas: Sequence[float] = _DEFAULT_SIGMAS,
        blur_gradients: bool = False,
        coord_freqs: int = 6,
        emb_dim: int = 128,
        zero_init_output: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, num_classes)
        self.blur_sigmas = tuple(float(s) for s in blur_sigmas)
        self.blur_gradients = blur_gradients
        self.fourier = FourierFeatures(2, coord_freqs, 0.5)
        k = len(self.blur_sigmas)
        d_raw = self.fourier.out_dim + in_channels * (1 + k + max(k - 1, 0) + (2 * k if blur_gradients else 0))
        self.embed = NoiseEmbedding(emb_dim, num_classes)
        self.inp = nn.Linear(d_raw, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden, d_raw, emb_dim, mlp_ratio) for _ in range(depth))
        self.out_norm, self.out = output_head(nn.LayerNorm(hidden), nn.Linear(hidden, self.out_channels), zero_init_output)

    def forward(
        self, values: Tensor, coords: Tensor, logsnr: Tensor, grid: tuple[int, int], cond: Tensor | None = None
    ) -> Tensor:
        """``(B, N, C_in)`` at ``coords`` -> ``(B, N, C_out)`` (see :mod:`.base`)."""
        h, w = self.check_inputs(values, coords, logsnr, grid)
        c, k = values.shape[-1], len(self.blur_sigmas)
        feats = blur_features(values, coords, grid, self.blur_sigmas, self.blur_gradients)
        blurs = feats[..., : k * c]
        parts = [self.fourier(coords).to(values.dtype), values, blurs]
        if k > 1:
            parts.append(blurs[..., :-c] - blurs[..., c:])  # band-pass (difference of Gaussians)
        if self.blur_gradients:
            parts.append(feats[..., k * c:])
        raw = torch.cat(parts, dim=-1)
        emb = self.embed(logsnr, cond)
        x = self.inp(raw)
        for blk in self.blocks:
            x = blk(x, raw, emb)
        return head(self.out_norm, self.out, x, fp32=True)  # to the data's channels in fp32
