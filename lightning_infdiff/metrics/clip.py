"""CLIP image features for FID_CLIP (Kynkäänniemi et al. 2023), offline-safe, on open-clip-torch.

Protocol (as ∞-Diff computes FID_CLIP with clean-fid's ``clip_vit_b_32``): OpenAI CLIP ViT-B/32
image embeddings (open_clip ``ViT-B-32`` with the ``openai`` tag holds the same weights), of
uint8 RGB images resized with PIL's bicubic filter so the short side is 224, centre-cropped to
224x224, scaled to ``[0, 1]`` and normalised with CLIP's mean and std; the embedding is the
image tower's projected output, not L2-normalised.

:func:`clip_preprocess` reproduces PIL's ``Image.resize(..., BICUBIC)`` in torch (batched,
on any device): PIL resamples horizontally then vertically with a Keys cubic (a = -0.5) whose
support widens when downscaling, and rounds and clips to uint8 after *each* pass; torch's
``interpolate(mode="bicubic", antialias=True)`` is the same filter, so two separable passes with
uint8 rounding between them match PIL within 2 grey levels at every pixel and within 0.05
levels on average (PIL rounds its filter taps to fixed point; measured on noise and smooth
images from 16² to 300x260). The size rule and the crop offset
are torchvision's ``Resize(224)`` and ``CenterCrop(224)`` (as in CLIP's own preprocessing).

Weights are never fetched implicitly. :func:`resolve_clip_weights` looks only at local files: an
explicit ``weights`` path, then the Hugging Face cache and open_clip's URL cache for the
``(model, tag)`` pair, and raises at once with instructions when nothing is found. A download
happens only with ``allow_download=True`` and ``HF_HUB_OFFLINE`` unset.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .extractor import FeatureExtractor, check_uint8

__all__ = ["CLIPFeatures", "clip_preprocess", "resolve_clip_weights", "CLIP_MEAN", "CLIP_STD", "OFFLINE_HELP"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# (model, tag) -> (Hugging Face repo, file names, URL file name): the protocol default, known
# without importing open_clip so that a missing file is reported at once
_KNOWN = {
    ("ViT-B-32", "openai"): (
        "timm/vit_base_patch32_clip_224.openai",
        ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        "ViT-B-32.pt",
    ),
}
OFFLINE_HELP = (
    "On a machine with internet run\n"
    "    huggingface-cli download {repo} open_clip_pytorch_model.bin --local-dir clip_weights\n"
    "(or python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{tag}')\", which fills "
    "the Hugging Face cache ~/.cache/huggingface/hub), copy the file or the cache here, and pass it with "
    "weights=/path/to/open_clip_pytorch_model.bin (CLI: --clip_weights), or set HF_HOME/HF_HUB_CACHE to the "
    "copied cache. To let this tool download instead: allow_download=True with HF_HUB_OFFLINE unset."
)


def _hf_hub_dir(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface")
    return Path(home) / "hub"


def _find_in_hf_cache(repo: str, names: tuple[str, ...], cache_dir: str | None) -> str | None:
    snapshots = _hf_hub_dir(cache_dir) / f"models--{repo.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    for name in names:
        for path in sorted(snapshots.glob(f"*/{name}")):
            if path.is_file():
                return str(path)
    return None


def _registry_entry(model: str, tag: str) -> tuple[str, tuple[str, ...], str]:
    if (model, tag) in _KNOWN:
        return _KNOWN[(model, tag)]
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(model) if model in open_clip.list_models() else []
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {model!r}; known tags: {known}")
    hub = cfg.get("hf_hub", "")
    repo, filename = os.path.split(hub.rstrip("/")) if hub and not hub.endswith("/") else (hub.rstrip("/"), "")
    names = (filename,) if filename else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return repo, names, os.path.basename(cfg.get("url", "")) or ""


def resolve_clip_weights(
    model: str = "ViT-B-32", pretrained: str | None = "openai", weights: str | None = None, cache_dir: str | None = None
) -> str | None:
    """The local weights file for ``(model, pretrained)``, without any network access.

    Returns ``None`` for random weights (``pretrained=None`` and no ``weights``).

    Raises:
        FileNotFoundError: ``weights`` does not exist, or no cached file was found (the
            message says how to provide one).
    """
    if weights:
        if not Path(weights).expanduser().is_file():
            raise FileNotFoundError(f"CLIP weights file not found: {weights}")
        return str(Path(weights).expanduser())
    if pretrained is None:
        return None
    repo, names, url_name = _registry_entry(model, pretrained)
    found = _find_in_hf_cache(repo, names, cache_dir) if repo else None
    if found is None and url_name:
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / url_name
        found = str(candidate) if candidate.is_file() else None
    if found is None:
        raise FileNotFoundError(
            f"no local CLIP weights for open_clip model {model!r} with tag {pretrained!r} (looked in the "
            f"Hugging Face cache {_hf_hub_dir(cache_dir)} and ~/.cache/clip; nothing is downloaded at run time).\n"
            + OFFLINE_HELP.format(repo=repo or "<repo>", model=model, tag=pretrained)
        )
    return found


def clip_preprocess(images: Tensor, size: int = 224, mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD) -> Tensor:
    """uint8 ``(B, C, H, W)`` (C = 1 or 3) -> normalised fp32 ``(B, 3, size, size)``.

    PIL-equivalent bicubic resize of the short side to ``size`` (see the module docstring),
    centre crop, ``x / 255``, ``(x - mean) / std``.
    """
    check_uint8(images, "clip_preprocess")
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    if nw != w:  # PIL: horizontal pass first, uint8 rounding after each pass
        x = F.interpolate(x, size=(h, nw), mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
    if nh != h:
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[:, :, top : top + size, left : left + size] / 255.0
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _require_open_clip() -> None:
    if importlib.util.find_spec("open_clip") is None:
        raise ImportError(
            "CLIPFeatures needs open-clip-torch (and a torch build that matches torchvision): "
            "pip install 'lightning_infdiff[clip]' (see docs/guide.md, 'FID_CLIP and the other metrics')"
        )


class CLIPFeatures(FeatureExtractor):
    """Image embeddings of an open_clip model (FID_CLIP).

    Args:
        model_name: any open_clip architecture (``open_clip.list_models()``), default ``ViT-B-32``.
        pretrained: open_clip pretrained tag (default ``openai``, the protocol's weights), looked
            up in the local caches only; ``None`` for random weights (plumbing checks).
        weights: a local weights file (state dict, ``.bin``/``.pt``/``.safetensors``); takes
            precedence over the cache lookup.
        model_config: a JSON open_clip model config registered under ``model_name`` (custom or
            tiny architectures).
        cache_dir: Hugging Face hub cache to search instead of the default.
        allow_download: let open_clip download the tag's weights when they are not cached (only
            with ``HF_HUB_OFFLINE`` unset).
        precision: ``32`` or ``bf16``: the image tower's weights and activations in bf16 (2x
            faster on this CPU and 0.9% relative feature error; autocast was 2x *slower* here).
            The weights hash, and so the reference cache, differs between the two.
        image_size: input side (default: the model's).
    """

    metric = "fid_clip"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        weights: str | None = None,
        model_config: str | None = None,
        cache_dir: str | None = None,
        allow_download: bool = False,
        precision: Literal["32", "bf16"] = "32",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if model_config is None:
            try:
                path = resolve_clip_weights(model_name, pretrained, weights, cache_dir)
            except FileNotFoundError:
                offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
                if not allow_download or offline or weights:
                    raise
                path = pretrained  # a tag: open_clip downloads it
        else:
            path = resolve_clip_weights(model_name, None, weights, cache_dir) if weights else None
        _require_open_clip()
        import open_clip

        if model_config is not None:
            cfg = json.loads(Path(model_config).read_text())
            open_clip.factory._MODEL_CONFIGS[model_name] = cfg  # noqa: SLF001 - open_clip's registry
        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        model = open_clip.create_model(model_name, pretrained=path, cache_dir=cache_dir, device="cpu")
        self.visual = model.visual
        self.visual.requires_grad_(False)
        del model
        self.image_size = int(image_size or _side(self.visual.image_size))
        self.precision = precision
        source = Path(weights).name if weights else (pretrained if model_config is None and pretrained else "random")
        self.name = f"clip_{model_name}_{source}"
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.visual.to(self.dtype)
        self.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, dtype=self.dtype)
            self.num_features = int(self.visual(probe).shape[-1])

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> fp32 embeddings ``(B, D)`` (protocol preprocessing)."""
        x = clip_preprocess(images, self.image_size)
        return self.visual(x.to(self.dtype)).float()


def _side(size: int | tuple[int, int] | list[int]) -> int:
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"only square CLIP inputs are supported, got image_size {size}")
        return int(size[0])
    return int(size)
