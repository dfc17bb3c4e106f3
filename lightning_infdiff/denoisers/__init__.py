"""Denoisers behind one interface (see :mod:`lightning_infdiff.denoisers.base`).

The models are the modules of this package; their building blocks (embeddings, FiLM, ADM
blocks, attention, the sparse convolution and nearest-neighbour kernels) are in
:mod:`lightning_infdiff.denoisers.layers`.
"""

from .autoencoder import SparseAutoencoder, SparseEncoder
from .base import Denoiser, GridDenoiser
from .coord_mlp import CoordMLPBaseline, CoordMLPDenoiser
from .fno import FNODenoiser
from .latent_prior import LatentPrior
from .layers.dwt import HaarDWT
from .layers.embeddings import logsnr_embedding
from .layers.rope import AxialRoPE
from .layers.sparse_conv import PointLattice, SparseDepthwiseConv2d
from .siid import SIIDDenoiser
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
