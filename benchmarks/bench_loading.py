"""Suite section 5: data loading throughput against what training consumes.

Loader side: ``bench_data.measure`` (steady-state batches/s of ``FieldDataModule``'s train
loader after the first batch, median over repeats) at the quickstart's data setting (bundled
MNIST digits, 32², batch 32, 2x subsampling) with 0 and 1 worker processes (the quickstart
uses 1), plus the procedural Gaussian-blob source. Consumer side: the default denoiser's
training-step rate (bf16 autocast, the quickstart's precision) at the same batch, measured in
the same run. ``headroom = loader batches/s / training steps/s``: above 1 the loader keeps up.
With workers, loading and training share the same cores, so the headroom of a real run is lower
than this ratio of separate measurements when the machine has no spare core.
"""

from __future__ import annotations

import torch
from bench_common import default_denoiser, interleaved, spread
from bench_precision import make_step, setting, tiny_denoiser


def run(quick: bool, threads: int, budget_s: float) -> dict:
    from bench_data import measure

    from lightning_infdiff.data import FieldDataModule, GaussianBlobs, MNISTDigits

    torch.manual_seed(0)
    s = setting(quick)
    step = make_step((tiny_denoiser() if quick else default_denoiser()).train(), s, bf16=True)
    st = spread(interleaved({"step": step}, s["repeats"], warmup=1)["step"])
    steps_per_s = 1.0 / st["median"]
    batches, repeats = (3, 2) if quick else (40, 3)
    cases = {"GaussianBlobs, 0 workers": (GaussianBlobs(length=64 if quick else 4096), 0)}
    if not quick:
        cases = {"MNISTDigits (quickstart), 1 worker": (MNISTDigits(), 1),
                 "MNISTDigits (quickstart), 0 workers": (MNISTDigits(), 0), **cases}
    rows = {}
    for name, (source, workers) in cases.items():
        dm = FieldDataModule(source, resolution=s["res"], batch_size=s["batch"], num_workers=workers,
                             subsample_rate=s["rate"], val_size=1)
        r = measure(dm, batches, repeats)
        r["headroom_vs_training"] = r["batches_per_s"] / steps_per_s
        rows[name] = r
        print(f"  {name}: {r['batches_per_s']} batches/s = {r['headroom_vs_training']:.1f}x the training step rate "
              f"({steps_per_s:.2f} steps/s)", flush=True)
    return {"setting": s, "training_step_bf16": st, "training_steps_per_s": steps_per_s, "loaders": rows,
            "method": f"bench_data.measure: {batches} steady-state batches x {repeats} repeats, median; training = "
                      "median bf16 step of the default denoiser at the same batch"}
