"""Measurements of the FID tooling on this machine: ``python -m lightning_infdiff.metrics.benchmark``.

* ``sanity``: the offline metric (bundled-digits classifier features) on real-vs-real splits of
  the digits (should be small) and real-vs-uniform-noise (large).
* ``speed``: seconds per 1,000 images of the offline extractor and of a CLIP extractor (random
  ViT-B-32 weights unless ``--clip_weights``; protocol preprocessing included) in fp32 and bf16,
  and the projected wall time of a 10k-sample FID_CLIP at 32² for the default model (sampling
  time measured on a few batches of the base.yaml denoiser; weights do not change the cost).

Run with ``OMP_NUM_THREADS=1`` and ``--threads 1`` for the single-thread numbers of the README.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.bundled import MNISTDigits
from ..data.datamodule import FieldDataModule
from ..precision import inference_autocast
from .features import ClassifierFeatures
from .frechet import FeatureStats, frechet_distance
from .reference import real_images, split_of


def sanity(resolution: int = 32, n: int = 1000) -> dict[str, float]:
    """Offline FID of two disjoint real digit sets, of real vs noise, and of train vs val."""
    if 3 * n > 5000:
        raise ValueError(f"the 5,000 digits hold at most three disjoint sets of {5000 // 3}, got n={n}")
    dm = FieldDataModule(MNISTDigits(1), resolution=resolution, val_size=n)
    feats = ClassifierFeatures("digits")
    train, val = split_of(dm, "train"), split_of(dm, "val")

    def stats(images: torch.Tensor) -> FeatureStats:
        s = FeatureStats.empty(feats.num_features)
        for chunk in images.split(250):
            s.update(feats(chunk))
        return s

    a = stats(real_images(dm.source, train[:n], (resolution, resolution)))
    b = stats(real_images(dm.source, train[n : 2 * n], (resolution, resolution)))
    v = stats(real_images(dm.source, val[:n], (resolution, resolution)))
    g = torch.Generator().manual_seed(0)
    noise = stats(torch.randint(0, 256, (n, 1, resolution, resolution), generator=g, dtype=torch.uint8))
    flat = torch.randint(0, 20, (n, 1, 1, 1), generator=g, dtype=torch.uint8).expand(n, 1, resolution, resolution)
    blank = stats(flat.contiguous())
    fd = lambda x, y: frechet_distance(x.mean, x.cov, y.mean, y.cov)  # noqa: E731
    return {
        f"real_vs_real_train_{n}v{n}": fd(a, b),
        f"real_vs_real_train_val_{n}v{n}": fd(a, v),
        f"real_vs_uniform_noise_{n}v{n}": fd(a, noise),
        f"real_vs_near_black_{n}v{n}": fd(a, blank),
    }


def _time(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int) -> tuple[float, float]:
    """(wall, process CPU) seconds; on a shared machine the CPU time is the steadier number."""
    fn(images[:2])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for chunk in images.split(batch):
        fn(chunk)
    return time.perf_counter() - start, time.process_time() - cpu


def speed(clip_images: int = 64, clip_weights: str | None = None, sample_images: int = 32) -> dict[str, float]:
    """Seconds per 1,000 images of each extractor and the projected 10k FID_CLIP wall time."""
    out: dict[str, float] = {}
    x32 = torch.randint(0, 256, (2000, 1, 32, 32), dtype=torch.uint8)
    offline = ClassifierFeatures("digits")
    wall, cpu = _time(offline, x32, 250)
    out["offline_s_per_1000_at_32"], out["offline_cpu_s_per_1000_at_32"] = wall / 2.0, cpu / 2.0
    try:
        from .clip import CLIPFeatures

        for precision in ("32", "bf16"):
            clip = CLIPFeatures("ViT-B-32", pretrained=None, weights=clip_weights, precision=precision)  # type: ignore[arg-type]
            rgb = torch.randint(0, 256, (clip_images, 3, 32, 32), dtype=torch.uint8)
            wall, cpu = _time(clip, rgb, 32)
            out[f"clip_vitb32_fp{precision}_s_per_1000"] = wall / clip_images * 1000
            out[f"clip_vitb32_fp{precision}_cpu_s_per_1000"] = cpu / clip_images * 1000
            out[f"clip_vitb32_fp{precision}_images_per_s"] = 1000 / out[f"clip_vitb32_fp{precision}_s_per_1000"]
            print({k: v for k, v in out.items() if f"fp{precision}" in k}, flush=True)  # partial results
    except ImportError as err:
        out["clip_skipped"] = str(err)  # type: ignore[assignment]
    # default model (configs/denoisers/sparse_operator.yaml), 25 dpmpp_2m steps at 32^2, fp32 and bf16 autocast
    import yaml
    from jsonargparse import ArgumentParser

    from ..denoisers.base import Denoiser
    from ..lit.module import DiffusionModule

    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/denoisers/sparse_operator.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--denoiser", type=Denoiser)
    den_cfg = dict(base["model"]["denoiser"])
    den_cfg["init_args"] = {**den_cfg["init_args"], "in_channels": 1}
    den = parser.instantiate_classes(parser.parse_object({"denoiser": den_cfg})).denoiser
    from ..processes import GaussianProcess

    module = DiffusionModule(den, GaussianProcess()).eval()
    for precision in ("32", "bf16"):
        seeds = list(range(sample_images))
        with inference_autocast("cpu", precision):  # both precisions, whatever the hardware rule
            module.generate((32, 32), seeds[:2], steps=2)
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(0, sample_images, 16):
                module.generate((32, 32), seeds[i : i + 16], steps=25)
        out[f"sample_32_25steps_fp{precision}_s_per_1000"] = (time.perf_counter() - start) / sample_images * 1000
        out[f"sample_32_25steps_fp{precision}_cpu_s_per_1000"] = (time.process_time() - cpu) / sample_images * 1000
    if "clip_vitb32_fp32_s_per_1000" in out:
        for precision in ("32", "bf16"):
            for kind in ("", "_cpu"):
                out[f"fid_clip_10k_at_32_fp{precision}{kind}_projected_s"] = 10 * (
                    out[f"sample_32_25steps_fp{precision}{kind}_s_per_1000"]
                    + out[f"clip_vitb32_fp{precision}{kind}_s_per_1000"]
                )
    return out


def main() -> None:
    """CLI: ``sanity`` and/or ``speed``; prints JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="+", choices=["sanity", "speed"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--clip_images", type=int, default=64)
    parser.add_argument("--clip_weights", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {"threads": args.threads, "torch": torch.__version__}
    if "sanity" in args.what:
        results.update(sanity(n=args.n))
    if "speed" in args.what:
        results.update(speed(args.clip_images, args.clip_weights))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
