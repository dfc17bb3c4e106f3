"""Image mode conversion, resizing and cropping (PIL in, ``uint8`` arrays out).

Every decoded image goes through :func:`to_rgb_or_gray` so that palette, RGBA/LA (composited
over white), CMYK, 16-bit and 32-bit integer/float grayscale files all come out as 8-bit
``L`` or ``RGB`` images with the configured number of channels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["to_rgb_or_gray", "resize_center_crop", "random_crop", "array_to_pil", "to_float"]

_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def _high_bit_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float grayscale -> 8-bit ``L`` with correct scaling.

    PIL's own ``convert("L")`` clips ``I`` values above 255 instead of rescaling them, which
    would turn most 16-bit images white: scale by the type's range instead.
    """
    arr = np.asarray(img).astype(np.float64)
    peak = float(np.nanmax(arr, initial=0.0))
    if img.mode == "F":
        scale = 1.0 if peak <= 1.0 else 255.0
    elif img.mode == "I":  # 32-bit integer: 8-bit content if it fits, else 16-bit
        scale = 255.0 if peak <= 255 else 65535.0
    else:  # I;16 variants
        scale = 65535.0
    scaled = arr / scale
    out = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def to_rgb_or_gray(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to 8-bit ``RGB`` (``channels=3``) or ``L`` (``channels=1``).

    Transparent pixels (RGBA, LA, palette with transparency) are composited over white.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = img.mode
    if mode in _HIGH_BIT_MODES:
        img = _high_bit_to_l(img)
    elif mode == "P" or mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def resize_center_crop(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Resize to cover ``size`` (a side or ``(H, W)``; bicubic, antialiased) and take the centre
    window of that shape (the centre square for a side)."""
    oh, ow = _hw(size)
    w, h = img.size
    scale = min(w / ow, h / oh)  # source pixels per output pixel, the window fitting inside
    bw, bh = ow * scale, oh * scale
    left, top = (w - bw) / 2, (h - bh) / 2
    if oh == ow:  # the exact integer box of before for squares
        side = min(w, h)
        left, top, bw, bh = (w - side) // 2, (h - side) // 2, side, side
    box = (left, top, left + bw, top + bh)
    return img.resize((ow, oh), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def random_crop(img: Image.Image, size: int | tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random ``size`` crop (a side or ``(H, W)``) at native pixel density (upsampled first if too small)."""
    oh, ow = _hw(size)
    w, h = img.size
    if w < ow or h < oh:
        scale = max(ow / w, oh / h)
        img = img.resize((max(ow, round(w * scale)), max(oh, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
    left = int(rng.integers(0, w - ow + 1))
    top = int(rng.integers(0, h - oh + 1))
    return img.crop((left, top, left + ow, top + oh))


def array_to_pil(arr: np.ndarray) -> Image.Image:
    """``uint8`` array ``(H, W)`` or ``(H, W, 3|4)`` -> PIL image."""
    return Image.fromarray(np.ascontiguousarray(arr))


def to_float(img: Image.Image | np.ndarray) -> np.ndarray:
    """8-bit image -> ``float32`` array ``(C, H, W)`` in ``[-1, 1]``."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return arr / 127.5 - 1.0
