"""One geometry for every grid (issue 33): a grid is a window onto the image plane, and the blur,
the noise scale, the schedule shift, the sparse kernels, the inner grid and every denoiser's
positional input read it from the same :class:`~lightning_infdiff.coords.Grid`.

The strongest checks are functional: on a ``wide`` 16x32 window (square pixels, the plane
extended along x) the central 16x16 block *is* the training square, so anything computed there
away from the window's edges must equal the same computation on the square grid; and a blob that
is round in domain units must stay round under the blur on either canvas. Each check fails if
one component keeps pixel-based or unit-square assumptions on a non-square grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_infdiff.coords import (
    Grid,
    as_grid,
    coords_to_index,
    full_coords,
    index_to_coords,
    interpolate_at,
    pixel_centres,
)
from lightning_infdiff.operators import HeatKernelOperator
from lightning_infdiff.schedules import CosineSchedule, ShiftedSchedule

WIDE = Grid(16, 32, "wide")
TALL = Grid(32, 16, "wide")
SQUARE = (16, 16)


def centre_block(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The unit square's block ``(..., 16, 16)`` of a field on a wide window."""
    (oy, ox), (py, px) = grid.origin, grid.pitch
    top, left = round(-oy / py), round(-ox / px)
    return x[..., top : top + 16, left : left + 16]


# ---------------------------------------------------------------- coordinates
def test_grid_geometry():
    assert WIDE.pitch == (1 / 16, 1 / 16) and WIDE.extent == (1.0, 2.0) and WIDE.origin == (0.0, -0.5)
    assert TALL.origin == (-0.5, 0.0) and WIDE.density == (16, 16)
    assert as_grid((16, 32)).pitch == (1 / 16, 1 / 32) and as_grid((16, 32)).extent == (1.0, 1.0)
    assert WIDE == (16, 32) and hash(WIDE) == hash((16, 32)) and tuple(WIDE) == (16, 32)
    assert Grid(16, 16, "wide").unit and as_grid((16, 32)).unit and not WIDE.unit
    with pytest.raises(ValueError, match="canvas must be one of"):
        Grid(4, 4, "fisheye")


@pytest.mark.parametrize("grid", [WIDE, TALL, Grid(12, 20, "wide"), (12, 20)])
def test_coordinates_round_trip_and_the_centre_is_the_training_square(grid):
    g = as_grid(grid)
    idx = torch.randperm(g[0] * g[1])[None, :50]
    assert torch.equal(coords_to_index(index_to_coords(idx, g), g), idx)
    c = pixel_centres(g).view(g[0], g[1], 2)
    torch.testing.assert_close(full_coords(1, g)[0], c.view(-1, 2))
    if not g.unit and g[0] == 16:  # the wide window's centre block has the square grid's coordinates
        torch.testing.assert_close(centre_block(c.permute(2, 0, 1), g).permute(1, 2, 0), pixel_centres(SQUARE).view(16, 16, 2))


def test_read_back_uses_the_window_of_the_field():
    """interpolate_at on a wide field reads the pixel whose centre is the given domain point."""
    field = torch.arange(16 * 32, dtype=torch.float32).view(1, 1, 16, 32)
    idx = torch.tensor([[0, 37, 511]])
    got = interpolate_at(field, index_to_coords(idx, WIDE), grid=WIDE)
    assert torch.equal(got[0, :, 0], idx[0].float())


# ---------------------------------------------------------------- the blur and the noise
@pytest.mark.parametrize("grid", [WIDE, TALL, as_grid((16, 32))])
def test_blur_is_isotropic_in_domain_units_on_either_canvas(grid):
    """A Gaussian blob of std s (domain units) blurred by the heat kernel of width w is the blob
    of std sqrt(s^2 + w^2), evaluated at the grid's own pixel centres. A blur that is isotropic in
    *pixels* fails this on the stretch grid; one that ignores the window fails on the wide ones."""
    op = HeatKernelOperator(width=0.05).at(grid.canvas)
    c = pixel_centres(grid, dtype=torch.float64).view(grid[0], grid[1], 2)
    r2 = (c[..., 0] - 0.5) ** 2 + (c[..., 1] - 0.5) ** 2

    def blob(std: float) -> torch.Tensor:
        return torch.exp(-r2 / (2 * std**2)) / (2 * math.pi * std**2)

    out = op.apply(blob(0.08)[None])[0]
    want = blob(math.sqrt(0.08**2 + 0.05**2))
    # the reflective boundary barely touches a blob this narrow; the DCT blur is exact otherwise
    assert float((out - want).abs().max() / want.max()) < 0.02


