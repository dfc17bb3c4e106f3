"""Sparse depthwise convolution (∞-Diff eq. 16): exactness, backends, kernel resizing."""

import pytest
import torch
import torch.nn.functional as F

from lightning_infdiff.denoisers.layers.sparse_conv import (
    PointLattice,
    SparseDepthwiseConv2d,
    integer_scales,
    resize_kernel,
    resized_kernel_size,
    sparse_depthwise_conv,
    tent_factored_conv2d,
    torchsparse_available,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many small ops: on a shared 2-core machine a second OpenMP thread that
    is descheduled stalls every op by a time slice (measured 50x slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def masked_reference(x, idx, grid, weight, k_train, scale):
    """Explicit loops in float64: K/(s² n) Σ_{sampled neighbours} w v, n weighted by the window."""
    b, n, c = x.shape
    h, w = grid
    kh, kw = weight.shape[-2:]
    box = resize_kernel(torch.ones(1, 1, k_train, k_train, dtype=torch.float64), (kh, kw), scale)
    box = box[0, 0] / (scale[0] * scale[1])
    out = torch.zeros(b, n, c, dtype=torch.float64)
    for bi in range(b):
        where = {int(p): j for j, p in enumerate(idx[bi])}
        for j in range(n):
            y, xx = divmod(int(idx[bi, j]), w)
            acc, cnt = torch.zeros(c, dtype=torch.float64), 0.0
            for a in range(kh):
                for bb in range(kw):
                    yy, xq = y + a - kh // 2, xx + bb - kw // 2
                    if 0 <= yy < h and 0 <= xq < w and yy * w + xq in where:
                        acc += weight[:, 0, a, bb].double() * x[bi, where[yy * w + xq]].double()
                        cnt += float(box[a, bb])
            out[bi, j] = acc * k_train**2 / (scale[0] * scale[1] * cnt)
    return out


@pytest.mark.parametrize("backend", ["dense", "pairs"])
@pytest.mark.parametrize(("grid", "train_res", "n"), [((9, 11), 9, 30), ((8, 8), 8, 64), ((12, 10), 6, 50)])
def test_equals_masked_reference_on_random_subsets(backend, grid, train_res, n):
    h, w = grid
    idx = torch.stack([torch.randperm(h * w)[:n] for _ in range(2)])
    conv = SparseDepthwiseConv2d(3, kernel_size=5, train_resolution=train_res)
    lat = PointLattice.build(idx, grid, 5, train_res, backend)
    assert lat.backend == backend
    x = torch.randn(2, n, 3)
    weight = conv.kernel(lat.kernel_size, lat.scale)
    ref = masked_reference(x, idx, grid, weight.detach(), 5, lat.scale)
    out = conv(x, lat)
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["dense", "pairs"])
def test_full_grid_interior_is_plain_conv_of_resized_kernel(backend):
    """Non-square grid: the width axis is at 13/16 of the training side, so the kernel is resized."""
    h, w, c, k = 16, 13, 4, 7
    img = torch.randn(1, c, h, w)
    perm = torch.randperm(h * w)[None]  # any order of the points
    x = img.reshape(1, c, h * w)[:, :, perm[0]].transpose(1, 2)
    conv = SparseDepthwiseConv2d(c, kernel_size=k, train_resolution=h)
    lat = PointLattice.build(perm, (h, w), k, train_resolution=h, backend=backend)
    assert lat.kernel_size == (7, resized_kernel_size(7, h, w))
    out = conv(x, lat)
    dense = torch.zeros(1, c, h * w)
    dense[:, :, perm[0]] = out.transpose(1, 2)
    dense = dense.view(1, c, h, w)
    kernel = conv.kernel(lat.kernel_size, lat.scale)
    ref = F.conv2d(img, kernel, padding=(kernel.shape[-2] // 2, kernel.shape[-1] // 2), groups=c)
    r0, r1 = kernel.shape[-2] // 2, kernel.shape[-1] // 2
    interior = (slice(None), slice(None), slice(r0, h - r0), slice(r1, w - r1))
    scale = lat.scale[0] * lat.scale[1]
    assert torch.allclose(dense[interior], ref[interior] / scale, atol=1e-5)


@pytest.mark.parametrize("backend", ["dense", "pairs"])
def test_square_training_grid_is_plain_conv_inside(backend):
    h = w = 14
    c = 3
    img = torch.randn(2, c, h, w)
    idx = torch.stack([torch.randperm(h * w) for _ in range(2)])
    x = torch.gather(img.reshape(2, c, -1), 2, idx[:, None].expand(2, c, -1)).transpose(1, 2)
    conv = SparseDepthwiseConv2d(c, 7, train_resolution=h)
    lat = PointLattice.build(idx, (h, w), 7, h, backend)
    out = conv(x, lat)
    ref = F.conv2d(img, conv.weight, padding=3, groups=c).reshape(2, c, -1)
    ref = torch.gather(ref, 2, idx[:, None].expand(2, c, -1)).transpose(1, 2)
    rows, cols = idx // w, idx % w
    inside = (rows >= 3) & (rows < h - 3) & (cols >= 3) & (cols < w - 3)
    assert torch.allclose(out[inside], ref[inside], atol=1e-5)
    assert not torch.allclose(out[~inside], ref[~inside], atol=1e-3)  # the border is renormalised


def test_backends_agree_in_values_and_gradients():
    h, w, c = 20, 17, 5
    idx = torch.stack([torch.randperm(h * w)[:60] for _ in range(3)])
    x = torch.randn(3, 60, c, dtype=torch.float64, requires_grad=True)
    conv = SparseDepthwiseConv2d(c, 7, train_resolution=10).double()
    outs, grads = [], []
    for backend in ["dense", "pairs"]:
        lat = PointLattice.build(idx, (h, w), 7, 10, backend)
        y = conv(x, lat)
        gx, gw = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), (x, conv.weight))
        outs.append(y)
        grads.append((gx, gw))
    assert torch.allclose(outs[0], outs[1], atol=1e-10)
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-10)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-10)


