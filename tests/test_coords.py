import pytest
import torch

from lightning_infdiff.batch import FieldBatch
from lightning_infdiff.coords import (
    coords_to_index,
    gather,
    index_to_coords,
    interpolate_at,
    pixel_centres,
    scatter,
)


def test_pixel_centres_are_half_offsets():
    c = pixel_centres((2, 4))
    assert c.shape == (8, 2)
    assert torch.allclose(c[0], torch.tensor([0.25, 0.125]))
    assert torch.allclose(c[-1], torch.tensor([0.75, 0.875]))
    # row-major: second point is the next column
    assert torch.allclose(c[1], torch.tensor([0.25, 0.375]))


@pytest.mark.parametrize("grid", [(5, 7), (8, 8), (3, 16)])
def test_index_coords_round_trip(grid):
    h, w = grid
    idx = torch.randperm(h * w)[None]
    assert torch.equal(coords_to_index(index_to_coords(idx, grid), grid), idx)


def test_gather_scatter_round_trip():
    x = torch.randn(2, 3, 6, 5)
    idx = torch.stack([torch.randperm(30)[:11] for _ in range(2)])
    vals = gather(x, idx)
    assert vals.shape == (2, 11, 3)
    canvas, mask = scatter(vals, idx, (6, 5))
    assert torch.allclose(canvas * mask, x * mask)
    assert mask.sum().item() == 22
    # the full grid without indices
    full, m = scatter(gather(x, None), None, (6, 5))
    assert torch.equal(full, x) and bool(m.all())


@pytest.mark.parametrize("grid", [(8, 8), (6, 10)])
def test_grid_points_grid_round_trip_is_exact(grid):
    """Bilinear read-back at pixel centres returns the pixel values exactly (no quadrant bug)."""
    h, w = grid
    x = torch.randn(2, 3, h, w)
    coords = pixel_centres(grid).expand(2, h * w, 2)
    vals = interpolate_at(x, coords)
    back, _ = scatter(vals, None, grid)
    assert torch.allclose(back, x, atol=1e-5)


def test_interpolate_smooth_field_between_centres():
    h = w = 16
    yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    field = (2 * yy + 3 * xx)[None, None]  # linear: bilinear interpolation is exact inside
    pts = torch.rand(1, 50, 2) * 0.8 + 0.1
    vals = interpolate_at(field, pts)[0, :, 0]
    assert torch.allclose(vals, 2 * pts[0, :, 0] + 3 * pts[0, :, 1], atol=1e-5)


def test_field_batch():
    img = torch.randn(2, 1, 4, 4)
    idx = torch.tensor([[0, 5, 15], [1, 2, 3]])
    b = FieldBatch(img, idx, torch.tensor([1, 2]))
    assert b.grid == (4, 4) and b.num_points == 3 and len(b) == 2
    assert torch.allclose(b.coords[0, 1], torch.tensor([1.5 / 4, 1.5 / 4]))
    assert torch.equal(b.values[0, :, 0], img[0, 0].reshape(-1)[idx[0]])
    full = FieldBatch(img)
    assert full.num_points == 16 and full.coords.shape == (2, 16, 2)
    with pytest.raises(ValueError, match="B, C, H, W"):
        FieldBatch(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="indices"):
        FieldBatch(img, torch.zeros(3, 2, dtype=torch.long))
