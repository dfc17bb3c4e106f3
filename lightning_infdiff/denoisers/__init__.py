"""Denoisers behind one interface (see :mod:`lightning_infdiff.denoisers.base`)."""

from .base import Denoiser, GridDenoiser, logsnr_embedding

__all__ = ["Denoiser", "GridDenoiser", "logsnr_embedding"]