def test_noise_is_the_same_process_on_the_wide_windows_centre():
    """Unit pointwise variance on every window, and the wide window's noise has the square grid's
    correlation between neighbours (in pixels, which are the same size)."""
    op = HeatKernelOperator(width=1 / 16)
    for grid in (SQUARE, WIDE):
        bound = op.at(getattr(grid, "canvas", "stretch"))
        white = torch.randn(4000, *grid, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        noise = bound.noise(white)
        block = noise if grid == SQUARE else centre_block(noise, grid)
        corr = float((block[:, 6:10, 4:10] * block[:, 6:10, 5:11]).mean() / block[:, 6:10, 4:10].pow(2).mean())
        assert float(noise.var()) == pytest.approx(1.0, rel=0.05)
        if grid == SQUARE:
            square_corr = corr
    assert corr == pytest.approx(square_corr, abs=0.03)


def test_schedule_shift_follows_the_pixel_density():
    sch = ShiftedSchedule(CosineSchedule(), reference=16)
    t = torch.tensor([0.3], dtype=torch.float64)
    assert float(sch.logsnr(t, WIDE)) == pytest.approx(float(sch.logsnr(t, SQUARE)))  # a wider view: no shift
    assert float(sch.logsnr(t, (16, 32))) == pytest.approx(float(sch.logsnr(t, SQUARE)) - math.log(2))
    assert float(sch.logsnr(t, Grid(32, 64, "wide"))) == pytest.approx(float(sch.logsnr(t, (32, 32))))


# ---------------------------------------------------------------- kernels, inner grid, positions
def _conv(grid, field):
    from lightning_infdiff.denoisers.layers.sparse_conv import PointLattice, SparseDepthwiseConv2d

    torch.manual_seed(0)
    conv = SparseDepthwiseConv2d(3, 5, 16)
    h, w = grid
    idx = torch.arange(h * w)[None]
    lat = PointLattice.build(idx, grid, 5, 16, "dense")
    values = field.reshape(1, 3, h * w).transpose(1, 2)
    return lat, conv(values, lat).transpose(1, 2).reshape(1, 3, h, w)


def test_sparse_kernels_keep_their_support_in_domain_units():
    """On the wide window the kernels keep their training size (same pitch) and the convolution
    of the square's content equals the square grid's away from the edges; a stretched grid
    resizes them along x only."""
    field = torch.randn(1, 3, 16, 32)
    lat_w, out_w = _conv(WIDE, field)
    lat_s, out_s = _conv(SQUARE, centre_block(field, WIDE))
    assert lat_w.kernel_size == (5, 5) and lat_w.scale == (1.0, 1.0)
    torch.testing.assert_close(centre_block(out_w, WIDE)[..., 2:-2, 2:-2], out_s[..., 2:-2, 2:-2])
    lat_stretch, _ = _conv(as_grid((16, 32)), field)
    assert lat_stretch.kernel_size[0] == 5 and lat_stretch.kernel_size[1] > 5 and lat_stretch.scale == (1.0, 2.0)


def test_inner_grid_and_knn_cover_the_window_at_the_training_cell_size():
    from lightning_infdiff.denoisers.layers.knn import lattice_knn
    from lightning_infdiff.denoisers.sparse_operator import inner_grid_for

    inner = inner_grid_for(WIDE, 8, 2)
    assert tuple(inner) == (8, 16) and inner.pitch == (1 / 8, 1 / 8) and inner.extent == WIDE.extent
    assert tuple(inner_grid_for(Grid(16, 36, "wide"), 8, 4)) == (8, 20)  # rounded up to the U-Net's multiple
    assert tuple(inner_grid_for((16, 32), 8, 2)) == (8, 8)  # stretch: the unit square
    # full lattices: the queries of the window's centre find the square grid's neighbours
    idx_w, idx_s = torch.arange(16 * 32)[None], torch.arange(16 * 16)[None]
    nbr_w, wgt_w = lattice_knn(idx_w, WIDE, inner, 4)
    nbr_s, wgt_s = lattice_knn(idx_s, SQUARE, (8, 8), 4)
    c_w = index_to_coords(nbr_w[0], WIDE)  # (queries, k, 2) in domain units
    c_s = index_to_coords(nbr_s[0], SQUARE)
    centre = c_w.view(8, 16, 4, 2)[:, 4:12].reshape(64, 4, 2)
    torch.testing.assert_close(centre.sort(dim=1).values, c_s.sort(dim=1).values)
    torch.testing.assert_close(wgt_w.view(8, 16, 4)[:, 4:12].reshape(64, 4).sort(-1).values, wgt_s[0].sort(-1).values)


@pytest.mark.parametrize("name", ["uvit", "fno", "siid"])
def test_positional_inputs_of_the_window_centre_are_the_training_squares(name):
    """U-ViT's token positions, the FNO's coordinate features and SIID's composition coordinates on
    the wide window's centre equal those of the square grid; on a stretch grid they span the unit
    square as before."""
    if name == "uvit":
        from lightning_infdiff.denoisers import UViTDenoiser

        model = UViTDenoiser(1, resolution=16, transformer_resolution=8, channels=8, channel_mult=(1,),
                             num_res_blocks=1, num_transformer_blocks=1, heads=2, emb_dim=16)
        wide = model.token_coords((8, 16), WIDE, torch.device("cpu")).view(8, 16, 2)[:, 4:12]
        square = model.token_coords((8, 8), SQUARE, torch.device("cpu")).view(8, 8, 2)
        torch.testing.assert_close(wide, square)
    elif name == "fno":
        wide = centre_block(pixel_centres(WIDE).T.reshape(2, 16, 32), WIDE)
        torch.testing.assert_close(wide, pixel_centres(SQUARE).T.reshape(2, 16, 16))
    else:
        from lightning_infdiff.denoisers.siid import siid_coordinates

        comp, image = siid_coordinates(pixel_centres(WIDE), WIDE)
        square = siid_coordinates(pixel_centres(SQUARE), SQUARE)[0].T.reshape(2, 16, 16)
        torch.testing.assert_close(centre_block(comp.T.reshape(2, 16, 32), WIDE), square)
        assert float(image.min()) > -0.5 and float(image.max()) < 0.5 and float(comp[:, 1].max()) > 0.9


def test_fno_on_a_wider_window_uses_its_trained_multipliers_at_the_right_frequencies():
    """The scaled spectral path equals the plain one at scale 1; at integer training modes the
    interpolated multipliers are the stored ones; a wide window runs end to end."""
    from lightning_infdiff.denoisers.fno import FNODenoiser, SpectralConv2d

    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, modes=4)
    x = torch.randn(2, 2, 12, 20)
    torch.testing.assert_close(conv._forward_scaled(x, (12, 20), (1.0, 1.0)), conv(x))
    ky = torch.tensor([-4.0, -1.0, 0.0, 3.0])
    kx = torch.tensor([0.0, 2.0, 3.0])
    w = conv._weights_at(ky, kx)
    torch.testing.assert_close(w[:, :, 2], conv.weight_pos[:, :, 0, [0, 2, 3]])
    torch.testing.assert_close(w[:, :, 0], conv.weight_neg[:, :, 3, [0, 2, 3]])
    half = conv._weights_at(torch.tensor([0.5]), torch.tensor([1.5]))[:, :, 0, 0]
    corners = conv.weight_pos[:, :, 0:2, 1:3].mean(dim=(2, 3))
    torch.testing.assert_close(half, corners)
    model = FNODenoiser(1, width=8, modes=4, depth=1).eval()
    values = torch.randn(1, 16 * 32, 1)
    out = model(values, full_coords(1, WIDE), torch.zeros(1), WIDE)
    assert out.shape == (1, 16 * 32, 1) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["sparse_operator", "unet", "uvit", "fno", "uno", "siid", "coord_mlp"])
