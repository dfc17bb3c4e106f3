"""ADM U-Net: shapes, attention/dropout placement, gradients, grid-denoiser wrapper."""

import pytest
import torch
from torch import nn

from lightning_infdiff.coords import index_to_coords
from lightning_infdiff.denoisers.layers.adm import AttentionBlock, ResBlock
from lightning_infdiff.denoisers.unet import ADMUNet
from lightning_infdiff.denoisers.unet_denoiser import ADMUNetDenoiser


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops: a descheduled second OpenMP thread stalls each op on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_unet(**kw):
    args = dict(in_channels=5, out_channels=4, emb_dim=16, resolution=16, channels=16, channel_mult=(1, 2, 2),
                num_res_blocks=1, attention_resolutions=(8, 4), dropout=0.2, dropout_resolution=8, head_channels=16)
    args.update(kw)
    return ADMUNet(**args)


@pytest.mark.parametrize("size", [(16, 16), (8, 8), (32, 20)])
def test_unet_shapes(size):
    net = small_unet()
    out = net(torch.randn(2, 5, *size), torch.randn(2, 16))
    assert out.shape == (2, 4, *size)


def test_unet_rejects_indivisible_grid():
    with pytest.raises(ValueError, match="divisible"):
        small_unet()(torch.randn(1, 5, 10, 10), torch.randn(1, 16))


def test_attention_and_dropout_only_at_low_resolutions():
    net = small_unet()
    # resolutions: 16 (level 0), 8 (level 1), 4 (level 2 + middle)
    n_attn = sum(isinstance(m, AttentionBlock) for m in net.modules())
    # down: 1 at 8, 1 at 4; middle: 1; up: 2 at 4, 2 at 8
    assert n_attn == 7
    for mods in list(net.down)[:1]:  # first level, 16x16
        for m in mods.modules():
            if isinstance(m, nn.Dropout):
                assert m.p == 0.0
    ps = {m.p for m in net.modules() if isinstance(m, nn.Dropout)}
    assert ps == {0.0, 0.2}


def test_unet_every_parameter_gets_a_gradient():
    net = small_unet(dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, emb = torch.randn(2, 5, 16, 16), torch.randn(2, 16)
    for step in range(3):  # zero-initialised convs block upstream gradients at first
        opt.zero_grad()
        (net(x, emb) - 1).pow(2).mean().backward()
        if step < 2:
            opt.step()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, missing


def test_resblock_starts_as_identity():
    blk = ResBlock(8, 8, 4)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(blk(x, torch.randn(2, 4)), x)


def test_unet_denoiser_interface_on_subsets_and_other_grids():
    model = ADMUNetDenoiser(in_channels=3, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(8,), resolution=16, emb_dim=32, num_classes=2)
    for grid in [(16, 16), (32, 24), (15, 21)]:
        h, w = grid
        idx = torch.stack([torch.randperm(h * w)[: h * w // 4] for _ in range(2)])
        out = model(torch.randn(2, idx.shape[1], 3), index_to_coords(idx, grid), torch.randn(2), grid,
                    torch.tensor([0, 2]))
        assert out.shape == (2, idx.shape[1], 3)


def _group_norm_pair():
    """A GroupNorm(4, 16) with random affine parameters and a LayoutGroupNorm holding the same."""
    import torch

    from lightning_infdiff.denoisers.layers.adm import LayoutGroupNorm

    torch.manual_seed(0)
    ref = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(ref.weight)
    torch.nn.init.normal_(ref.bias)
    fast = LayoutGroupNorm(4, 16)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_layout_group_norm_matches_group_norm_and_keeps_the_layout():
    """The channels_last fast path of LayoutGroupNorm is GroupNorm, values and gradients."""
    import torch

    ref, fast = _group_norm_pair()
    x = torch.randn(3, 16, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    out, want = fast(x), ref(x2)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    # the gradient reaching a non-leaf input has the input's layout, whatever layout the output's
    # gradient has (so autograd never adds gradients of mixed layouts, slow on CPU)
    for grad_out in (g, g.contiguous()):
        x3 = x.detach().clone().requires_grad_(True)
        y = x3 * 1.0
        seen = []
        y.register_hook(lambda t, seen=seen: seen.append(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()))
        fast(y).backward(grad_out)
        assert seen == [True]
    with torch.no_grad():  # the no-grad path (sampling) computes the same values
        torch.testing.assert_close(fast(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x3.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_layout_group_norm_without_gradients_on_small_and_large_maps():
    """Both no-grad paths (a contiguous copy below 32², torch's channels_last kernel from 32² on)
    give GroupNorm's values in the input's layout; with gradients the copy is always taken."""
    import torch

    from lightning_infdiff.denoisers.layers.adm import LayoutGroupNorm

    ref, fast = _group_norm_pair()
    for side, copies in ((8, True), (32, False), (40, False)):
        x = torch.randn(2, 16, side, side).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            assert LayoutGroupNorm.relayout_pays(x) is copies
            out = fast(x)
            torch.testing.assert_close(out, ref(x.contiguous()), atol=1e-5, rtol=1e-5)
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        assert LayoutGroupNorm.relayout_pays(x)  # gradients recorded here
