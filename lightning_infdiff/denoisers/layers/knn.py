"""Exact k-nearest-neighbour interpolation from lattice points to a regular grid.

∞-Diff (section 4.2, Fig. 4) moves the sparse point features onto a fixed regular grid by
inverse-distance weighting of the ``k = 3`` nearest sampled points (PointNet++ eq. 2):

    f(q) = Σ_i w_i f(p_i) / Σ_i w_i,    w_i = 1 / ||q - p_i||²,    p_1..p_k = kNN(q).

The reference code uses pytorch3d's brute-force ``knn_points`` (CUDA). Here the points lie on
a pixel lattice, so each query only inspects a window of the lattice around it; the window
grows until the k-th distance is strictly smaller than the distance to anything outside it,
which makes the result the exact kNN among the sampled points at any ``N`` and any grid.
Ties are broken by position in the window, never by the order of the points, so the result
is permutation-equivariant. Distances are measured in domain units of ``[0, 1]^2``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...coords import as_grid, check_grid

__all__ = ["lattice_knn", "knn_interpolate"]


@torch.no_grad()
def lattice_knn(
    indices: Tensor, grid: tuple[int, int], out_grid: tuple[int, int], k: int = 3, eps: float = 1e-12
) -> tuple[Tensor, Tensor]:
    """Exact kNN of every pixel centre of ``out_grid`` among the sampled lattice points.

    Args:
        indices: ``(B, N)`` unique flat row-major pixel indices of the points on ``grid``.
        grid: ``(H, W)`` lattice of the points.
        out_grid: ``(Gh, Gw)`` regular query grid. Both are placed in the image plane by their
            geometry (:class:`~lightning_infdiff.coords.Grid`; plain tuples: the unit square).
        k: number of neighbours (reduced to ``N`` when fewer points exist).
        eps: floor on squared distances (a point on a query gets all the weight).

    Returns:
        ``nbr (B, Gh*Gw, k)`` point numbers in ``[0, N)`` and ``weight (B, Gh*Gw, k)``
        normalised inverse-squared-distance weights (fp32), queries row-major.
    """
    h, w = check_grid(grid)
    gh, gw = check_grid(out_grid)
    # pixels per domain unit (py, px: of the lattice; qpy, qpx: of the queries) and window origins
    (py, px), (qpy, qpx) = as_grid(grid).density, as_grid(out_grid).density
    (oy, ox), (qoy, qox) = as_grid(grid).origin, as_grid(out_grid).origin
    b, n = indices.shape
    k = max(1, min(k, n))
    dev = indices.device
    # Point number per pixel, one extra -1 slot per example for window taps outside the grid.
    pid = torch.full((b * (h * w + 1),), -1, dtype=torch.long, device=dev)
    offs = torch.arange(b, device=dev).view(b, 1) * (h * w + 1)
    pid[(indices + offs).reshape(-1)] = torch.arange(n, device=dev).repeat(b)
    # Query centres in (continuous) pixel units of the point lattice, and their nearest pixel.
    qy = ((torch.arange(gh, device=dev, dtype=torch.float64) + 0.5) / qpy + (qoy - oy)) * py - 0.5
    qx = ((torch.arange(gw, device=dev, dtype=torch.float64) + 0.5) / qpx + (qox - ox)) * px - 0.5
    qy, qx = qy.repeat_interleave(gw), qx.repeat(gh)
    # (a query grid wider than the lattice has queries outside it: their window centres on the
    # nearest lattice pixel, and everything outside the window is still farther than its edge)
    cy, cx = torch.floor(qy + 0.5).long().clamp(0, h - 1), torch.floor(qx + 0.5).long().clamp(0, w - 1)
    nq = gh * gw
    nbr = torch.empty(b, nq, k, dtype=torch.long, device=dev)
    d2 = torch.empty(b, nq, k, dtype=torch.float64, device=dev)
    todo_b = torch.arange(b, device=dev).repeat_interleave(nq)
    todo_q = torch.arange(nq, device=dev).repeat(b)
    area = (h / py) * (w / px)  # of the lattice's window, in domain units
    radius = 1.5 * math.sqrt(k * area / (math.pi * n)) + 0.5 / min(py, px)  # domain units, ~2k expected hits
    while todo_b.numel():
        ry, rx = min(math.ceil(radius * py), h), min(math.ceil(radius * px), w)
        dy = torch.arange(-ry, ry + 1, device=dev).repeat_interleave(2 * rx + 1)
        dx = torch.arange(-rx, rx + 1, device=dev).repeat(2 * ry + 1)
        # Window geometry depends on the query only, not on the example: computed once per
        # distinct pending query (U <= Gh*Gw rows instead of T = pending (example, query) pairs)
        # and sorted there by distance (stable: ties keep window order).
        uq, inv = torch.unique(todo_q, return_inverse=True)
        rows, cols = cy[uq, None] + dy, cx[uq, None] + dx  # (U, window)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        pix = torch.where(inside, rows * w + cols, h * w)
        geo = (((rows - qy[uq, None]) / py) ** 2 + ((cols - qx[uq, None]) / px) ** 2).masked_fill(~inside, math.inf)
        geo, order = torch.sort(geo, dim=1, stable=True)
        found, sel, sel_d2 = _first_points(pid, torch.gather(pix, 1, order), geo, inv, todo_b * (h * w + 1), k)
        # Anything outside the window is at least (r + 1/2) pixels away along one axis.
        safe = min((ry + 0.5) / py, (rx + 0.5) / px) ** 2
        whole = ry >= h and rx >= w
        ok = found == k
        if not whole:
            ok &= sel_d2[:, -1] < safe
        nbr[todo_b[ok], todo_q[ok]] = sel[ok]
        d2[todo_b[ok], todo_q[ok]] = sel_d2[ok]
        todo_b, todo_q = todo_b[~ok], todo_q[~ok]
        radius *= 2.0
    weight = 1.0 / d2.clamp_min(eps)
    weight = weight / weight.sum(-1, keepdim=True)
    return nbr, weight.float()


#: Up to this many (pair, tap) lookups :func:`_first_points` reads whole windows in one pass
#: (per-pass overhead then outweighs the lookups saved).
_ONE_PASS = 1 << 16


def _first_points(
    pid: Tensor, pix: Tensor, d2: Tensor, inv: Tensor, base: Tensor, k: int, block: int = 8
) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``k`` sampled points along each pair's distance-sorted window.

    Args:
        pid: flat point number per pixel slot (``-1``: no point), offset per example by ``base``.
        pix: ``(U, window)`` pixel slots of each distinct query's window, nearest first.
        d2: ``(U, window)`` their squared distances (sorted).
        inv: ``(T,)`` query row of each (example, query) pair.
        base: ``(T,)`` offset of the pair's example in ``pid``.
        k: points wanted.
        block: taps examined per pass at first; doubled each pass. Small problems (at most
            :data:`_ONE_PASS` lookups in all) take the whole window in one pass.

    Returns:
        ``found (T,)`` points found (``<= k``), ``nbr (T, k)`` and ``d2 (T, k)`` nearest first
        (entries beyond ``found`` undefined). Taps are read in blocks for the pairs still short
        of ``k`` only: on a densely sampled lattice most pairs are done within the first block,
        so the pass costs about ``T·block`` lookups instead of ``T·window``.
    """
    t, win = inv.numel(), pix.shape[1]
    if t * win <= _ONE_PASS:
        block = win
    found = torch.zeros(t, dtype=torch.long, device=pix.device)
    nbr = torch.zeros(t, k, dtype=torch.long, device=pix.device)
    dist = torch.zeros(t, k, dtype=d2.dtype, device=pix.device)
    todo = torch.arange(t, device=pix.device)
    j = 0
    while todo.numel() and j < win:
        j1 = min(win, j + block)
        rows = inv[todo]
        cand = pid[pix[rows, j:j1] + base[todo, None]]  # (P, taps) point numbers or -1
        rank = found[todo, None] + (cand >= 0).cumsum(1)  # points found up to and including each tap
        pi, ti = ((cand >= 0) & (rank <= k)).nonzero(as_tuple=True)
        slot, pair = rank[pi, ti] - 1, todo[pi]
        nbr[pair, slot] = cand[pi, ti]
        dist[pair, slot] = d2[rows[pi], j + ti]
        found[todo] = rank[:, -1].clamp_max(k)
        todo = todo[found[todo] < k]
        j, block = j1, 2 * block
    return found, nbr, dist


def knn_interpolate(values: Tensor, nbr: Tensor, weight: Tensor) -> Tensor:
    """Weighted sum of neighbour features: ``(B, N, C)`` -> ``(B, Q, C)``.

    Differentiable in ``values``; ``nbr``/``weight`` come from :func:`lattice_knn`.
    """
    b, n, c = values.shape
    q, k = nbr.shape[1:]
    flat = (nbr + torch.arange(b, device=nbr.device).view(b, 1, 1) * n).reshape(-1)
    neigh = values.reshape(b * n, c).index_select(0, flat).view(b, q, k, c)
    return torch.einsum("bqkc,bqk->bqc", neigh, weight.to(values.dtype))
