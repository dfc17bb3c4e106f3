"""Contract tests for the denoiser family (FNO/UNO, U-ViT, coordinate MLPs, SIID, ADM U-Net).

Every test is parametrised over tiny instances of every denoiser so each one can fail on its
own. Zero-initialised output layers would hide upstream gradients and make outputs constant,
so tests that need a live network first give every all-zero parameter random values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from lightning_infdiff.coords import full_indices, index_to_coords
from lightning_infdiff.data import GaussianBlobs
from lightning_infdiff.denoisers.base import Denoiser, GridDenoiser
from lightning_infdiff.denoisers.coord_mlp import CoordMLPBaseline, CoordMLPDenoiser
from lightning_infdiff.denoisers.fno import FNODenoiser
from lightning_infdiff.denoisers.siid import SIIDDenoiser
from lightning_infdiff.denoisers.unet_denoiser import ADMUNetDenoiser
from lightning_infdiff.denoisers.uvit import UViTDenoiser
from lightning_infdiff.processes import GaussianProcess

K = 3  # classes of the tiny models


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run 2-4x faster on one thread (measured), and 2 OpenMP threads stall badly
    when the 2 cores are shared; restore the session's setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

TINY: dict[str, Callable[[], Denoiser]] = {
    "fno": lambda: FNODenoiser(1, num_classes=K, width=8, modes=4, depth=2, emb_dim=16, coord_freqs=2),
    "uno": lambda: FNODenoiser(1, num_classes=K, width=8, modes=6, depth=1, levels=2, emb_dim=16, coord_freqs=2),
    "uvit": lambda: UViTDenoiser(
        1, num_classes=K, resolution=16, transformer_resolution=8, channels=8, channel_mult=(1,),
        num_res_blocks=1, num_transformer_blocks=2, heads=2, emb_dim=16, dropout=0.1, pos_freqs=3,
    ),
    "uvit_patch": lambda: UViTDenoiser(
        1, num_classes=K, resolution=16, transformer_resolution=8, patch_size=2, channels=8, channel_mult=(),
        num_transformer_blocks=2, heads=2, emb_dim=16, pos_freqs=3,
    ),
    "coord_mlp_baseline": lambda: CoordMLPBaseline(1, num_classes=K, hidden=16, depth=2, class_dim=4),
    "coord_mlp": lambda: CoordMLPDenoiser(1, num_classes=K, hidden=16, depth=2, emb_dim=16, coord_freqs=3),
    "coord_mlp_gradients": lambda: CoordMLPDenoiser(1, num_classes=K, hidden=16, depth=2, emb_dim=16, coord_freqs=3,
                                                    blur_gradients=True),
    "siid": lambda: SIIDDenoiser(1, num_classes=K, channels=16, depth=2, heads=2, num_freqs=4, emb_dim=16),
    "unet": lambda: ADMUNetDenoiser(
        1, num_classes=K, resolution=16, channels=8, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(8,), head_channels=8, emb_dim=16,
    ),
}
NAMES = list(TINY)
GRID_MODELS = [n for n in NAMES if isinstance(TINY[n](), GridDenoiser)]
POINT_MODELS = [n for n in NAMES if n not in GRID_MODELS]
GRIDS = [(16, 16), (32, 32), (12, 20), (13, 7)]  # training grid, 2x, non-square, odd


def randomise_zeros(model: nn.Module, std: float = 0.2) -> nn.Module:
    """Give every all-zero parameter (zero-initialised outputs, FiLM) random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def make_inputs(grid: tuple[int, int], batch: int = 2, frac: float = 1.0, seed: int = 0):
    """Values, coords and indices of ``frac`` of the pixels, shuffled, per example."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    n = max(1, int(frac * h * w))
    idx = torch.stack([torch.randperm(h * w, generator=g)[:n] for _ in range(batch)])
    values = torch.randn(batch, n, 1, generator=g)
    return values, index_to_coords(idx, grid), idx


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("frac", [1.0, 0.3], ids=["full", "sub"])
def test_output_shape_any_grid(name: str, grid: tuple[int, int], frac: float) -> None:
    model = TINY[name]().eval()
    values, coords, _ = make_inputs(grid, frac=frac)
    with torch.no_grad():
        out = model(values, coords, torch.tensor([-3.0, 4.0]), grid, torch.tensor([0, K]))
    assert out.shape == values.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_gradient(name: str) -> None:
    model = randomise_zeros(TINY[name]()).train()
    values, coords, _ = make_inputs((16, 16), frac=0.5)
    out = model(values, coords, torch.tensor([-2.0, 3.0]), (16, 16), torch.tensor([1, K]))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_output_depends_on_logsnr_and_condition(name: str) -> None:
    model = randomise_zeros(TINY[name]()).eval()
    values, coords, _ = make_inputs((16, 16), frac=0.5)
    values, coords = values[:1].expand(2, -1, -1), coords[:1].expand(2, -1, -1)
    with torch.no_grad():
        a = model(values, coords, torch.tensor([-4.0, 4.0]), (16, 16), torch.tensor([1, 1]))
        b = model(values, coords, torch.tensor([2.0, 2.0]), (16, 16), torch.tensor([0, 2]))
        null = model(values, coords, torch.tensor([2.0, 2.0]), (16, 16), torch.tensor([K, K]))
        none = model(values, coords, torch.tensor([2.0, 2.0]), (16, 16), None)
    assert (a[0] - a[1]).abs().max() > 1e-4, "output ignores logSNR"
    assert (b[0] - b[1]).abs().max() > 1e-4, "output ignores the class"
    torch.testing.assert_close(null, none)  # no condition = the null class of CFG


def _tiny_sparse_operator() -> Denoiser:
    from lightning_infdiff.denoisers.sparse_operator import SparseNeuralOperator

    return SparseNeuralOperator(
        in_channels=1, num_classes=K, train_resolution=16, channels=8, depth=1, kernel_size=3,
        inner_resolution=8, inner_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
        head_channels=8, emb_dim=16,
    )


@pytest.mark.parametrize("name", [*NAMES, "sparse_operator"])
def test_full_canvas_cost_says_whether_subsampling_saves_flops(name: str) -> None:
    """The flag the benchmarks use to skip rates that cannot differ: the matmul/conv FLOPs of a
    forward on a quarter of the pixels equal the full grid's exactly when it is set."""
    from torch.utils.flop_counter import FlopCounterMode

    model = (_tiny_sparse_operator() if name == "sparse_operator" else TINY[name]()).eval()

    def flops(frac: float) -> int:
        values, coords, _ = make_inputs((16, 16), frac=frac)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(values, coords, torch.tensor([0.5, -1.0]), (16, 16), torch.tensor([2, 0]))
        return counter.get_total_flops()

    full, quarter = flops(1.0), flops(0.25)
    assert full > 0
    if type(model).full_canvas_cost:
        assert quarter == pytest.approx(full, rel=0.02), f"{name}: {quarter} of {full} FLOPs at 1/4 of the pixels"
    else:
        assert quarter < 0.9 * full, f"{name}: {quarter} of {full} FLOPs at 1/4 of the pixels"


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariance(name: str) -> None:
    """Point models by construction; grid models through the scatter/gather base."""
    model = randomise_zeros(TINY[name]()).eval()
    values, coords, _ = make_inputs((12, 20), frac=0.4)
    perm = torch.randperm(values.shape[1])
    lam, cond = torch.tensor([0.5, -1.0]), torch.tensor([2, 0])
    with torch.no_grad():
        out = model(values, coords, lam, (12, 20), cond)
        out_p = model(values[:, perm], coords[:, perm], lam, (12, 20), cond)
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", GRID_MODELS)
@pytest.mark.parametrize("grid", [(16, 16), (13, 7)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_grid_canvas_path_equals_forward_grid(name: str, grid: tuple[int, int]) -> None:
    model = randomise_zeros(TINY[name]()).eval()
    h, w = grid
    image = torch.randn(2, 1, h, w)
    idx = full_indices(2, grid)
    values = image.flatten(2).transpose(1, 2)
    lam, cond = torch.tensor([1.0, -2.0]), torch.tensor([0, 1])
    with torch.no_grad():
        via_points = model(values, index_to_coords(idx, grid), lam, grid, cond)
        direct = model.forward_grid(torch.cat([image, torch.ones(2, 1, h, w)], dim=1), lam, cond)
    torch.testing.assert_close(via_points, direct.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-4)


def _blobs(n: int, res: int) -> torch.Tensor:
    src = GaussianBlobs(length=n, channels=1, seed=3)
    return torch.stack([torch.from_numpy(src.load(i, res, np.random.default_rng(0), True)[0]) for i in range(n)])


@pytest.mark.parametrize("name", NAMES)
def test_training_reduces_loss(name: str) -> None:
    torch.manual_seed(0)
    model = TINY[name]()
    process = GaussianProcess(parametrisation="v")
    x0 = _blobs(4, 16)
    g = torch.Generator().manual_seed(5)
    idx = torch.stack([torch.randperm(256, generator=g)[:128] for _ in range(4)])
    lam = torch.linspace(-3.0, 3.0, 4)
    cond = torch.arange(4) % K

    def loss(train: bool) -> torch.Tensor:
        model.train(train)
        gen = torch.Generator().manual_seed(7)  # the same noise every time: a fixed regression problem
        return process.loss(model, x0, idx, cond=cond, logsnr=lam, generator=gen).mean()

    with torch.no_grad():
        before = loss(False).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        loss(True).backward()
        opt.step()
    with torch.no_grad():
        after = loss(False).item()
    assert after < 0.9 * before, f"{name}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", ["coord_mlp", "siid"])
def test_output_projection_is_fp32_under_autocast(name):
    """The projection to the data's channels runs in fp32 under bf16 autocast (its weight gradient
    is a matrix-vector product, slow in bf16), so the prediction comes out fp32."""
    model = TINY[name]()
    seen = []
    model.out.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)) and None)
    idx = torch.randperm(256)[None, :64].expand(2, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 64, 1), index_to_coords(idx, (16, 16)), torch.zeros(2), (16, 16),
                    torch.tensor([0, 1]))
    out.sum().backward()
    assert seen == [(torch.float32, torch.float32)] and out.dtype == torch.float32
    assert model.out.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("objective", ["flow", "edm"])
