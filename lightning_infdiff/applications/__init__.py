"""Applications of resolution-independent models: inpainting, super-resolution, resolution-aware sampling.

All are functions over the existing pieces (process, denoiser, the sampler's hooks); see
:mod:`.inpaint`, :mod:`.superres`, :mod:`.resolution` and :mod:`.progressive`.
"""

from .common import MASK_SHAPES, load_image, load_mask, named_mask
from .guidance import ReconstructionGuidance, conditioned_sample, resampling_times
from .inpaint import INPAINT_METHODS, inpaint
from .progressive import progressive_sample
from .resolution import resolution_plan
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
    "progressive_sample",
    "resampling_times",
    "resolution_plan",
    "superres",
    "target_size",
]
