"""Fourier neural operator denoiser (Li et al. 2021) and its U-shaped variant (Rahman et al. 2022).

A Fourier layer (∞-Diff, section 4.1, eq. 10) is ``v ↦ σ(W v + G⁻¹(R_φ · G v))``: a point-wise
linear map plus a learned multiplier ``R_φ`` on the lowest Fourier modes. Three details make
the same weights act on the same *function* at every grid:

* **Coefficient normalisation.** ``rfft2(norm="forward")`` divides by ``H·W``, so the retained
  coefficients approximate the Fourier-series coefficients of the underlying function and do
  not grow with the pixel count; ``irfft2(norm="forward")`` then evaluates that series.
* **Pixel-centre phase.** Samples sit at ``(i + ½)/N`` (:mod:`lightning_infdiff.coords`), so the
  DFT of the samples is the series coefficient times ``exp(iπk/N)``. The phase is removed after
  the forward transform and re-applied for the output grid, which matters when input and
  output grids differ (the UNO's resampling layers).
* **Mode truncation.** Mode ``k`` means ``k`` cycles per domain side at every resolution; on a
  grid too coarse to carry a mode, the mode is dropped.
* **Wider windows.** On a ``wide`` canvas (:mod:`lightning_infdiff.coords`) the FFT's period is
  longer than the unit square's, so its mode ``k`` is ``k · P_train / P`` training modes (``P``
  the padded window in domain units); the learned multipliers are interpolated there
  (bilinearly over the signed mode lattice) and modes beyond the trained ones are dropped.

Images are not periodic: the canvas is zero-padded by a fixed *fraction* of its side
(``domain_padding``, as in neuraloperator) and the Fourier-feature coordinates of the pixel
centres are appended to the input, so the boundary is visible to the network.

Conditioning is per sample: GroupNorm followed by FiLM from the logSNR/class embedding
(neuraloperator's own conditioning is one scalar for the whole batch, which is not enough for a
diffusion batch with one noise level per example). FFTs run in fp32 with autocast disabled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coords import as_grid, pixel_centres
from .base import GridDenoiser
from .layers.adm import group_norm
from .layers.common import FiLM, head, output_head, zero_module
from .layers.embeddings import NoiseEmbedding
from .layers.fourier import FourierFeatures

__all__ = ["SpectralConv2d", "FNOBlock", "FNODenoiser"]


class SpectralConv2d(nn.Module):
    """Resolution-consistent spectral convolution ``G⁻¹(R_φ · G v)`` (Li et al. 2021, eq. 4).

    Keeps modes ``|k_y| < modes`` and ``0 <= k_x < modes``; weights for negative ``k_y`` are a
    separate block. The output may be evaluated on another grid (``out_size``), which is how the
    U-shaped variant changes resolution (Rahman et al. 2022).

    Args:
        in_channels: input width.
        out_channels: output width.
        modes: retained modes per axis (cycles per domain side).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int = 12) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / math.sqrt(in_channels * out_channels)
        # Real and imaginary parts stored as a trailing axis of 2 (optimiser/bf16 friendly).
        self.weight_pos = nn.Parameter(scale * torch.randn(in_channels, out_channels, modes, modes, 2))
        self.weight_neg = nn.Parameter(scale * torch.randn(in_channels, out_channels, modes, modes, 2))

    @staticmethod
    def _phase(n: int, k: Tensor) -> Tensor:
        return torch.exp(1j * math.pi * k.to(torch.float32) / n)

    @staticmethod
    def _mix(spec: Tensor, wgt: Tensor) -> Tensor:
        """Per-mode complex channel mixing ``out[b,o,k] = Σ_i spec[b,i,k] w[i,o,k]`` as one real bmm.

        ``[Re, Im] @ [[W_r, W_i], [-W_i, W_r]]`` per mode: complex ``einsum`` falls back to a slow
        batched complex matmul on CPU, far slower than one real bmm.
        """
        b, i, ky, kx = spec.shape
        o = wgt.shape[1]
        s = torch.view_as_real(spec).permute(2, 3, 0, 4, 1).reshape(ky * kx, b, 2 * i)  # [Re | Im]
        wr, wi = wgt.permute(2, 3, 0, 1, 4).reshape(ky * kx, i, o, 2).unbind(-1)
        block = torch.cat([torch.cat([wr, wi], dim=-1), torch.cat([-wi, wr], dim=-1)], dim=1)  # (K, 2i, 2o)
        out = torch.bmm(s, block).view(ky, kx, b, 2, o).permute(2, 4, 0, 1, 3)
        return torch.view_as_complex(out.contiguous())

    def _weights_at(self, ky: Tensor, kx: Tensor) -> Tensor:
        """Multipliers ``(C_in, C_out, len(ky), len(kx), 2)`` at fractional training modes
        (bilinear over the signed modes ``-modes .. modes-1`` by ``0 .. modes-1``)."""
        m = self.modes
        signed = torch.cat([self.weight_neg.flip(2), self.weight_pos], dim=2).float()  # k_y = -m .. m-1

        def corners(pos: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
            lo = pos.floor().long().clamp(0, size - 1)
            hi = (lo + 1).clamp(max=size - 1)
            return lo, hi, (pos - lo).clamp(0.0, 1.0).to(signed.dtype)

        y0, y1, fy = corners(ky + m, 2 * m)
        x0, x1, fx = corners(kx, m)
        rows = signed.index_select(2, y0) * (1 - fy)[:, None, None] + signed.index_select(2, y1) * fy[:, None, None]
        return rows.index_select(3, x0) * (1 - fx)[:, None] + rows.index_select(3, x1) * fx[:, None]

    def forward(self, x: Tensor, out_size: tuple[int, int] | None = None,
                mode_scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H', W')`` with ``(H', W') = out_size or (H, W)``.

        ``mode_scale``: training modes per FFT mode along each axis (1 on the unit square; see
        the module docstring's "wider windows").
        """
        h, w = x.shape[-2:]
        ho, wo = out_size or (h, w)
        if tuple(mode_scale) != (1.0, 1.0):
            return self._forward_scaled(x, (ho, wo), mode_scale)
        # Nyquist modes are ambiguous (they alias +-N/2), so only |k| < N/2 on both grids is kept.
        my = min(self.modes, (h + 1) // 2, (ho + 1) // 2)  # k_y = 0 .. my-1
        myn = min(self.modes, (h - 1) // 2, (ho - 1) // 2)  # k_y = -1 .. -myn
        mx = min(self.modes, (w + 1) // 2, (wo + 1) // 2)  # k_x = 0 .. mx-1
        return self._spectral(x, (ho, wo), (my, myn, mx), lambda ky, kx: torch.cat(
            [self.weight_pos[:, :, :my, :mx], self.weight_neg[:, :, :myn, :mx]], dim=2).float())

    def _forward_scaled(self, x: Tensor, out_size: tuple[int, int], mode_scale: tuple[float, float]) -> Tensor:
        """:meth:`forward` on a window whose FFT modes are ``mode_scale`` training modes each."""
        h, w = x.shape[-2:]
        ho, wo = out_size
        sy, sx = (float(v) for v in mode_scale)
        m = self.modes
        # FFT modes whose training mode lies among the trained ones, and below both grids' Nyquist
        my = min(math.ceil((m - 1) / sy + 1e-9), (h + 1) // 2, (ho + 1) // 2)
        myn = min(math.floor(m / sy + 1e-9), (h - 1) // 2, (ho - 1) // 2)
        mx = min(math.ceil((m - 1) / sx + 1e-9), (w + 1) // 2, (wo + 1) // 2)
        return self._spectral(x, (ho, wo), (my, myn, mx), lambda ky, kx: self._weights_at(ky.float() * sy, kx.float() * sx))

    def _spectral(self, x: Tensor, out_size: tuple[int, int], modes: tuple[int, int, int],
                  weights: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """``G⁻¹(R · G x)`` on ``out_size`` over FFT modes ``k_y = 0 .. my-1, -1 .. -myn`` and
        ``k_x = 0 .. mx-1`` (``modes = (my, myn, mx)``), ``R = weights(k_y, k_x)``, in fp32."""
        b, _, h, w = x.shape
        ho, wo = out_size
        my, myn, mx = modes
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = torch.fft.rfft2(x.float(), norm="forward")  # (B, C, H, W//2+1)
            ky = torch.cat([torch.arange(my, device=x.device), -(torch.arange(myn, device=x.device) + 1)])
            kx = torch.arange(mx, device=x.device)
            spec = xf[:, :, ky % h][..., :mx]
            shift_in = (self._phase(h, ky)[:, None] * self._phase(w, kx)[None, :]).conj()
            shift_out = self._phase(ho, ky)[:, None] * self._phase(wo, kx)[None, :]
            wgt = weights(ky, kx)
            out_modes = self._mix(spec * shift_in, wgt) * shift_out
            out = xf.new_zeros(b, wgt.shape[1], ho, wo // 2 + 1)
            out[:, :, ky % ho, :mx] = out_modes
            return torch.fft.irfft2(out, s=(ho, wo), norm="forward")


class FNOBlock(nn.Module):
    """``x' = P(x) + MLP(σ(FiLM(GN(x)) ↦ spectral + pointwise))`` at ``out_size``.

    ``P`` is the identity (or a 1x1 conv when widths differ) resampled bilinearly to the output
    grid. The MLP's last layer is zero-initialised, so a block starts as the identity.

    Args:
        in_channels: input width.
        out_channels: output width.
        emb_dim: conditioning width.
        modes: spectral modes per axis.
        mlp_ratio: hidden width of the channel MLP in units of ``out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, modes: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm = group_norm(in_channels)
        self.film = FiLM(emb_dim, in_channels, channel_dim=1)
        self.spectral = SpectralConv2d(in_channels, out_channels, modes)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(out_channels, mlp_ratio * out_channels, 1), nn.GELU(),
            zero_module(nn.Conv2d(mlp_ratio * out_channels, out_channels, 1)),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    @staticmethod
    def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        # The antialiased kernel has no bf16 CPU implementation: resample in fp32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        return y.to(x.dtype)

    def forward(self, x: Tensor, emb: Tensor, out_size: tuple[int, int] | None = None,
                mode_scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, *out_size)``."""
        size = out_size or tuple(x.shape[-2:])
        h = self.film(self.norm(x), emb)
        h = self.spectral(h, size, mode_scale).to(h.dtype) + self._resize(self.pointwise(h), size)
        return self._resize(self.skip(x), size) + self.mlp(F.gelu(h))


class FNODenoiser(GridDenoiser):
    """FNO (``levels=1``) or U-shaped neural operator (UNO, ``levels>1``) grid denoiser.

    ``canvas ⊕ γ(coords)`` -> 1x1 lift -> Fourier blocks -> 1x1 projection. With ``levels > 1``
    each level halves the grid (spectral layers evaluated on the coarser grid) and widens by
    ``channel_mult``; the way up doubles the grid back to the exact skip size (odd sizes
    work) and concatenates skips, as in U-NO (Rahman et al. 2022).

    Args:
        in_channels: channels of the noisy field.
        out_channels: prediction channels (defaults to ``in_channels``).
        num_classes: classes for conditioning (``0``: none; label ``num_classes`` = null).
        width: channels of the first level.
        modes: Fourier modes per axis at the first level (halved per level, at least 4).
        depth: Fourier blocks per level (the FNO's layer count when ``levels=1``).
        levels: 1 for a plain FNO; more for the U-shaped variant.
        channel_mult: width multiplier per level (length ``levels``; default doubles).
        mlp_ratio: hidden width of the block MLPs.
        domain_padding: zero padding on each side as a fraction of the side (non-periodic data).
        coord_freqs: octaves of the Fourier features of the pixel-centre coordinates (0: none).
        emb_dim: width of the logSNR/class embedding.
        zero_init_output: zero-initialise the output projection.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_classes: int = 0,
        width: int = 64,
        modes: int = 12,
        depth: int = 4,
        levels: int = 1,
        channel_mult: Sequence[int] | None = None,
        mlp_ratio: int = 2,
        domain_padding: float = 0.125,
        coord_freqs: int = 4,
        emb_dim: int = 128,
        zero_init_output: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, num_classes)
        mult = list(channel_mult) if channel_mult is not None else [2**i for i in range(levels)]
        if levels < 1 or len(mult) != levels:
            raise ValueError(f"need levels >= 1 and len(channel_mult) == levels, got {levels} and {mult}")
        self.levels, self.domain_padding = levels, domain_padding
        self.embed = NoiseEmbedding(emb_dim, num_classes)
        self.coord_features = FourierFeatures(2, coord_freqs, 1.0) if coord_freqs > 0 else None
        lift_in = self.grid_in_channels + (self.coord_features.out_dim if self.coord_features else 0)
        self.lift = nn.Conv2d(lift_in, width * mult[0], 1)
        widths = [width * m for m in mult]
        lmodes = [max(4, modes // 2**i) for i in range(levels)]
        self.down = nn.ModuleList()
        for i in range(levels):
            cin = widths[i - 1] if i else widths[0]
            blocks = [FNOBlock(cin if j == 0 else widths[i], widths[i], emb_dim, lmodes[i], mlp_ratio) for j in range(depth)]
            self.down.append(nn.ModuleList(blocks))
        self.up = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            blocks = [FNOBlock(widths[i + 1] + widths[i] if j == 0 else widths[i], widths[i], emb_dim, lmodes[i], mlp_ratio)
                      for j in range(depth)]
            self.up.append(nn.ModuleList(blocks))
        self.out_norm, self.out = output_head(group_norm(widths[0]), nn.Conv2d(widths[0], self.out_channels, 1),
                                              zero_init_output)

    def forward_grid(
        self, canvas: Tensor, logsnr: Tensor, cond: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        """``(B, C_in + 1, H, W)`` -> ``(B, C_out, H, W)``; ``grid`` places the canvas (default: the unit square)."""
        b, _, h, w = canvas.shape
        grid = as_grid((h, w)) if grid is None else as_grid(grid)
        emb = self.embed(logsnr, cond)
        x = canvas
        if self.coord_features is not None:
            pos = self.coord_features(pixel_centres(grid, canvas.device)).to(canvas.dtype)
            x = torch.cat([x, pos.T.reshape(1, -1, h, w).expand(b, -1, h, w)], dim=1)
        # padding: a fraction of the domain unit; on a wider window the FFT period grows with it
        dy, dx = grid.density
        py, px = round(self.domain_padding * dy), round(self.domain_padding * dx)
        scale = (1.0, 1.0) if grid.unit else ((dy + 2 * py) / (h + 2 * py), (dx + 2 * px) / (w + 2 * px))
        x = F.pad(self.lift(x), (px, px, py, py))
        sizes = [tuple(x.shape[-2:])]
        for _ in range(self.levels - 1):
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        skips = []
        for i, blocks in enumerate(self.down):
            for j, blk in enumerate(blocks):
                x = blk(x, emb, sizes[i] if j == 0 else None, scale)
            skips.append(x)
        skips.pop()
        for i, blocks in zip(reversed(range(self.levels - 1)), self.up, strict=True):
            skip = skips.pop()
            x = FNOBlock._resize(x, sizes[i])
            x = torch.cat([x, skip.to(x.dtype)], dim=1)
            for blk in blocks:
                x = blk(x, emb, None, scale)
        x = x[..., py: py + h, px: px + w]
        return head(self.out_norm, self.out, x)
