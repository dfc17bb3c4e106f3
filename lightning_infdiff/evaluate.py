"""``infdiff evaluate``: Fréchet distances of a checkpoint's samples, appended to a results file.

For every resolution the checkpoint samples ``num_samples`` images (sample ``i`` uses seed
``seed + i``, so results do not depend on the batch size), quantises them to uint8 and compares
each metric's features with reference statistics of the training data rendered at that
resolution (cached, see :mod:`lightning_infdiff.metrics.reference`). Each (metric, resolution)
appends one JSON line to ``<out>/results.jsonl``::

    {"checkpoint": ..., "metric": "fid_clip", "resolution": [H, W], "value": ..., "num_samples": ...,
     "sampler": ..., "steps": ..., "seed": ..., "wall_seconds": ...}

and one markdown table row to ``<out>/results.md``. ``wall_seconds`` is the time spent sampling
and extracting features at that resolution (shared by the metrics evaluated together; reference
statistics, computed once and cached, are not included).

With ``artifacts`` (the default) the same samples are also scored at their own resolution by the
sub-pixel artifact measure (:mod:`lightning_infdiff.metrics.artifacts`): a row with metric
``artifacts`` whose value is the samples' share of variance above half a data pixel divided by
that of real images resampled bicubically from the training resolution to the same grid (1 = as
smooth as real data), with both shares in ``samples_share`` and ``real_share``.

A class-conditional checkpoint is sampled with the balanced label cycle ``i % num_classes``; with
``offline`` it also gets a row ``offline_accuracy``: the share of samples the offline classifier
reads as the digit (or class) that was asked for (on a wide canvas, in the square window that holds
the ink), the recognisability test of a conditional run.

With ``floor`` each metric also gets a row ``<metric>_floor``: the same distance for as many
*held-out real* images (the validation split) rendered on the grid, against the same reference.
A Fréchet distance from a few hundred samples is biased upwards; the floor is that bias, the
best a model could score at this sample count. With ``sheet`` the first ``sheet`` samples of
each grid are saved as ``<out>/samples_<H>x<W>.png`` (the same seeds for every checkpoint), which
``infdiff report`` puts side by side.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .data.datamodule import FieldDataModule
from .precision import inference_precision

__all__ = ["evaluate_command", "train_classifier_command", "load_datamodule", "RESULT_KEYS"]

RESULT_KEYS = ("checkpoint", "metric", "resolution", "value", "num_samples", "sampler", "steps", "seed", "wall_seconds")
MD_HEADER = (
    "| checkpoint | metric | resolution | value | samples | sampler | steps | seed | wall s |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


def load_datamodule(ckpt_path: str | Path, data_config: str | None) -> FieldDataModule:
    """The DataModule a checkpoint was trained on, from ``data_config`` or the run's ``config.yaml``.

    ``data_config`` is any YAML with a ``data:`` section (e.g. ``configs/data/digits.yaml`` or
    the ``config.yaml`` LightningCLI writes next to ``checkpoints/``).
    """
    if data_config is None:
        guess = Path(ckpt_path).resolve().parent.parent / "config.yaml"
        if not guess.is_file():
            raise FileNotFoundError(
                f"no --data_config given and no {guess} next to the checkpoint: pass the data YAML "
                "(e.g. --data_config configs/data/digits.yaml) whose images are the FID reference"
            )
        data_config = str(guess)
    path = Path(data_config)
    if not path.is_file():
        raise FileNotFoundError(f"data config not found: {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    if "data" not in cfg or not isinstance(cfg["data"], dict):
        raise ValueError(f"{path} has no 'data:' section (expected a FieldDataModule config)")
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FieldDataModule, "data", fail_untyped=False)
    parsed = parser.parse_object({"data": cfg["data"]})
    return parser.instantiate_classes(parsed).data


def evaluate_command(
    ckpt_path: str,
    out: str = "eval",
    num_samples: int = 1000,
    resolutions: list[int | str] | None = None,
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] = "dpmpp_2m",
    steps: int = 25,
    metrics: list[Literal["offline", "clip", "inception"]] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    data_config: str | None = None,
    reference_split: Literal["train", "val", "all"] = "train",
    reference_count: int | None = None,
    offline_dataset: Literal["digits", "animals"] = "digits",
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | None = "openai",
    clip_weights: str | None = None,
    inception_weights: str | None = None,
    precision: Literal["auto", "32", "bf16", "16"] = "auto",
    device: str = "cpu",
    artifacts: bool = True,
    artifact_fraction: float = 1.0 / 56.0,
    canvas: Literal["wide", "stretch"] = "wide",
    floor: bool = False,
    sheet: int = 0,
) -> list[dict[str, Any]]:
    """Evaluate a checkpoint's samples with Fréchet distances; append the results to ``out``.

    Args:
        ckpt_path: checkpoint written by ``infdiff fit`` (EMA weights when EMA was used).
        out: folder of ``results.jsonl`` and ``results.md`` (appended to).
        num_samples: generated images per resolution (the protocol uses 50,000).
        resolutions: grids ``H`` or ``HxW`` (default: the training resolution).
        sampler: ``ddpm``, ``ddim``, ``dpmpp_2m``, ``euler``, ``heun`` or ``dpmpp_3m``.
        steps: solver steps.
        metrics: ``offline`` (bundled classifier), ``clip`` (FID_CLIP) and/or ``inception``.
        batch_size: samples per forward batch (does not change the samples).
        seed: first seed.
        data_config: YAML with the ``data:`` section of the reference images (default: the
            ``config.yaml`` of the checkpoint's run).
        reference_split: data split of the reference statistics (the protocol: ``train``).
        reference_count: number of reference images (default: the whole split).
        offline_dataset: bundled set of the offline classifier (``digits`` or ``animals``).
        clip_model: open_clip architecture for ``clip``.
        clip_pretrained: open_clip tag (looked up in the local caches only).
        clip_weights: local CLIP weights file (see docs/guide.md, "FID_CLIP and the other metrics").
        inception_weights: local Inception weights file.
        precision: ``auto`` (by the hardware, :mod:`lightning_infdiff.precision`), ``32``, ``bf16`` or
            ``16`` (CUDA) for the denoiser.
        device: ``cpu``, ``cuda``, ...
        artifacts: also report the artifact measure against real images on each grid.
        artifact_fraction: its scale ``s`` as a fraction of the grid's shorter side (default:
            half a pixel of 28-pixel data, ``1/56``).
        canvas: non-square grids as a wider view (``wide``: the real references are the square
            images with their border replicated) or the training square stretched (``stretch``: the
            centre crop of the square at the longer side); see :mod:`lightning_infdiff.metrics.reference`.
        floor: also report each metric for ``num_samples`` held-out real images (``<metric>_floor``).
        sheet: save the first ``sheet`` samples of each grid as ``samples_<H>x<W>.png`` in ``out``.
    """
    from .callbacks.fid import sample_into
    from .checkpoint import load_module
    from .cli import parse_grid
    from .coords import Grid
    from .images import save_grid
    from .metrics.artifacts import ArtifactMeter, highfreq_share, real_reference
    from .metrics.features import build_extractor
    from .metrics.frechet import FrechetDistance
    from .metrics.reference import real_images, reference_stats, split_of

    if num_samples < 2 or steps < 1 or batch_size < 1 or sheet < 0:
        raise ValueError(f"num_samples must be >= 2, steps and batch_size >= 1 and sheet >= 0, got {num_samples}, "
                         f"{steps}, {batch_size}, {sheet}")
    metrics = ["offline"] if metrics is None else list(metrics)
    if not metrics and not artifacts:
        raise ValueError("nothing to evaluate: give --metrics or keep --artifacts true")
    module = load_module(ckpt_path).to(device)
    dm = load_datamodule(ckpt_path, data_config)
    if resolutions:
        grids = [Grid(*parse_grid(r), canvas) for r in resolutions]
    else:
        res = getattr(module, "data_resolution", None) or dm.resolution
        grids = [Grid(int(res), int(res), canvas)]
    dev = torch.device(device)
    print(inference_precision(dev, precision), file=sys.stderr)
    extractors = [
        build_extractor(m, offline_dataset, clip_model, clip_pretrained, clip_weights, inception_weights).to(dev)
        for m in metrics
    ]
    agree = label_agreement(module, offline_dataset) if "offline" in metrics else []
    held_out = split_of(dm, "val") if floor else None
    if held_out is not None and len(held_out) < num_samples:  # before any sampling
        raise ValueError(f"floor: the validation split has {len(held_out)} images, fewer than num_samples={num_samples}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    seeds = list(range(seed, seed + num_samples))
    for g in grids:
        fids = [
            FrechetDistance(e, reference=reference_stats(dm, e, g, reference_split, reference_count, batch_size, device=dev)).to(dev)
            for e in extractors
        ]
        meter = ArtifactMeter(g, artifact_fraction) if artifacts else None
        kept = FirstImages(sheet)
        start = time.perf_counter()
        sample_into(module, g, seeds, [*fids, *([meter] if meter else []), kept, *agree], batch_size, sampler,
                    steps, precision, seed, progress=True)
        values = [float(f.compute()) for f in fids]
        wall = time.perf_counter() - start
        if sheet:
            save_grid(kept.images(), out_dir / f"samples_{g[0]}x{g[1]}.png", nrow=min(sheet, 10))
        common = {"checkpoint": str(ckpt_path), "resolution": [g[0], g[1]], "num_samples": num_samples,
                  "sampler": sampler, "steps": steps, "seed": seed, "wall_seconds": round(wall, 3)}
        for e, value in zip(extractors, values, strict=True):
            rows.append(_row(common, e.metric, value))
        for a in agree:
            rows.append(_row(common, "offline_accuracy", a.compute()))
        if floor:
            for f in fids:
                f.reset()
            for i in range(0, num_samples, batch_size):  # each batch of held-out images rendered once
                held = real_images(dm.source, held_out[i : min(i + batch_size, num_samples)], g).to(dev)
                for f in fids:
                    f.update(held, real=False)
            for f, e in zip(fids, extractors, strict=True):
                rows.append(_row(common | {"wall_seconds": 0.0}, f"{e.metric}_floor", float(f.compute())))
        if meter is not None:
            split = split_of(dm, reference_split)[:num_samples]
            real = float(highfreq_share(real_reference(dm.source, split, dm.resolution, g), meter.sigma).mean())
            share = meter.compute()
            rows.append(_row(common, "artifacts", share / real if real > 0 else float("inf"), samples_share=share,
                             real_share=real))
    _append(out_dir, rows)
    for r in rows:
        extra = f", samples {r['samples_share']:.4f} / real {r['real_share']:.4f}" if "real_share" in r else ""
        print(f"{r['metric']} {r['resolution'][0]}x{r['resolution'][1]}: {r['value']:.4f} "
              f"({r['num_samples']} samples, {r['wall_seconds']:.1f} s{extra})")
    return rows


class FirstImages:
    """Keeps the first ``n`` generated images fed to it (the metric interface of :func:`sample_into`)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.kept: list[torch.Tensor] = []

    def reset(self) -> None:
        self.kept = []

    def update(self, images: torch.Tensor, real: bool = False) -> None:
        have = sum(len(x) for x in self.kept)
        if have < self.n:
            self.kept.append(images[: self.n - have].cpu())

    def images(self) -> torch.Tensor:
        """The kept uint8 images as floats in ``[-1, 1]``."""
        return torch.cat(self.kept).float() / 127.5 - 1.0


