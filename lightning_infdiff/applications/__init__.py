"""Applications of resolution-independent models: inpainting, super-resolution, resolution-aware sampling.

All are functions over the existing pieces (process, denoiser, the sampler's hooks); see
:mod:`.inpaint`, :mod:`.superres` and :mod:`.resolution`.
"""

from .common import MASK_SHAPES, load_image, load_mask, named_mask
from .guidance import ReconstructionGuidance, conditioned_sample, resampling_times
from .inpaint import INPAINT_METHODS, inpaint
from .superres import SUPERRES_METHODS, superres, target_size

__all__ = [
    "MASK_SHAPES",
    "INPAINT_METHODS",
    "SUPERRES_METHODS",
    "ReconstructionGuidance",
    "conditioned_sample",
    "inpaint",
    "load_image",
    "load_mask",
    "named_mask",
    "resampling_times",
    "superres",
    "target_size",
]
