"""Post-hoc EMA: rebuild the weight average of any length after training (EDM2, section 3).

Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion Models",
section 3 and appendix C) average the weights with a *power-function* EMA: after optimiser step
``t`` the average is ``ema_t = beta_t ema_{t-1} + (1 - beta_t) theta_t`` with

    beta_t = (1 - 1/t) ** (gamma + 1),

so ``ema_t`` weighs the weights of step ``tau`` by ``w_tau = (tau/t)**(gamma+1) - ((tau-1)/t)**(gamma+1)``:
exactly the integral over ``[tau-1, tau]`` of the continuous profile
``p_t(s) = (gamma + 1) s**gamma / t**(gamma + 1)`` on ``[0, t]``. The profile's width relative to the
run's length, ``sigma_rel = sqrt((gamma+1) / ((gamma+2)**2 (gamma+3)))``, names the average
(EDM2 uses 0.05 and 0.10 during training). The average is a linear function of the trajectory,
so an average with another profile ``q`` is approximated by a combination ``sum_i x_i ema_i`` of
stored snapshots ``ema_i`` (several steps, a few ``sigma_rel``): ``x`` minimises
``|| sum_i x_i p_i - q ||`` in L2, i.e. solves ``A x = b`` with ``A_ij = <p_i, p_j>`` and
``b_i = <p_i, q>``, both in closed form (:func:`profile_inner_product`).

The snapshots are written during training by :class:`~lightning_infdiff.callbacks.PostHocEMA`;
:func:`reconstruct` combines them, and ``infdiff posthoc_ema`` puts the result into a copy of a
run's checkpoint, which ``infdiff sample`` / ``evaluate`` / ``export`` then read like any other.
Steps count optimiser steps (EDM2 counts images; with a fixed batch size this is the same profile).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import UsageError

__all__ = [
    "SIGMA_REL_MAX", "SNAPSHOT_FORMAT", "Snapshot", "gamma_from_sigma_rel", "sigma_rel_from_gamma", "power_beta",
    "power_profile", "profile_inner_product", "solve_weights", "list_snapshots", "reconstruct",
    "posthoc_ema_command",
]

#: ``sigma_rel`` of ``gamma = 0``, the plain average of the whole run; wider averages would need
#: ``gamma < 0`` (weights growing towards the start of training) and are refused
SIGMA_REL_MAX = 12.0 ** -0.5
#: the ``format`` entry of a snapshot's safetensors metadata
SNAPSHOT_FORMAT = "lightning_infdiff/posthoc_ema/1"


def sigma_rel_from_gamma(gamma: float) -> float:
    """Relative standard deviation of the power-function profile of exponent ``gamma``:
    ``sqrt((gamma + 1) / ((gamma + 2)**2 (gamma + 3)))`` (its std divided by its length)."""
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent ``gamma >= 0`` whose profile has relative std ``sigma_rel``.

    With ``u = 1/sigma_rel**2`` the definition becomes the cubic
    ``gamma**3 + 7 gamma**2 + (16 - u) gamma + (12 - u) = 0``; ``sigma_rel`` falls monotonically
    from ``1/sqrt(12)`` (``gamma = 0``) to 0 as ``gamma`` grows, so the largest real root is the one.

    Raises:
        UsageError: ``sigma_rel`` outside ``(0, 1/sqrt(12)]``.
    """
    check_sigma_rel(sigma_rel)
    u = 1.0 / float(sigma_rel) ** 2
    roots = np.roots([1.0, 7.0, 16.0 - u, 12.0 - u])
    gamma = float(max(r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r.real))))
    return max(gamma, 0.0)  # sigma_rel == 1/sqrt(12) lands a rounding error either side of 0


def check_sigma_rel(sigma_rel: float, name: str = "sigma_rel") -> float:
    """``sigma_rel`` as a float, or a one-line :class:`UsageError` naming ``name``."""
    if not isinstance(sigma_rel, (int, float)) or not 0.0 < float(sigma_rel) <= SIGMA_REL_MAX + 1e-12:
        raise UsageError(f"{name} must be in (0, {SIGMA_REL_MAX:.4f}] (e.g. 0.05 or 0.10), got {sigma_rel!r}")
    return float(sigma_rel)