def test_pairs_backward_passes_gradcheck():
    idx = torch.stack([torch.randperm(36)[:12] for _ in range(2)])
    lat = PointLattice.build(idx, (6, 6), 3, 6, "pairs")
    x = torch.randn(2, 12, 2, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sparse_depthwise_conv(a, b, lat), (x, wt))


def test_auto_backend_switches_on_density_at_the_training_grid_only():
    full = torch.arange(256)[None]
    sparse = torch.randperm(256)[None, :20]
    assert PointLattice.build(full, (16, 16), 7, 16, "auto").backend == "dense"
    assert PointLattice.build(sparse, (16, 16), 7, 16, "auto").backend == "pairs"
    # a grid other than the training grid resizes the kernel: dense at any density
    assert PointLattice.build(sparse, (16, 16), 7, 8, "auto").backend == "dense"
    assert PointLattice.build(torch.randperm(16 * 24)[None, :20], (16, 24), 7, 16, "auto").backend == "dense"


@pytest.mark.parametrize(("size", "expected"), [(64, 7), (128, 15), (256, 31), (32, 5), (96, 11)])
def test_resized_kernel_size_is_odd_and_scales(size, expected):
    k = resized_kernel_size(7, 64, size)
    assert k == expected and k % 2 == 1


def test_resize_keeps_old_taps_and_mass():
    w = torch.randn(3, 1, 7, 7)
    w2 = resize_kernel(w, (15, 15), (2.0, 2.0))
    assert torch.allclose(w2[..., 1::2, 1::2], w)  # integer upsampling reproduces the taps
    assert torch.allclose(w2.sum((-1, -2)), 4 * w.sum((-1, -2)), atol=1e-5)  # mass x s²
    w_half = resize_kernel(w, (5, 5), (0.5, 0.5))
    assert torch.allclose(w_half.sum((-1, -2)), 0.25 * w.sum((-1, -2)), atol=1e-5)
    assert resize_kernel(w, (7, 7), (1.0, 1.0)) is w


