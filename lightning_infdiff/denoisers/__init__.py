"""Denoisers behind one interface (see :mod:`lightning_infdiff.denoisers.base`)."""

from .autoencoder import SparseAutoencoder, SparseEncoder
from .base import Denoiser, GridDenoiser, logsnr_embedding
from .coord_mlp import CoordMLPBaseline, CoordMLPDenoiser
from .fno import FNODenoiser
from .latent_prior import LatentPrior
from .layers_dwt import HaarDWT
from .layers_rope import AxialRoPE
from .siid import SIIDDenoiser
from .sparse_conv import PointLattice, SparseDepthwiseConv2d
from .sparse_operator import SparseNeuralOperator
from .unet import ADMUNet
from .unet_denoiser import ADMUNetDenoiser
from .uvit import UViTDenoiser

__all__ = [
    "ADMUNet",
    "AxialRoPE",
    "ADMUNetDenoiser",
    "CoordMLPBaseline",
    "CoordMLPDenoiser",
    "Denoiser",
    "FNODenoiser",
    "GridDenoiser",
    "LatentPrior",
    "HaarDWT",
    "PointLattice",
    "SIIDDenoiser",
    "SparseAutoencoder",
    "SparseEncoder",
    "SparseDepthwiseConv2d",
    "SparseNeuralOperator",
    "UViTDenoiser",
    "logsnr_embedding",
]
