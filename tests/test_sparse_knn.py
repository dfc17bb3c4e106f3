"""Exact lattice kNN and the grid -> points -> grid round trip (guards the quadrant bug)."""

import math

import pytest
import torch

from lightning_infdiff.coords import index_to_coords, interpolate_at, pixel_centres
from lightning_infdiff.denoisers.layers.knn import knn_interpolate, lattice_knn


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many small ops: on a shared 2-core machine a second OpenMP thread that
    is descheduled stalls every op by a time slice (measured 50x slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    ("grid", "out_grid", "n"),
    [((16, 16), (8, 8), 256), ((24, 40), (6, 10), 100), ((64, 64), (16, 16), 300), ((9, 13), (5, 7), 3),
     ((32, 32), (16, 16), 20)],
)
def test_lattice_knn_is_exact(grid, out_grid, n):
    h, w = grid
    idx = torch.stack([torch.randperm(h * w)[:n] for _ in range(2)])
    nbr, weight = lattice_knn(idx, grid, out_grid, k=3)
    pts = index_to_coords(idx, grid, dtype=torch.float64)
    q = pixel_centres(out_grid, dtype=torch.float64).expand(2, -1, -1)
    d = torch.cdist(q, pts)
    best = d.topk(3, largest=False).values
    mine = torch.gather(d, 2, nbr).sort(-1).values
    assert torch.allclose(mine, best, atol=1e-6)
    assert torch.allclose(weight.sum(-1), torch.ones(()), atol=1e-5)
    assert (weight >= 0).all()


def test_lattice_knn_is_permutation_equivariant():
    idx = torch.randperm(32 * 32)[None, :200]
    perm = torch.randperm(200)
    nbr, w = lattice_knn(idx, (32, 32), (8, 8))
    nbr_p, w_p = lattice_knn(idx[:, perm], (32, 32), (8, 8))
    # the same pixels are chosen, whatever the order of the points
    assert torch.equal(idx[0, nbr[0]], idx[0, perm][nbr_p[0]])
    assert torch.equal(w, w_p)


@pytest.mark.parametrize("b", [1, 2])
def test_lattice_knn_breaks_ties_by_window_position(b):
    """A query equidistant from four pixels takes the first k of them in row-major order,
    whatever the order of the points, and nearest first."""
    idx = torch.stack([torch.randperm(16) for _ in range(b)])  # every pixel of a 4x4 grid, shuffled
    nbr, weight = lattice_knn(idx, (4, 4), (2, 2), k=3)
    pixels = torch.gather(idx, 1, nbr.view(b, -1)).view(b, 4, 3)
    # query (0, 0) sits at pixel coordinates (0.5, 0.5): pixels 0, 1, 4, 5 tie; query (1, 1) at (2.5, 2.5)
    assert pixels[:, 0].tolist() == [[0, 1, 4]] * b
    assert pixels[:, 3].tolist() == [[10, 11, 14]] * b
    assert torch.allclose(weight, torch.full_like(weight, 1 / 3))


def test_lattice_knn_many_blocks_and_rounds():
    """Sparse points (many blocks per window, several window rounds) against brute force."""
    h, w, n = 40, 24, 7
    idx = torch.stack([torch.randperm(h * w)[:n] for _ in range(3)])
    nbr, _ = lattice_knn(idx, (h, w), (20, 12), k=5)
    pts = index_to_coords(idx, (h, w), dtype=torch.float64)
    d = torch.cdist(pixel_centres((20, 12), dtype=torch.float64).expand(3, -1, -1), pts)
    mine = torch.gather(d, 2, nbr)
    assert torch.allclose(mine, d.topk(5, largest=False).values, atol=1e-12)  # nearest first
    assert (nbr.sort(-1).values.diff(dim=-1) > 0).all()  # five distinct points


def smooth(coords):
    y, x = coords[..., 0], coords[..., 1]
    # not symmetric under y <-> x or flips: a transposed/quadrant read-back would be caught
    return torch.stack([torch.sin(2 * math.pi * (0.7 * y + 0.2 * x)) + 0.5 * y, torch.cos(3 * x) * (1 + y)], -1)


@pytest.mark.parametrize(("grid", "keep"), [((64, 64), 1.0), ((64, 64), 0.25), ((48, 80), 0.5)])
def test_grid_points_grid_round_trip(grid, keep):
    """Inner grid field -> bilinear at the points -> kNN back onto the grid reproduces it.

    Tolerance: the field's gradient is at most ~6; the 3 nearest points lie within ~sqrt(3/(π ρ))
    pixels of a grid centre, so the inverse-distance average is off by at most
    |∇f|·(that distance) ≈ 6 · 2/64 ≈ 0.1 at 4x subsampling, and bilinear read-back from a
    16² grid adds |f''|·(1/16)²/8 ≈ 0.02. A swapped axis or quadrant gives errors of order 1.
    """
    g = 16
    h, w = grid
    n = int(keep * h * w)
    idx = torch.stack([torch.randperm(h * w)[:n] for _ in range(2)])
    coords = index_to_coords(idx, grid)
    field = smooth(pixel_centres((g, g))).T.reshape(1, 2, g, g).expand(2, -1, -1, -1)
    at_points = interpolate_at(field, coords)
    inner = ((coords > 0.5 / g) & (coords < 1 - 0.5 / g)).all(-1)  # beyond: edge replication
    assert (at_points - smooth(coords))[inner].abs().max() < 0.05  # bilinear read-back is right
    nbr, weight = lattice_knn(idx, grid, (g, g))
    back = knn_interpolate(at_points, nbr, weight)  # (B, G*G, C), row-major
    err = (back.transpose(1, 2).reshape(2, 2, g, g) - field).abs().max()
    assert err < (0.06 if keep == 1.0 else 0.15)
    wrong = back.transpose(1, 2).reshape(2, 2, g, g).transpose(-1, -2)  # the transposed read-back
    assert (wrong - field).abs().max() > 0.5


def test_knn_interpolate_is_differentiable_and_exact_on_constants():
    idx = torch.randperm(100)[None, :40]
    nbr, weight = lattice_knn(idx, (10, 10), (4, 4))
    x = torch.full((1, 40, 3), 2.5, requires_grad=True)
    out = knn_interpolate(x, nbr, weight)
    assert torch.allclose(out, torch.full_like(out, 2.5))
    out.sum().backward()
    assert x.grad.abs().sum() > 0