def label_agreement(module: Any, dataset: Literal["digits", "animals"]) -> list[LabelAgreement]:
    """``[LabelAgreement]`` for a class-conditional ``module`` whose classes are the offline
    classifier's (same count), else ``[]`` (with a note on stderr when only the counts differ)."""
    num_classes = int(getattr(module.denoiser, "num_classes", 0) or 0)
    if not num_classes:
        return []
    agree = LabelAgreement(dataset)
    if agree.num_classes != num_classes:
        print(f"offline_accuracy skipped: the {dataset} classifier reads {agree.num_classes} classes, the "
              f"denoiser has {num_classes}", file=sys.stderr)
        return []
    return [agree]


class LabelAgreement:
    """Share of a conditional run's samples that the offline classifier reads as the label asked for.

    Fed uint8 images in seed order (:func:`~lightning_infdiff.callbacks.fid.sample_into`), the
    ``i``-th was asked for label ``i % num_classes``.
    """

    def __init__(self, dataset: Literal["digits", "animals"]) -> None:
        from .metrics.classifier import load_classifier

        self.classifier, _ = load_classifier(dataset)
        self.num_classes = int(self.classifier.head.out_features)
        self.reset()

    def reset(self) -> None:
        self.seen, self.agree = 0, 0

    def update(self, images: torch.Tensor, real: bool = False) -> None:
        from .metrics.classifier import classify, ink_windows

        pred, _ = classify(self.classifier, ink_windows(images.float() / 127.5 - 1.0))
        asked = torch.arange(self.seen, self.seen + len(images)) % self.num_classes
        self.agree += int((pred == asked).sum())
        self.seen += len(images)

    def compute(self) -> float:
        return self.agree / self.seen if self.seen else float("nan")


