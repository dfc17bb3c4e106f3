"""How a module samples unless told otherwise: one small settings object (``model.sampling``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError

__all__ = ["Sampling"]


@dataclass(frozen=True)
class Sampling:
    """How :meth:`DiffusionModule.generate` samples unless told otherwise.

    Args:
        sampler: ``ddpm``, ``ddim``, ``dpmpp_2m``, ``euler``, ``heun`` or ``dpmpp_3m``.
        steps: solver steps.
        guidance_scale: classifier-free guidance scale (conditional models; 1 = none).
        guidance_interval: ``[lo, hi]``: guide only at logSNR in this interval (Kynkäänniemi et
            al. 2024); ``None`` = at every noise level.
        guidance_rescale: guidance rescale ``phi`` in ``[0, 1]`` (Lin et al. 2024; 0 = none).
    """

    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] = "dpmpp_2m"
    steps: int = 25
    guidance_scale: float = 1.0
    guidance_interval: list[float] | None = None
    guidance_rescale: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"invalid model.sampling.steps={self.steps!r}: must be >= 1")
