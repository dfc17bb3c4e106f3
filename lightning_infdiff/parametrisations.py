"""What the network predicts: epsilon, v, x0, or the mollified noise ``T xi``.

Write the corruption as ``x_t = alpha y0 + sigma n`` with ``y0 = T x0`` (the mollified data)
and ``n = c T xi`` (the mollified noise, ``xi`` white; ``c`` the operator's noise scale). For
plain diffusion ``T = I`` and ``c = 1``, so ``y0 = x0`` and ``n = xi``. A parametrisation says
which quantity the network outputs and how to turn an output back into ``(y0_hat, n_hat)``,
both as functions of logSNR lambda (``alpha^2 = sigmoid(lambda)``):

* ``eps`` -- white noise ``c xi`` (Ho et al. 2020): ``n_hat = T f``, ``y0_hat = (x_t - sigma n_hat)/alpha``.
  Under a mollifier this asks for a discontinuous function (∞-Diff eq. 39).
* ``mollified_eps`` -- the mollified noise ``n = c T xi`` (∞-Diff eq. 40-42):
  ``n_hat = f``. Identical to ``eps`` when ``T = I``.
* ``v`` -- ``v = alpha n - sigma y0`` (Salimans & Ho 2022; simple diffusion section 2):
  ``y0_hat = alpha x_t - sigma f``, ``n_hat = sigma x_t + alpha f``.
* ``x0`` -- the *unmollified* data (∞-Diff eq. 32): ``y0_hat = T f``, ``n_hat = (x_t - alpha y0_hat)/sigma``.
* ``flow`` -- flow matching's velocity ``u = n - y0`` on the linear path ``z_t = (1 - t) y0 + t n``
  (Lipman et al. 2023 eq. 20-23; Liu et al. 2023), a change of variables of this process:
  ``z = x_t / (alpha + sigma)`` at ``t = sigma / (alpha + sigma)``, so the network sees ``z``
  (``c_in = 1/(alpha + sigma)``), and ``y0_hat = (x_t - sigma f)/(alpha + sigma)``, ``n_hat = (x_t + alpha f)/(alpha + sigma)``.
* ``edm`` -- EDM's preconditioned network ``F`` (Karras et al. 2022, eq. 7 and table 1):
  ``D = c_skip x + c_out F(c_in x)`` with ``x = x_t / alpha`` at ``sigma_EDM = sigma / alpha``. In this
  process's variables, with ``q = sqrt(sigma^2 + s_d^2 alpha^2)``: ``c_in = 1/q``,
  ``y0_hat = (s_d^2 alpha / q^2) x_t + (sigma s_d / q) f`` and the target
  ``F = (sigma y0 - s_d^2 alpha n) / (q s_d)``; at ``s_d = 1`` this is ``-v``.

``x0_mse_factor`` gives ``E|f - target|^2 / E|y0_hat - y0|^2`` for an error in ``f`` (used to
express loss weightings in x0 units): ``SNR`` for the noise targets, ``1 + SNR`` for v, 1 for x0,
``(1 + sqrt(SNR))^2`` for flow and ``q^2 / (sigma s_d)^2`` for edm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .operators import NoiseOperator
from .schedules import alpha_sigma

__all__ = [
    "Parametrisation",
    "EpsParametrisation",
    "MollifiedEpsParametrisation",
    "VParametrisation",
    "X0Parametrisation",
    "FlowParametrisation",
    "EDMParametrisation",
    "build_parametrisation",
    "PARAMETRISATIONS",
]


def _bcast(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape per-example coefficients ``(B,)`` to broadcast against ``like``."""
    return coef.reshape(coef.shape + (1,) * (like.dim() - coef.dim())).to(like.dtype)


