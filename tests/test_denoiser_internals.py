"""Closed-form checks of the layers behind the denoiser family, and the small configs on digits."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_infdiff.coords import full_indices, index_to_coords, pixel_centres
from lightning_infdiff.denoisers.fno import SpectralConv2d
from lightning_infdiff.denoisers.layers.fourier import (
    AxialAttention,
    FourierFeatures,
    gaussian_blur_masked,
)
from lightning_infdiff.denoisers.siid import SIIDDenoiser, siid_coordinates


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run 2-4x faster on one thread (measured), and 2 OpenMP threads stall badly
    when the 2 cores are shared; restore the session's setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def band_limited(grid: tuple[int, int]) -> torch.Tensor:
    """Two channels of a trigonometric polynomial (max 3 cycles per side) at the pixel centres."""
    c = pixel_centres(grid)
    y, x = c[:, 0], c[:, 1]
    a = torch.sin(2 * math.pi * (2 * x + y)) + torch.cos(2 * math.pi * (3 * y - x) + 0.3)
    b = torch.cos(2 * math.pi * x) - 0.5 * torch.sin(2 * math.pi * 2 * y)
    return torch.stack([a, b]).reshape(1, 2, *grid)


@pytest.mark.parametrize("grids", [((32, 24), (64, 48)), ((64, 48), (17, 13)), ((15, 31), (40, 40))])
def test_spectral_conv_is_resolution_consistent(grids) -> None:
    """Same function in -> same function out, whatever grid it is sampled or evaluated on.

    Exact (to fp32) for band-limited inputs thanks to forward-normalised coefficients and the
    pixel-centre phase correction; evaluating on another grid equals computing there.
    """
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, modes=6)
    g_in, g_out = grids
    cross = conv(band_limited(g_in), g_out)
    native = conv(band_limited(g_out))
    torch.testing.assert_close(cross, native, atol=2e-5, rtol=1e-4)


def test_spectral_conv_drops_modes_the_grid_cannot_carry() -> None:
    conv = SpectralConv2d(1, 1, modes=12)
    out = conv(torch.randn(2, 1, 5, 6))
    assert out.shape == (2, 1, 5, 6) and torch.isfinite(out).all()


def test_fourier_features_shape_and_values() -> None:
    ff = FourierFeatures(2, num_freqs=3, min_freq=0.5)
    c = torch.tensor([[0.25, 0.5]])
    out = ff(c)
    assert out.shape == (1, ff.out_dim) == (1, 2 * 7)
    torch.testing.assert_close(out[0, 2], torch.sin(torch.tensor(2 * math.pi * 0.5 * 0.25)))


def test_masked_blur_is_a_normalised_average() -> None:
    """Constant on the present points -> the same constant wherever a point is within reach."""
    mask = (torch.rand(2, 1, 12, 9) < 0.3).float()
    out = gaussian_blur_masked(3.0 * mask, mask, (0.2, 2.0))
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


def test_masked_blur_same_physical_width_at_every_resolution() -> None:
    """A smooth field blurred at 32² and 64² agrees (sigma is in image fractions)."""
    def blur(n: int) -> torch.Tensor:
        f = band_limited((n, n))[:, :1]
        return gaussian_blur_masked(f, torch.ones(1, 1, n, n), (0.1,))

    b32, b64 = blur(32), blur(64)
    b64_at_32 = torch.nn.functional.avg_pool2d(b64, 2)
    assert (b32 - b64_at_32).abs()[..., 8:-8, 8:-8].max() < 0.02


def test_axial_attention_ignores_absent_points() -> None:
    """Changing a masked-out pixel's features must not change any present pixel's output."""
    attn = AxialAttention(8, heads=2)
    x = torch.randn(1, 6, 5, 8)
    mask = torch.rand(1, 6, 5) < 0.5
    mask[0, 0, 0] = False
    ys, xs = torch.linspace(0, 1, 6), torch.linspace(0, 1, 5)
    out = attn(x, ys, xs, mask)
    x2 = x.clone()
    x2[0, 0, 0] += 10.0
    out2 = attn(x2, ys, xs, mask)
    # Present pixels see other rows only through present pixels of the row pass.
    torch.testing.assert_close(out2[mask], out[mask])


def test_siid_coordinate_systems() -> None:
    """Composition: domain units centred on the training image; image: the window's edges at +-1/2.
    On the unit square (a stretch grid) they coincide; on a wide 32x64 window the composition
    spans twice as far along x while the image coordinates still mark the edges."""
    from lightning_infdiff.coords import Grid

    comp, image = siid_coordinates(torch.tensor([[0.0, 1.0]]), (32, 64))
    torch.testing.assert_close(image, torch.tensor([[-0.5, 0.5]]))
    torch.testing.assert_close(comp, torch.tensor([[-0.5, 0.5]]))
    corners = torch.tensor([[0.0, -0.5], [1.0, 1.5]])  # the wide window's corners in domain units
    comp, image = siid_coordinates(corners, Grid(32, 64, "wide"))
    torch.testing.assert_close(image, torch.tensor([[-0.5, -0.5], [0.5, 0.5]]))
    torch.testing.assert_close(comp, torch.tensor([[-0.5, -1.0], [0.5, 1.0]]))


def test_siid_jitter_only_in_training() -> None:
    torch.manual_seed(0)
    model = SIIDDenoiser(1, channels=16, depth=1, heads=2, num_freqs=4, emb_dim=16, zero_init_output=False)
    idx = full_indices(1, (8, 8))
    args = (torch.randn(1, 64, 1), index_to_coords(idx, (8, 8)), torch.zeros(1), (8, 8))
    model.eval()
    torch.testing.assert_close(model(*args), model(*args))
    model.train()
    assert (model(*args) - model(*args)).abs().max() > 1e-6


def test_siid_patch_folds_pixel_blocks_into_tokens() -> None:
    """``patch=r`` (SIID's pixel unshuffle): the blocks attend over (H/r) x (W/r) tokens; the
    output is per point, equivariant to the points' order, and every weight is used."""
    torch.manual_seed(0)
    model = SIIDDenoiser(1, channels=16, depth=1, heads=2, num_freqs=4, emb_dim=16, zero_init_output=False,
                         patch=2).eval()
    lengths = []
    model.blocks[0].attn.qkv[0].register_forward_hook(lambda m, i, o: lengths.append(tuple(i[0].shape[:2])))
    grid = (16, 24)
    idx = torch.randperm(16 * 24)[None, :200]
    values, coords = torch.randn(1, 200, 1), index_to_coords(idx, grid)
    with torch.no_grad():
        out = model(values, coords, torch.zeros(1), grid)
        perm = torch.randperm(200)
        out_p = model(values[:, perm], coords[:, perm], torch.zeros(1), grid)
    assert out.shape == (1, 200, 1) and lengths[0] == (8, 12)  # 8 rows of 12 tokens
    torch.testing.assert_close(out_p, out[:, perm])
    with torch.no_grad():  # the zero-initialised projections would block the gradient upstream
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    model.train()
    model(values, coords, torch.zeros(1), grid).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_siid_patch_pads_a_grid_that_does_not_divide() -> None:
    """A 13x7 grid with patch 4 runs on 4x2 tokens (rows of 2 tokens, 8 of them in the batch of 2
    images), the padding being absent pixels, so every H x W still samples."""
    torch.manual_seed(0)
    model = SIIDDenoiser(1, channels=16, depth=1, heads=2, num_freqs=4, emb_dim=16, zero_init_output=False,
                         patch=4).eval()
    lengths = []
    model.blocks[0].attn.qkv[0].register_forward_hook(lambda m, i, o: lengths.append(tuple(i[0].shape[:2])))
    idx = full_indices(2, (13, 7))
    with torch.no_grad():
        out = model(torch.randn(2, 91, 1), index_to_coords(idx, (13, 7)), torch.zeros(2), (13, 7))
    assert out.shape == (2, 91, 1) and torch.isfinite(out).all() and lengths[0] == (8, 2)
    with pytest.raises(ValueError, match="positive integer"):
        SIIDDenoiser(1, patch=0)


@pytest.mark.parametrize("side", [32, 64])
def test_blur_gradients_of_a_ramp_are_its_slope_times_sigma(side: int) -> None:
    """On the linear field ``v = 0.7 y - 1.3 x`` a normalised blur is the field itself away from
    the border, so the scale-normalised gradient is ``σ (0.7, -1.3)`` at every grid."""
    from lightning_infdiff.denoisers.coord_mlp import blur_features

    sigmas = (1 / 32, 1 / 16)
    grid = (side, side)
    coords = pixel_centres(grid)[None]
    v = (0.7 * coords[..., 0] - 1.3 * coords[..., 1])[..., None]
    feats = blur_features(v, coords, grid, sigmas, gradients=True).view(side, side, 6)
    inner = feats[side // 4: -side // 4, side // 4: -side // 4]  # 3σ of the widest blur from every edge
    torch.testing.assert_close(inner[..., :2], v.view(side, side, 1)[side // 4: -side // 4, side // 4: -side // 4]
                               .expand(-1, -1, 2), atol=1e-4, rtol=0)
    for i, s in enumerate(sigmas):
        torch.testing.assert_close(inner[..., 2 + i], torch.full_like(inner[..., 0], 0.7 * s), atol=1e-4, rtol=0)
        torch.testing.assert_close(inner[..., 4 + i], torch.full_like(inner[..., 0], -1.3 * s), atol=1e-4, rtol=0)