def power_beta(step: int, gamma: float) -> float:
    """Decay of the power-function EMA at optimiser step ``step >= 1``: ``(1 - 1/step)**(gamma + 1)``
    (0 at the first step, so the average starts at the first trained weights)."""
    if step < 1:
        raise ValueError(f"power_beta: step must be >= 1, got {step}")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def power_profile(step: int, gamma: float) -> Tensor:
    """The weights ``w_1 .. w_step`` (float64, summing to 1) that the EMA of ``gamma`` at ``step``
    gives the weights after each optimiser step: ``w_tau = (tau/step)**(gamma+1) - ((tau-1)/step)**(gamma+1)``."""
    edges = (torch.arange(step + 1, dtype=torch.float64) / step) ** (gamma + 1.0)
    return edges[1:] - edges[:-1]


def profile_inner_product(step_a: float, gamma_a: float, step_b: float, gamma_b: float) -> float:
    """``<p_a, p_b> = integral of p_a(s) p_b(s) ds`` for the continuous profiles
    ``p(s) = (gamma + 1) s**gamma / step**(gamma + 1)`` on ``[0, step]``.

    Both are non-zero on ``[0, min(step_a, step_b)]``; with ``a`` the shorter one the integral is
    ``(gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) step_b) * (step_a / step_b)**gamma_b``.
    """
    if step_a > step_b:
        step_a, gamma_a, step_b, gamma_b = step_b, gamma_b, step_a, gamma_a
    scale = (gamma_a + 1.0) * (gamma_b + 1.0) / ((gamma_a + gamma_b + 1.0) * step_b)
    return scale * (step_a / step_b) ** gamma_b


def solve_weights(stored: Sequence[tuple[int, float]], target: tuple[int, float]) -> np.ndarray:
    """Least-squares weights ``x`` with ``sum_i x_i p_i ~ q``.

    Args:
        stored: ``(step, gamma)`` of each stored average ``p_i``.
        target: ``(step, gamma)`` of the wanted average ``q``.

    Returns:
        float64 weights, one per stored average; they sum to about 1. ``A`` (the profiles' Gram
        matrix) is badly conditioned with many snapshots, so ``A x = b`` is solved by
        ``numpy.linalg.lstsq`` (SVD; singular values below machine precision are dropped).
    """
    if not stored:
        raise ValueError("solve_weights needs at least one stored average")
    n = len(stored)
    gram = np.empty((n, n))
    rhs = np.empty(n)
    for i, (si, gi) in enumerate(stored):
        rhs[i] = profile_inner_product(si, gi, *target)
        for j, (sj, gj) in enumerate(stored):
            gram[i, j] = profile_inner_product(si, gi, sj, gj)
    return np.linalg.lstsq(gram, rhs, rcond=None)[0]


@dataclass(frozen=True)
class Snapshot:
    """One stored average: its file, the optimiser step it was taken after and its ``sigma_rel``."""

    path: Path
    step: int
    sigma_rel: float

    @property
    def gamma(self) -> float:
        return gamma_from_sigma_rel(self.sigma_rel)


def list_snapshots(folder: str | Path, arg: str = "folder") -> list[Snapshot]:
    """The snapshots in ``folder`` (``*.safetensors`` files whose metadata says :data:`SNAPSHOT_FORMAT`),
    by step and ``sigma_rel``.

    Raises:
        UsageError: the folder does not exist or holds no snapshots (the message names ``arg``).
    """
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{arg}: no post-hoc EMA snapshot folder at {folder} (expected <log_dir>/posthoc_ema of a run "
                         "trained with the PostHocEMA callback)")
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") == SNAPSHOT_FORMAT:
            found.append(Snapshot(path, int(meta["step"]), float(meta["sigma_rel"])))
    if not found:
        raise UsageError(f"{arg}: {folder} holds no post-hoc EMA snapshots (*.safetensors written by PostHocEMA)")
    return sorted(found, key=lambda s: (s.step, s.sigma_rel))