def test_every_denoiser_runs_on_wide_and_stretched_windows(name):
    from test_denoisers_family import TINY
    from test_lit import TINY_DENOISER

    from lightning_infdiff.denoisers import SparseNeuralOperator

    model = (SparseNeuralOperator(1, **TINY_DENOISER["init_args"]) if name == "sparse_operator" else TINY[name]()).eval()
    for grid in (Grid(8, 16, "wide"), Grid(16, 8, "wide"), as_grid((8, 16))):
        n = grid[0] * grid[1]
        out = model(torch.randn(2, n, 1), full_coords(2, grid), torch.zeros(2), grid)
        assert out.shape == (2, n, 1) and torch.isfinite(out).all()


# ---------------------------------------------------------------- sampling and data
def test_wide_sampling_binds_the_process_and_the_model_to_the_window(monkeypatch):
    """generate on a wide canvas: the denoiser sees the wide Grid, the noise is the bound
    operator's, and the display filter's band is the training band in the window's modes."""
    from test_lit import TINY_DENOISER

    from lightning_infdiff.denoisers import SparseNeuralOperator
    from lightning_infdiff.lit import DiffusionModule
    from lightning_infdiff.processes import GaussianProcess

    den = SparseNeuralOperator(1, **TINY_DENOISER["init_args"])
    module = DiffusionModule(den, GaussianProcess(operator=HeatKernelOperator(1 / 32))).eval()
    seen = []
    forward = SparseNeuralOperator.forward
    monkeypatch.setattr(SparseNeuralOperator, "forward",
                        lambda self, v, c, lam, grid, cond=None: seen.append(grid) or forward(self, v, c, lam, grid, cond))
    x = module.generate((16, 32), [0, 1], steps=2)
    assert x.shape == (2, 1, 16, 32) and all(isinstance(g, Grid) and g.canvas == "wide" for g in seen)
    seen.clear()
    module.generate((16, 32), [0], steps=1, canvas="stretch")
    assert all(g.canvas == "stretch" for g in seen)


