"""CLIP preprocessing (PIL/clean-fid equivalence), offline failures, tiny open_clip models."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_infdiff.metrics.clip import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPFeatures,
    clip_preprocess,
    resolve_clip_weights,
)
from lightning_infdiff.metrics.frechet import FrechetDistance
from lightning_infdiff.metrics.inception import InceptionFeatures

HAS_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
needs_open_clip = pytest.mark.skipif(
    not HAS_OPEN_CLIP, reason="open-clip-torch is not importable (install the clip extra in a torch+torchvision venv)"
)
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}


def pil_reference(img: np.ndarray, size: int = 224) -> np.ndarray:
    """CLIP's PIL path: Resize(short side -> size, BICUBIC) on uint8 RGB, centre crop."""
    pil = Image.fromarray(img).convert("RGB")
    w, h = pil.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    pil = pil.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.asarray(pil)[top : top + size, left : left + size]


def undo_normalisation(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x * s + m) * 255.0


@pytest.mark.parametrize("hw", [(16, 16), (28, 28), (64, 64), (48, 80), (300, 260)])
def test_preprocess_matches_pil_bicubic(hw):
    g = torch.Generator().manual_seed(hw[0])
    noise = torch.randint(0, 256, (2, 3, *hw), generator=g, dtype=torch.uint8)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 5, 5, generator=g) * 255, size=hw, mode="bilinear")
    for images in (noise, smooth.round().to(torch.uint8)):
        ours = undo_normalisation(clip_preprocess(images))
        assert ours.shape == (2, 3, 224, 224)
        ref = np.stack([pil_reference(im.permute(1, 2, 0).numpy()) for im in images]).transpose(0, 3, 1, 2)
        err = (ours - torch.from_numpy(ref).float()).abs()
        # stated tolerance (PIL rounds its filter taps to fixed point): every pixel within 2 grey
        # levels, mean absolute difference below 0.06 levels
        assert float(err.max()) <= 2.0 + 1e-3 and float(err.mean()) < 0.06


def test_preprocess_grey_is_replicated_and_224_is_identity():
    img = torch.randint(0, 256, (1, 1, 224, 224), dtype=torch.uint8)
    out = undo_normalisation(clip_preprocess(img))
    torch.testing.assert_close(out, img.float().expand(1, 3, -1, -1), atol=1e-3, rtol=0)


def test_preprocess_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        clip_preprocess(torch.rand(1, 3, 8, 8))


@pytest.mark.skipif(importlib.util.find_spec("cleanfid") is None, reason="clean-fid is not installed")
@pytest.mark.parametrize("hw", [(32, 32), (64, 64), (48, 80)])
def test_preprocess_matches_clean_fid(hw, monkeypatch):
    if importlib.util.find_spec("clip") is None:
        # clean-fid's CLIP module imports OpenAI's `clip` package at load time; the preprocessing
        # function under test does not use it
        monkeypatch.setitem(sys.modules, "clip", types.ModuleType("clip"))
    from cleanfid.clip_features import img_preprocess_clip

    img = np.random.default_rng(hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = torch.from_numpy(np.asarray(img_preprocess_clip(img), dtype=np.float32))
    ours = undo_normalisation(clip_preprocess(torch.from_numpy(img).permute(2, 0, 1)[None]))[0].permute(1, 2, 0)
    err = (ours - ref).abs()
    assert float(err.max()) <= 2.0 + 1e-3 and float(err.mean()) < 0.06


def test_missing_clip_weights_fail_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        CLIPFeatures(allow_download=True)  # offline wins over allow_download
    assert time.perf_counter() - start < 1.0
    text = str(err.value)
    for needle in ("ViT-B-32", "openai", "timm/vit_base_patch32_clip_224.openai", "weights=", "HF_HUB_OFFLINE"):
        assert needle in text
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_clip_weights(weights=str(tmp_path / "nope.bin"))


def test_clip_weights_found_in_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"x")
    assert resolve_clip_weights() == str(snap / "open_clip_pytorch_model.bin")
    assert resolve_clip_weights(pretrained=None) is None


def test_missing_inception_weights_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05"):
        InceptionFeatures()
    assert time.perf_counter() - start < 1.0


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(TINY))
    return str(path)


@needs_open_clip
def test_tiny_clip_features_and_fid_of_a_set_against_itself(tiny_config):
    feats = CLIPFeatures("tiny-test-clip", pretrained=None, model_config=tiny_config)
    assert feats.num_features == 16 and feats.name == "clip_tiny-test-clip_random"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), generator=g, dtype=torch.uint8)
    out = feats(images)
    assert out.shape == (40, 16) and out.dtype == torch.float32
    fid = FrechetDistance(feats)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert float(fid.compute()) == pytest.approx(0.0, abs=1e-6)
    fid.reset()
    fid.update(images, real=True)
    fid.update(255 - images, real=False)
    assert float(fid.compute()) > 1e-3
    bf16 = CLIPFeatures("tiny-test-clip", pretrained=None, model_config=tiny_config, precision="bf16")
    bf16.load_state_dict(feats.state_dict())
    assert bf16.visual.conv1.weight.dtype == torch.bfloat16 and bf16.weights_hash() != feats.weights_hash()
    err = (bf16(images) - out).norm() / out.norm()
    assert 0 < float(err) < 0.05


@needs_open_clip
def test_clip_weights_from_a_local_file(tmp_path, tiny_config):
    import open_clip

    CLIPFeatures("tiny-file-clip", pretrained=None, model_config=tiny_config)  # registers the config
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-file-clip", pretrained=None)
    path = tmp_path / "tiny_weights.bin"
    torch.save(model.state_dict(), path)
    a = CLIPFeatures("tiny-file-clip", weights=str(path), model_config=tiny_config)
    b = CLIPFeatures("tiny-file-clip", weights=str(path), model_config=tiny_config)
    rand = CLIPFeatures("tiny-file-clip", pretrained=None, model_config=tiny_config)
    assert a.name == "clip_tiny-file-clip_tiny_weights.bin"
    assert a.weights_hash() == b.weights_hash() != rand.weights_hash()
    x = torch.randint(0, 256, (2, 3, 20, 24), dtype=torch.uint8)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.visual.conv1.weight, model.visual.conv1.weight)