def _row(common: dict[str, Any], metric: str, value: float, **extra: float) -> dict[str, Any]:
    """One result row: the keys of :data:`RESULT_KEYS` in order, then any ``extra`` ones."""
    return {k: {"metric": metric, "value": value}.get(k, common.get(k)) for k in RESULT_KEYS} | extra


def _append(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    with (out_dir / "results.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    md = out_dir / "results.md"
    new = not md.is_file()
    with md.open("a") as f:
        if new:
            f.write(MD_HEADER)
        for r in rows:
            h, w = r["resolution"]
            f.write(
                f"| {r['checkpoint']} | {r['metric']} | {h}x{w} | {r['value']:.4f} | {r['num_samples']} | "
                f"{r['sampler']} | {r['steps']} | {r['seed']} | {r['wall_seconds']:.1f} |\n"
            )


def train_classifier_command(dataset: Literal["digits", "animals"] = "digits", retrain: bool = False) -> Path:
    """Train (or load) the offline-metric classifier of a bundled dataset and cache it.

    Args:
        dataset: ``digits`` or ``animals``.
        retrain: train again even if a cached classifier exists.
    """
    from .metrics.classifier import classifier_path, load_classifier

    _, acc = load_classifier(dataset, retrain=retrain)
    path = classifier_path(dataset)
    print(f"classifier for {dataset}: held-out accuracy {acc:.4f}, cached at {path}")
    return path