def test_non_square_training_images_are_wide_windows_and_train():
    from test_lit import TINY_DENOISER

    from lightning_infdiff.data import FieldDataModule, GaussianBlobs, MNISTDigits
    from lightning_infdiff.denoisers import SparseNeuralOperator
    from lightning_infdiff.lit import DiffusionModule

    dm = FieldDataModule(GaussianBlobs(length=16, channels=1), resolution=8, aspect=2.0, batch_size=4,
                         subsample_rate=2, val_size=4, jitter=True)
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (4, 1, 8, 16) and batch.grid.canvas == "wide" and batch.grid.extent == (1.0, 2.0)
    assert next(iter(dm.val_dataloader())).image.shape[-2:] == (8, 16)
    module = DiffusionModule(SparseNeuralOperator(1, **{**TINY_DENOISER["init_args"], "train_resolution": 8,
                                                        "inner_resolution": 4, "channel_mult": [1]}))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    # bundled digits extend their background; the default crops a square rendering
    image, _ = MNISTDigits().load_rect(0, (16, 32), np.random.default_rng(0), False)
    square, _ = MNISTDigits().load(0, 16, np.random.default_rng(0), False)
    assert image.shape == (1, 16, 32) and np.array_equal(image[:, :, 8:24], square)
    assert np.all(image[:, :, :8] == image[:, :, 8:9])
    blobs, _ = GaussianBlobs(length=4, channels=1).load_rect(1, (8, 16), np.random.default_rng(0), False)
    full, _ = GaussianBlobs(length=4, channels=1).load(1, 16, np.random.default_rng(0), False)
    assert np.array_equal(blobs, full[:, 4:12, :])


def test_folder_windows_are_crops_of_the_file(tmp_path):
    from PIL import Image

    from lightning_infdiff.data import ImageFolder

    arr = (np.arange(40 * 80) % 251).astype(np.uint8).reshape(40, 80)
    Image.fromarray(arr).save(tmp_path / "a.png")
    src = ImageFolder(str(tmp_path), channels=1)
    src.prepare([20])
    wide, _ = src.load_rect(0, (20, 40), np.random.default_rng(0), False)
    assert wide.shape == (1, 20, 40)
    want = np.asarray(Image.fromarray(arr).resize((40, 20), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1
    assert np.abs(wide[0] - want).max() < 0.02  # the whole 2:1 file, resized
