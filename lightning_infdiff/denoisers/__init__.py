"""Denoisers behind one interface (see :mod:`lightning_infdiff.denoisers.base`)."""

from .base import Denoiser, GridDenoiser, logsnr_embedding
from .sparse_operator import SparseNeuralOperator
from .unet import ADMUNet

__all__ = ["ADMUNet", "Denoiser", "GridDenoiser", "SparseNeuralOperator", "logsnr_embedding"]
