"""lightning_infdiff: resolution-independent pixel-space diffusion with PyTorch Lightning."""

__version__ = "0.1.0"