@pytest.mark.parametrize("name", [*NAMES, "sparse_operator"])
def test_every_denoiser_trains_and_samples_under_the_new_objectives(name: str, objective: str) -> None:
    """Mollified flow matching and mollified EDM on half of the points: a finite loss with
    gradients, and a sample (issue 37: every denoiser, with subsampling and mollification)."""
    from lightning_infdiff.losses import EDMWeighting
    from lightning_infdiff.noise_levels import LogitNormalTime, LogNormalSigma
    from lightning_infdiff.operators import HeatKernelOperator
    from lightning_infdiff.parametrisations import EDMParametrisation
    from lightning_infdiff.samplers import sample
    from lightning_infdiff.schedules import KarrasSchedule, RectifiedFlowSchedule

    torch.manual_seed(0)
    model = _tiny_sparse_operator() if name == "sparse_operator" else TINY[name]()
    if objective == "flow":
        process = GaussianProcess(RectifiedFlowSchedule(), HeatKernelOperator(0.03), "flow",
                                  noise_levels=LogitNormalTime())
    else:
        process = GaussianProcess(KarrasSchedule(), HeatKernelOperator(0.03), EDMParametrisation(0.5),
                                  EDMWeighting(0.5), noise_levels=LogNormalSigma())
    x0 = torch.rand(2, 1, 16, 16) * 2 - 1
    idx = torch.rand(2, 256).argsort(dim=1)[:, :128]
    cond = torch.tensor([0, 1]) if model.num_classes else None
    loss = process.loss(model, x0, idx, cond).mean()
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    x = sample(process, model.eval(), (16, 16), [0], channels=1, steps=2, cond=cond[:1] if cond is not None else None)
    assert x.shape == (1, 1, 16, 16) and torch.isfinite(x).all()
