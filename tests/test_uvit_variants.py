"""U-ViT input transforms (Haar DWT, patching) and axial RoPE positions: closed forms and contracts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_infdiff.coords import full_indices, index_to_coords
from lightning_infdiff.denoisers.layers.dwt import HaarDWT, haar_forward, haar_inverse
from lightning_infdiff.denoisers.layers.rope import AxialRoPE, apply_rope
from lightning_infdiff.denoisers.uvit import UViTDenoiser

K = 3


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- Haar DWT
def test_haar_one_level_closed_form():
    """A 2x2 block [[a, b], [c, d]] maps to ½[a+b+c+d, a-b+c-d, a+b-c-d, a-b-c+d]."""
    a, b, c, d = 1.0, 2.0, 4.0, 8.0
    x = torch.tensor([[[[a, b], [c, d]]]], dtype=torch.float64)
    y = haar_forward(x).flatten().tolist()
    assert y == pytest.approx([0.5 * (a + b + c + d), 0.5 * (a - b + c - d), 0.5 * (a + b - c - d),
                               0.5 * (a - b - c + d)])
    const = torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64)
    y = HaarDWT(2)(const)  # LL of a constant field: value * 2^levels, all details zero
    assert y.shape == (1, 16, 1, 1)
    assert y[0, 0].item() == pytest.approx(12.0) and y[0, 1:].abs().max().item() < 1e-12


@pytest.mark.parametrize("levels,shape", [(1, (2, 3, 6, 10)), (2, (1, 2, 8, 12)), (3, (2, 1, 16, 8))])
def test_haar_exact_inverse_and_orthonormal(levels, shape):
    g = torch.Generator().manual_seed(levels)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    dwt = HaarDWT(levels)
    y = dwt(x)
    f = 2**levels
    assert y.shape == (shape[0], shape[1] * 4**levels, shape[2] // f, shape[3] // f)
    torch.testing.assert_close(dwt.inverse(y), x, rtol=0, atol=1e-12)
    # orthonormal: norms and inner products are preserved, and the inverse is the transpose
    x2 = torch.randn(shape, generator=g, dtype=torch.float64)
    assert (y * dwt(x2)).sum().item() == pytest.approx((x * x2).sum().item(), rel=1e-12)
    yr = torch.randn(y.shape, generator=g, dtype=torch.float64)
    assert (dwt(x) * yr).sum().item() == pytest.approx((x * dwt.inverse(yr)).sum().item(), rel=1e-12)


def test_haar_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 4"):
        HaarDWT(2)(torch.zeros(1, 1, 6, 8))
    with pytest.raises(ValueError, match="multiple of 4"):
        haar_inverse(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="levels"):
        HaarDWT(0)


# ---------------------------------------------------------------- RoPE
def test_rope_score_closed_form_depends_on_offset_only():
    """⟨R(θ p_i) q, R(θ p_j) k⟩ = Σ_m (q₁k₁ + q₂k₂) cos θ_mΔ + (q₂k₁ − q₁k₂) sin θ_mΔ, Δ = p_j − p_i."""
    head = 8
    rope = AxialRoPE(head, min_freq=0.5, max_freq=4.0)
    omega = 2 * math.pi * torch.tensor([0.5, 4.0], dtype=torch.float64)  # geometric with 2 pairs per axis
    torch.testing.assert_close(rope.omega.double(), omega, rtol=1e-6, atol=0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(head, generator=g), torch.randn(head, generator=g)
    coords = torch.rand(6, 2, generator=g)
    cos, sin = rope(coords)
    qr = apply_rope(q.expand(6, head), cos, sin).double()
    kr = apply_rope(k.expand(6, head), cos, sin).double()
    scores = qr @ kr.T
    q1, q2, k1, k2 = q[0::2].double(), q[1::2].double(), k[0::2].double(), k[1::2].double()
    theta = torch.cat([omega, omega])  # pairs 0,1 turn with y, pairs 2,3 with x
    axis = torch.tensor([0, 0, 1, 1])
    for i in range(6):
        for j in range(6):
            delta = (coords[j, axis] - coords[i, axis]).double()
            expect = ((q1 * k1 + q2 * k2) * torch.cos(theta * delta) + (q2 * k1 - q1 * k2) * torch.sin(theta * delta))
            assert scores[i, j].item() == pytest.approx(expect.sum().item(), abs=1e-5)
    # translating every coordinate leaves all scores unchanged; a relative change does not
    cos2, sin2 = rope(coords + torch.tensor([0.37, -0.81]))
    scores2 = apply_rope(q.expand(6, head), cos2, sin2).double() @ apply_rope(k.expand(6, head), cos2, sin2).double().T
    torch.testing.assert_close(scores2, scores, rtol=0, atol=1e-5)
    cos3, sin3 = rope(coords * 1.5)
    scores3 = apply_rope(q.expand(6, head), cos3, sin3).double() @ apply_rope(k.expand(6, head), cos3, sin3).double().T
    assert (scores3 - scores).abs().max() > 1e-2


def test_rope_preserves_norm_and_needs_divisible_width():
    rope = AxialRoPE(12)
    x = torch.randn(5, 12)
    cos, sin = rope(torch.rand(5, 2))
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    with pytest.raises(ValueError, match="divisible by 4"):
        AxialRoPE(10)


# ---------------------------------------------------------------- U-ViT variants
def tiny(**kw) -> UViTDenoiser:
    args = dict(resolution=16, transformer_resolution=8, channels=8, channel_mult=(1,), num_res_blocks=1,
                num_transformer_blocks=2, heads=2, emb_dim=16, dropout=0.1, pos_freqs=3)
    args.update(kw)
    return UViTDenoiser(1, num_classes=K, **args)


VARIANTS = {
    "rope": lambda: tiny(position="rope"),
    "dwt1": lambda: tiny(dwt_levels=1, channel_mult=()),
    "dwt1_conv": lambda: tiny(dwt_levels=1, transformer_resolution=4),
    "dwt2_rope": lambda: tiny(dwt_levels=2, transformer_resolution=4, channel_mult=(), position="rope"),
}


def randomise_zeros(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def inputs(grid, batch=2, frac=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    n = max(1, int(frac * h * w))
    idx = torch.stack([torch.randperm(h * w, generator=g)[:n] for _ in range(batch)])
    return torch.randn(batch, n, 1, generator=g), index_to_coords(idx, grid), torch.tensor([2.0, -1.0][:batch])


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("grid", [(16, 16), (32, 32), (12, 20), (13, 7)])
@pytest.mark.parametrize("frac", [1.0, 0.25])
def test_variant_shapes_finite_any_grid(name, grid, frac):
    model = randomise_zeros(VARIANTS[name]()).eval()
    values, coords, lam = inputs(grid, frac=frac)
    out = model(values, coords, lam, grid, torch.tensor([0, K]))
    assert out.shape == values.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_every_parameter_gets_gradient_and_conditioning_matters(name):
    torch.manual_seed(0)
    model = randomise_zeros(VARIANTS[name]()).eval()
    values, coords, lam = inputs((16, 16), frac=0.5)
    out = model(values, coords, lam, (16, 16), torch.tensor([1, 2]))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    with torch.no_grad():
        assert (model(values, coords, lam + 3.0, (16, 16), torch.tensor([1, 2])) - out).abs().max() > 1e-4
        assert (model(values, coords, lam, (16, 16), torch.tensor([0, 0])) - out).abs().max() > 1e-4


def test_rope_variant_replaces_the_position_table_and_changes_attention():
    four, rope = randomise_zeros(tiny()), randomise_zeros(tiny(position="rope"))
    assert {n for n, _ in four.named_parameters()} - {n for n, _ in rope.named_parameters()} == {
        "pos_proj.weight", "pos_proj.bias"}
    # same weights, Fourier positions switched off (zero projection): the two differ only by RoPE
    rope.load_state_dict({k: v for k, v in four.state_dict().items() if not k.startswith("pos_proj")})
    with torch.no_grad():
        four.pos_proj.weight.zero_()
        four.pos_proj.bias.zero_()
    values, coords, lam = inputs((16, 16))
    with torch.no_grad():
        diff = four.eval()(values, coords, lam, (16, 16)) - rope.eval()(values, coords, lam, (16, 16))
    assert diff.abs().max() > 1e-4


def test_dwt_variant_full_canvas_equals_grid_network():
    model = randomise_zeros(VARIANTS["dwt1"]()).eval()
    grid = (12, 20)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, *grid, generator=g)
    idx = full_indices(2, grid)
    values = x.flatten(2).transpose(1, 2)
    lam = torch.tensor([0.5, 1.5])
    with torch.no_grad():
        out = model(values, index_to_coords(idx, grid), lam, grid)
        direct = model.forward_grid(torch.cat([x, torch.ones(2, 1, *grid)], dim=1), lam)
    torch.testing.assert_close(out, direct.flatten(2).transpose(1, 2))


def test_zero_init_dwt_output_is_zero_and_bad_args_fail():
    model = tiny(dwt_levels=1, channel_mult=())
    values, coords, lam = inputs((16, 16))
    with torch.no_grad():
        assert model(values, coords, lam, (16, 16)).abs().max() == 0
    with pytest.raises(ValueError, match="one input transform"):
        tiny(dwt_levels=1, patch_size=2, channel_mult=())
    with pytest.raises(ValueError, match="position"):
        tiny(position="learned")
    with pytest.raises(ValueError, match="transformer_resolution"):
        tiny(dwt_levels=1)  # 16 / 2 = 8 is reached with no halving, but channel_mult has one entry