def reconstruct(
    folder: str | Path, sigma_rel: float, step: int | None = None, *, arg: str = "folder",
) -> dict[str, Tensor]:
    """The EMA of profile ``sigma_rel`` at ``step``, combined from the snapshots in ``folder``.

    Args:
        folder: a run's snapshot folder (``<log_dir>/posthoc_ema``).
        sigma_rel: the wanted average's relative width, in ``(0, 1/sqrt(12)]``.
        step: the optimiser step of the wanted average (default: the latest snapshot's); only
            snapshots taken at or before it are used.
        arg: the name the folder is given in error messages (the command's ``--snapshots``).

    Returns:
        The denoiser's state dict: floating tensors are ``sum_i x_i snapshot_i`` (summed in float64,
        returned in float32), other tensors (counters) are those of the latest snapshot used.

    Raises:
        UsageError: bad ``sigma_rel`` or ``step``, missing folder, no snapshots at or before ``step``.
    """
    from safetensors.torch import load_file

    target_gamma = gamma_from_sigma_rel(check_sigma_rel(sigma_rel))
    snaps = list_snapshots(folder, arg)
    if step is None:
        step = snaps[-1].step
    usable = [s for s in snaps if s.step <= step]
    if step < 1 or not usable:
        raise UsageError(f"step must be at or after the first snapshot (step {snaps[0].step}) in {folder}, got {step}")
    weights = solve_weights([(s.step, s.gamma) for s in usable], (step, target_gamma))
    total: dict[str, Tensor] = {}
    for snap, x in zip(usable, weights, strict=True):
        tensors = load_file(str(snap.path))
        if total and tensors.keys() != total.keys():
            raise UsageError(f"{arg}: {snap.path.name} holds other tensors than the other snapshots in {folder} "
                             "(snapshots of two different models in one folder?)")
        for name, t in tensors.items():
            if t.is_floating_point():
                acc = total.get(name)
                total[name] = t.double() * float(x) if acc is None else acc.add_(t.double(), alpha=float(x))
            else:
                total[name] = t  # snapshots are in step order: the latest used wins
    return {k: v.float() if v.is_floating_point() else v for k, v in total.items()}


def _default_snapshot_folder(ckpt: dict, ckpt_path: Path) -> Path:
    """The folder a PostHocEMA callback recorded in the checkpoint, else ``<run>/posthoc_ema`` next to
    ``<run>/checkpoints/``."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("PostHocEMA") and isinstance(state, dict) and state.get("folder"):
            folder = Path(state["folder"])
            if folder.is_dir():
                return folder
    return ckpt_path.resolve().parent.parent / "posthoc_ema"


def posthoc_ema_command(ckpt_path: str, sigma_rel: float, out: str, snapshots: str | None = None) -> Path:
    """Write a copy of a checkpoint whose denoiser holds the post-hoc EMA of any length (EDM2).

    The run must have been trained with the ``PostHocEMA`` callback (``configs/callbacks/posthoc_ema.yaml``),
    which stores power-function EMA snapshots in ``<log_dir>/posthoc_ema``. The average of
    ``sigma_rel`` is reconstructed at the latest snapshot at or before the checkpoint's step and
    replaces the checkpoint's ``denoiser.*`` weights; everything else (keys, hyper_parameters) is
    kept, so ``infdiff sample`` / ``evaluate`` / ``export`` read the new file as usual.

    Args:
        ckpt_path: checkpoint written by ``infdiff fit`` (its model configuration rebuilds the denoiser).
        sigma_rel: relative width of the wanted average, in ``(0, 0.2887]`` (EDM2 trains with 0.05 and
            0.10; any value between or around them can be rebuilt).
        out: the new checkpoint file.
        snapshots: the snapshot folder (default: the one recorded in the checkpoint, else
            ``posthoc_ema`` beside the checkpoint's ``checkpoints`` folder).
    """
    from .callbacks.atomic_checkpoint import atomic_write_bytes
    from .checkpoint import load_checkpoint, load_module

    check_sigma_rel(sigma_rel)
    path = Path(ckpt_path)
    ckpt = load_checkpoint(path)
    folder = Path(snapshots) if snapshots is not None else _default_snapshot_folder(ckpt, path)
    snaps = list_snapshots(folder, "--snapshots")
    ckpt_step = int(ckpt.get("global_step", snaps[-1].step))
    usable = [s.step for s in snaps if s.step <= ckpt_step]
    if not usable:
        raise UsageError(f"--snapshots: {folder} has no snapshot at or before the checkpoint's step {ckpt_step} "
                         f"(the first is at step {snaps[0].step})")
    step = max(usable)
    weights = reconstruct(folder, sigma_rel, step, arg="--snapshots")
    module = load_module(path)
    try:
        module.denoiser.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise UsageError(f"--snapshots: the snapshots in {folder} do not fit the checkpoint's denoiser: "
                         f"{' '.join(str(err).split())[:300]}") from err
    state = ckpt["state_dict"]
    for name, value in module.denoiser.state_dict().items():
        key = f"denoiser.{name}"
        state[key] = value.to(state[key].dtype) if key in state else value
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    written = atomic_write_bytes(buffer.getvalue(), out)
    print(f"wrote {written}: post-hoc EMA sigma_rel={float(sigma_rel):g} at step {step} "
          f"from {sum(s.step <= step for s in snaps)} snapshots in {folder}")
    return written