class Parametrisation(ABC):
    """The network target and its conversions (see the module docstring)."""

    name: str = ""

    @abstractmethod
    def target(self, x0: Tensor, white: Tensor, y0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
        """The regression target on the dense grid.

        Args:
            x0: clean data. white: the scaled white noise ``c xi``. y0: ``T x0``.
            noise: ``c T xi``. logsnr: ``(B,)``.
        """

    @abstractmethod
    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor, op: NoiseOperator) -> tuple[Tensor, Tensor]:
        """Network output on the dense grid -> ``(y0_hat, n_hat)``."""

    @abstractmethod
    def from_y0_noise(self, y0: Tensor, noise: Tensor, logsnr: Tensor, op: NoiseOperator) -> Tensor:
        """``(y0, n)`` -> the output that would produce them (uses ``T^{-1}`` for eps/x0 under a blur)."""

    def x0_mse_factor(self, logsnr: Tensor) -> Tensor:
        """Ratio of the target-space MSE to the ``y0``-space MSE, per example."""
        return torch.exp(logsnr)

    def input_scale(self, logsnr: Tensor) -> Tensor:
        """Factor ``c_in`` on the (variance-preserving) state the network sees; 1 unless a
        formulation feeds the network another scaling of it (flow matching, EDM)."""
        return torch.ones_like(logsnr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MollifiedEpsParametrisation(Parametrisation):
    """Predict the mollified noise ``c T xi`` (∞-Diff eq. 42; plain epsilon when ``T = I``)."""

    name = "mollified_eps"

    def target(self, x0: Tensor, white: Tensor, y0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
        return noise

    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor, op: NoiseOperator) -> tuple[Tensor, Tensor]:
        a, s = (_bcast(c, x_t) for c in alpha_sigma(logsnr))
        return (x_t - s * out) / a, out

    def from_y0_noise(self, y0: Tensor, noise: Tensor, logsnr: Tensor, op: NoiseOperator) -> Tensor:
        return noise


class EpsParametrisation(Parametrisation):
    """Predict the white noise ``c xi`` (Ho et al. 2020); needs ``T`` to rebuild ``n``."""

    name = "eps"

    def target(self, x0: Tensor, white: Tensor, y0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
        return white

    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor, op: NoiseOperator) -> tuple[Tensor, Tensor]:
        a, s = (_bcast(c, x_t) for c in alpha_sigma(logsnr))
        n = op.apply(out)
        return (x_t - s * n) / a, n

    def from_y0_noise(self, y0: Tensor, noise: Tensor, logsnr: Tensor, op: NoiseOperator) -> Tensor:
        return op.inverse(noise)


class VParametrisation(Parametrisation):
    """Predict ``v = alpha n - sigma y0`` (Salimans & Ho 2022)."""

    name = "v"

    def target(self, x0: Tensor, white: Tensor, y0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
        a, s = (_bcast(c, y0) for c in alpha_sigma(logsnr))
        return a * noise - s * y0

    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor, op: NoiseOperator) -> tuple[Tensor, Tensor]:
        a, s = (_bcast(c, x_t) for c in alpha_sigma(logsnr))
        return a * x_t - s * out, s * x_t + a * out

    def from_y0_noise(self, y0: Tensor, noise: Tensor, logsnr: Tensor, op: NoiseOperator) -> Tensor:
        a, s = (_bcast(c, y0) for c in alpha_sigma(logsnr))
        return a * noise - s * y0

    def x0_mse_factor(self, logsnr: Tensor) -> Tensor:
        return 1.0 + torch.exp(logsnr)


class X0Parametrisation(Parametrisation):
    """Predict the unmollified data ``x0`` (∞-Diff eq. 32); ``y0_hat = T f``."""

    name = "x0"

    def target(self, x0: Tensor, white: Tensor, y0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
        return x0

    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor, op: NoiseOperator) -> tuple[Tensor, Tensor]:
        a, s = (_bcast(c, x_t) for c in alpha_sigma(logsnr))
        y0 = op.apply(out)
        return y0, (x_t - a * y0) / s

    def from_y0_noise(self, y0: Tensor, noise: Tensor, logsnr: Tensor, op: NoiseOperator) -> Tensor:
        return op.inverse(y0)

    def x0_mse_factor(self, logsnr: Tensor) -> Tensor:
        return torch.ones_like(logsnr)


class FlowParametrisation(Parametrisation):
    """Predict the flow-matching velocity ``u = n - y0`` of the path ``z_t = (1 - t) y0 + t n``."""

    name = "flow"

    def target(self, x0: Tensor, white: Tensor, y0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
        return noise - y0

    def input_scale(self, logsnr: Tensor) -> Tensor:
        a, s = alpha_sigma(logsnr)
        return 1.0 / (a + s)

    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor, op: NoiseOperator) -> tuple[Tensor, Tensor]:
        a, s = (_bcast(c, x_t) for c in alpha_sigma(logsnr))
        return (x_t - s * out) / (a + s), (x_t + a * out) / (a + s)

    def from_y0_noise(self, y0: Tensor, noise: Tensor, logsnr: Tensor, op: NoiseOperator) -> Tensor:
        return noise - y0

    def x0_mse_factor(self, logsnr: Tensor) -> Tensor:
        return (1.0 + torch.exp(0.5 * logsnr)) ** 2


class EDMParametrisation(Parametrisation):
    """EDM's preconditioning (Karras et al. 2022, table 1) written in this process's variables.

    Args:
        sigma_data: standard deviation ``s_d`` of the data (EDM: 0.5 for images in [-1, 1]).
    """

    name = "edm"

    def __init__(self, sigma_data: float = 0.5) -> None:
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def _q(self, logsnr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, s = alpha_sigma(logsnr)
        return a, s, torch.sqrt(s**2 + (self.sigma_data * a) ** 2)

    def target(self, x0: Tensor, white: Tensor, y0: Tensor, noise: Tensor, logsnr: Tensor) -> Tensor:
        a, s, q = (_bcast(c, y0) for c in self._q(logsnr))
        return (s * y0 - self.sigma_data**2 * a * noise) / (q * self.sigma_data)

    def input_scale(self, logsnr: Tensor) -> Tensor:
        return 1.0 / self._q(logsnr)[2]

    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor, op: NoiseOperator) -> tuple[Tensor, Tensor]:
        a, s, q = (_bcast(c, x_t) for c in self._q(logsnr))
        y0 = (self.sigma_data**2 * a / q**2) * x_t + (s * self.sigma_data / q) * out
        return y0, (x_t - a * y0) / s

    def from_y0_noise(self, y0: Tensor, noise: Tensor, logsnr: Tensor, op: NoiseOperator) -> Tensor:
        return self.target(y0, noise, y0, noise, logsnr)

    def x0_mse_factor(self, logsnr: Tensor) -> Tensor:
        _, s, q = self._q(logsnr)
        return (q / (s * self.sigma_data)) ** 2

    def __repr__(self) -> str:
        return f"EDMParametrisation(sigma_data={self.sigma_data})"


PARAMETRISATIONS: dict[str, type[Parametrisation]] = {
    "eps": EpsParametrisation,
    "epsilon": EpsParametrisation,
    "mollified_eps": MollifiedEpsParametrisation,
    "mollified_noise": MollifiedEpsParametrisation,
    "txi": MollifiedEpsParametrisation,
    "v": VParametrisation,
    "x0": X0Parametrisation,
    "flow": FlowParametrisation,
    "velocity": FlowParametrisation,
    "edm": EDMParametrisation,
}


def build_parametrisation(name: str | Parametrisation) -> Parametrisation:
    """A parametrisation from its name (``eps``, ``mollified_eps``, ``v``, ``x0``, ``flow``, ``edm``) or instance.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(name, Parametrisation):
        return name
    key = str(name).lower()
    if key not in PARAMETRISATIONS:
        raise ValueError(f"unknown parametrisation {name!r}; expected one of {sorted(PARAMETRISATIONS)}")
    return PARAMETRISATIONS[key]()
