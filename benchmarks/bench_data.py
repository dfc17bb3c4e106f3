"""Data loading against training: does the main job's loader keep up with its training step?

The loader is ``FieldDataModule`` at the main job's data setting (bundled MNIST digits, 32², batch
32, 2x subsampling) with 0 and 1 worker processes (the main job uses 1); its rate is batches/s
after the first batch, median over repeats. The consumer is the main job's training step in the
precision the hardware picks, measured in the same run. ``headroom = loader batches/s ÷ training
steps/s``: above 1 the loader keeps up. With a worker, loading and training share the cores, so
a real run's headroom is lower than this ratio of separate measurements on a busy machine.

    python benchmarks/bench_data.py --out benchmarks/results/data.md
"""

from __future__ import annotations

import statistics
import time

import harness
import torch


def loader_rate(dm, batches: int, repeats: int) -> float:  # noqa: ANN001 - a FieldDataModule
    """Median steady-state batches/s of ``dm``'s train loader (the first batch not counted)."""
    dm.setup()
    rates = []
    for _ in range(repeats):
        it = iter(dm.train_dataloader())
        next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rates.append(batches / (time.perf_counter() - t0))
        del it
    return statistics.median(rates)


def run(quick: bool) -> str:
    from lightning_infdiff.data import FieldDataModule, GaussianBlobs, MNISTDigits
    from lightning_infdiff.precision import resolve_precision

    torch.manual_seed(0)
    data = harness.main_config()["data"]
    res, batch, rate = (16, 2, 2) if quick else (data["resolution"], data["batch_size"], data["subsample_rate"])
    bf16 = resolve_precision("cpu").precision.startswith("bf16")
    step = harness.train_step(harness.main_denoiser(quick), res, batch, rate, bf16=bf16)
    steps_per_s = 1.0 / harness.timed({"step": step}, repeats=2 if quick else 7)["step"]
    cases = {"GaussianBlobs, 0 workers": (GaussianBlobs(length=64), 0)} if quick else {
        "MNISTDigits, 1 worker (main job)": (MNISTDigits(), 1), "MNISTDigits, 0 workers": (MNISTDigits(), 0)}
    rows = []
    for name, (source, workers) in cases.items():
        dm = FieldDataModule(source, resolution=res, batch_size=batch, num_workers=workers, subsample_rate=rate,
                             val_size=1)
        r = loader_rate(dm, 3 if quick else 40, 2 if quick else 3)
        rows.append([name, f"{r:.1f}", f"{r / steps_per_s:.1f}x"])
    return (f"{res}², batch {batch}, {rate}x subsampling; training step ({'bf16' if bf16 else 'fp32'}): "
            f"{steps_per_s:.2f} steps/s.\n\n"
            + harness.table(["loader", "batches/s", "headroom over training"], rows) + "\n")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    harness.setup(args)
    harness.report("Data loading against training", run(args.quick), args.out)