def test_constant_field_response_is_resolution_independent():
    conv = SparseDepthwiseConv2d(2, 7, train_resolution=16)
    for n in (16, 32, 64, 8):
        idx = torch.arange(n * n)[None]
        lat = PointLattice.build(idx, (n, n), 7, 16, "dense")
        out = conv(torch.ones(1, n * n, 2), lat).view(n, n, 2)
        mid = out[n // 2, n // 2]
        assert torch.allclose(mid, conv.weight.sum((1, 2, 3)), atol=1e-5), n


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown sparse backend"):
        PointLattice.build(torch.arange(16)[None], (4, 4), 3, 4, "cuda_magic")


@pytest.mark.skipif(torchsparse_available(), reason="torchsparse is installed")
def test_torchsparse_missing_gives_clear_error():
    with pytest.raises(ImportError, match="torchsparse is not importable"):
        PointLattice.build(torch.arange(16)[None], (4, 4), 3, 4, "torchsparse")


@pytest.mark.skipif(not torchsparse_available(), reason="torchsparse is not importable (optional CUDA accelerator)")
def test_torchsparse_parity_with_dense():  # pragma: no cover - needs torchsparse
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    idx = torch.stack([torch.randperm(400)[:100] for _ in range(2)]).to(dev)
    conv = SparseDepthwiseConv2d(8, 7, train_resolution=20).to(dev)
    x = torch.randn(2, 100, 8, device=dev)
    ref = conv(x, PointLattice.build(idx, (20, 20), 7, 20, "dense"))
    out = conv(x, PointLattice.build(idx, (20, 20), 7, 20, "torchsparse"))
    assert torch.allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize(("grid", "train", "k"), [((64, 64), 32, 5), ((96, 64), 32, 5), ((32, 64), 32, 3), ((128, 128), 16, 3)])
def test_tent_factored_conv_equals_resized_kernel_conv(grid, train, k):
    """The factored form (tent filter, then the dilated training kernel) is the resized kernel."""
    h, w = grid
    scales = integer_scales((h / train, w / train))
    assert scales is not None
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    wt = torch.randn(3, 1, k, k, dtype=torch.float64)
    kh, kw = resized_kernel_size(k, train, h), resized_kernel_size(k, train, w)
    big = resize_kernel(wt, (kh, kw), (h / train, w / train))
    ref = F.conv2d(x, big, padding=(kh // 2, kw // 2), groups=3)
    torch.testing.assert_close(tent_factored_conv2d(x, wt, scales), ref, rtol=1e-12, atol=1e-12)


def test_integer_scales_only_for_whole_upsampling():
    assert integer_scales((2.0, 4.0)) == (2, 4)
    assert integer_scales((1.0, 2.0)) == (1, 2)
    assert integer_scales((1.0, 1.0)) is None
    assert integer_scales((1.5, 2.0)) is None
    assert integer_scales((0.5, 0.5)) is None


@pytest.mark.parametrize("grid", [(64, 64), (64, 96), (48, 48)])
def test_layer_fast_path_matches_resized_kernel_in_values_and_gradients(grid):
    """SparseDepthwiseConv2d on the dense canvas at 2x/3x uses the factored form; it must give
    the values and gradients of the explicitly resized kernel (also for a subset of points)."""
    torch.manual_seed(0)
    layer = SparseDepthwiseConv2d(4, kernel_size=5, train_resolution=16).double()
    h, w = grid
    for idx in (torch.arange(h * w).unsqueeze(0), torch.randperm(h * w)[: h * w // 2].unsqueeze(0)):
        lat = PointLattice.build(idx, grid, 5, 16, backend="dense")
        assert lat.backend == "dense" and integer_scales(lat.scale) is not None  # the fast path runs
        x = torch.randn(1, idx.shape[1], 4, dtype=torch.float64, requires_grad=True)
        fast = layer(x, lat)
        g_fast = torch.autograd.grad(fast.square().sum(), [x, layer.weight])
        slow = sparse_depthwise_conv(x, layer.kernel(lat.kernel_size, lat.scale), lat)
        g_slow = torch.autograd.grad(slow.square().sum(), [x, layer.weight])
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
        for a, b in zip(g_fast, g_slow, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        # the factored neighbour count equals the count with the explicitly resized window
        mask = torch.zeros(1, h * w, dtype=torch.float64).scatter_(1, idx, 1.0).view(1, 1, h, w)
        kh, kw = lat.kernel_size
        box = resize_kernel(torch.ones(1, 1, 5, 5, dtype=torch.float64), (kh, kw), lat.scale) / (lat.scale[0] * lat.scale[1])
        count = F.conv2d(mask, box, padding=(kh // 2, kw // 2)).view(1, -1).gather(1, idx).unsqueeze(-1)
        norm = 25 / (lat.scale[0] * lat.scale[1] * count)
        torch.testing.assert_close(lat.norm.double(), norm, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["pairs", "dense"])
def test_lattice_and_layer_under_bf16_autocast_at_another_resolution(backend):
    """Subsampled points at 2x the training grid under bf16 autocast (a bf16 training or
    evaluation run above the training resolution): the neighbour counts stay fp32 and equal the
    fp32 ones, and the layer runs (the pairs backend once failed in index_add_ on a bf16 window)."""
    torch.manual_seed(0)
    idx = torch.randperm(64 * 64)[:400].unsqueeze(0)
    ref = PointLattice.build(idx, (64, 64), 5, 32, backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lat = PointLattice.build(idx, (64, 64), 5, 32, backend)
        out = SparseDepthwiseConv2d(4, kernel_size=5, train_resolution=32)(torch.randn(1, 400, 4), lat)
    assert lat.norm.dtype == torch.float32 and torch.equal(lat.norm, ref.norm)
    layer = SparseDepthwiseConv2d(4, kernel_size=5, train_resolution=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the resized kernel is not bf16-rounded
        assert layer.kernel((11, 11), (2.0, 2.0)).dtype == torch.float32
    assert out.shape == (1, 400, 4) and torch.isfinite(out).all()


def _rel(a, b):  # noqa: ANN001, ANN202
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(("channels", "kernel"), [(8, 5), (16, 5), (12, 3), (4, 7), (6, 5)])
def test_bf16_depthwise_conv_weight_gradient_is_the_rounded_exact_sum(channels, kernel, native, monkeypatch):
    """The bf16 conv's weight gradient (block-diagonal grouped conv for 8 | C or 4 | C, the fp32
    depthwise one otherwise) equals the float64 gradient on the same bf16 values up to one bf16
    rounding plus fp32 accumulation: |dW - dW64| <= 2^-8 |dW64| + n 2^-24 Σ|g||x| (n summed
    terms). Its values and input gradient are the bf16 conv's. The grouped path runs only where
    the CPU has native bf16 (faked here as False: the fp32 gradient; True only where it is real,
    since oneDNN's emulated bf16 grouped conv misses the bound on an AVX2-only EPYC)."""
    from lightning_infdiff.denoisers.layers.sparse_conv import depthwise_same_conv, op
    from lightning_infdiff.precision import cpu_bf16_support

    if native and not cpu_bf16_support()[0]:
        pytest.skip("this CPU has no native bf16: the grouped bf16 weight gradient is not used here")
    monkeypatch.setattr(op, "_native_cpu_bf16", lambda: native)

    torch.manual_seed(0)
    b, hw, pad = 3, 16, kernel // 2
    canvas = torch.randn(b, hw, hw, channels).bfloat16().permute(0, 3, 1, 2).requires_grad_(True)  # channels-last
    weight = torch.randn(channels, 1, kernel, kernel, requires_grad=True)
    out = depthwise_same_conv(canvas, weight, pad, pad)
    assert out.dtype == torch.bfloat16
    g = torch.randn(out.shape).bfloat16()
    out.backward(g)
    c64, w64 = canvas.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    ref = F.conv2d(c64, w64, padding=pad, groups=channels)
    ref.backward(g.double())
    abs_sum = torch.ops.aten.convolution_backward(  # Σ |g| |x| per weight
        g.double().abs(), c64.detach().abs(), w64.detach(), None, (1, 1), (pad, pad), (1, 1), False, (0, 0),
        channels, (False, True, False))[1]
    bound = 2.0**-8 * w64.grad.abs() + b * hw * hw * 2.0**-24 * abs_sum
    assert weight.grad.dtype == torch.float32
    assert ((weight.grad.double() - w64.grad).abs() <= bound).all()
    # the bf16 grouped path (CPUs with native bf16) rounds to bf16; the fp32 fallback does not
    blocked = channels % 4 == 0 and native
    assert torch.equal(weight.grad, weight.grad.bfloat16().float()) == blocked
    assert _rel(out, ref) < 1e-2 and _rel(canvas.grad, c64.grad) < 1e-2


def test_bf16_dense_layer_matches_the_fp32_layer_and_large_kernels_stay_fp32(monkeypatch):
    """bf16 points on the dense backend: the sparse conv runs in bf16 and stays close to the
    fp32 layer in values and gradients; resized kernels above BF16_MAX_KERNEL keep the fp32 canvas."""
    from lightning_infdiff.denoisers.layers.sparse_conv import module

    torch.manual_seed(0)
    idx = torch.stack([torch.randperm(16 * 16)[:160] for _ in range(2)])
    lat = PointLattice.build(idx, (16, 16), 5, 16, "dense")
    layer = SparseDepthwiseConv2d(6, kernel_size=5, train_resolution=16)
    x16 = torch.randn(2, 160, 6).bfloat16().requires_grad_(True)
    x32 = x16.detach().float().requires_grad_(True)
    out16 = layer(x16, lat)
    assert out16.dtype == torch.bfloat16
    g = torch.randn(out16.shape)
    (out16.float() * g).sum().backward()
    w16 = layer.weight.grad.clone()
    layer.weight.grad = None
    out32 = layer(x32, lat)
    (out32 * g).sum().backward()
    assert _rel(out16, out32) < 1e-2 and _rel(x16.grad, x32.grad) < 1e-2 and _rel(w16, layer.weight.grad) < 1e-2
    with torch.no_grad():  # sampling: the same bf16 conv, without the custom op
        assert torch.equal(layer(x16.detach(), lat), out16.detach())

    calls = []
    orig = module.depthwise_same_conv
    monkeypatch.setattr(module, "depthwise_same_conv", lambda *a: calls.append(a[0].dtype) or orig(*a))
    big = PointLattice.build(torch.arange(40 * 40).unsqueeze(0), (40, 40), 5, 16, "dense")  # 2.5x: 13x13
    assert max(big.kernel_size) > module.BF16_MAX_KERNEL
    assert layer(torch.randn(1, 1600, 6).bfloat16(), big).dtype == torch.bfloat16
    assert calls == [torch.float32]  # the 13x13 canvas is fp32
    layer(x16.detach(), lat)
    assert calls == [torch.float32, torch.bfloat16]
    with torch.no_grad():  # sampling calls the conv directly
        layer(x16.detach(), lat)
    assert len(calls) == 2


def test_depthwise_same_conv_op_is_a_well_formed_differentiable_operator():
    """The dense backend's custom op: schema, fake (meta) kernel and autograd registration agree
    with the real kernel (``torch.library.opcheck``), its float64 gradients match finite
    differences, and the fake kernel keeps the canvas's channels-last layout."""
    from lightning_infdiff.denoisers.layers.sparse_conv import depthwise_same_conv

    torch.manual_seed(0)
    op = torch.ops.lightning_infdiff.depthwise_same_conv.default
    for dt in (torch.float64, torch.float32, torch.bfloat16):
        canvas = torch.randn(2, 5, 6, 8).to(dt).permute(0, 3, 1, 2).requires_grad_(True)
        weight = torch.randn(8, 1, 3, 3, dtype=torch.float64 if dt == torch.float64 else torch.float32,
                             requires_grad=True)
        torch.library.opcheck(op, (canvas, weight, 1, 1))
    c64 = torch.randn(2, 4, 5, 3, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_(True)
    w64 = torch.randn(3, 1, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, w: depthwise_same_conv(c, w, 1, 2), (c64, w64))
    with torch._subclasses.FakeTensorMode():
        fake = op(torch.empty(2, 5, 6, 8).permute(0, 3, 1, 2), torch.empty(8, 1, 3, 3), 1, 1)
        assert fake.is_contiguous(memory_format=torch.channels_last)


def test_compiled_dense_conv_gives_eager_gradients():
    """Under torch.compile (inductor) the custom op runs with the eager gradients."""
    from lightning_infdiff.denoisers.layers.sparse_conv import depthwise_same_conv

    torch.manual_seed(0)
    x = torch.randn(2, 6, 6, 8).permute(0, 3, 1, 2).requires_grad_(True)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (depthwise_same_conv(a.sin(), b, 1, 1) ** 2).sum()

    torch.compile(loss)(x, w).backward()
    compiled = (x.grad, w.grad)
    x.grad = w.grad = None
    loss(x, w).backward()
    torch.testing.assert_close(compiled[0], x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled[1], w.grad, rtol=1e-5, atol=1e-5)
