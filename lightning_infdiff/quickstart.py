"""The README's main job: train the default model on the bundled digits, then sample everywhere.

``python -m lightning_infdiff.quickstart`` (``make train``) runs
``infdiff fit --config configs/base.yaml --config configs/quickstart.yaml``, then draws
class-conditional samples (digits 0-9, two rows) at the training resolution, 2x, 4x and a
non-square grid, checks them with a small classifier trained on the bundled digits, and prints
where everything is. Extra arguments are passed to ``infdiff fit`` (e.g. ``--trainer.max_steps 200``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .checkpoint import load_module
from .cli import InfDiffCLI
from .data.datamodule import FieldDataModule
from .images import save_grid
from .lit.module import DiffusionModule

__all__ = ["main", "evaluate_digits"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def evaluate_digits(module: DiffusionModule, grids: list[tuple[int, int]], out: Path, per_class: int = 2,
                    steps: int = 25) -> list[dict]:
    """Sample digits 0-9 ``per_class`` times at each grid, save grids, and score them.

    Returns one record per grid: classifier accuracy against the requested digit, mean
    confidence and seconds per image.
    """
    from .metrics.classifier import classify, load_classifier

    classifier, held_out = load_classifier("digits")
    n = 10 * per_class
    labels = torch.arange(n) % 10 if module.denoiser.num_classes else None
    records = []
    for grid in grids:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = module.generate(grid, list(range(n)), steps=steps, labels=labels)
        seconds = (time.perf_counter() - t0) / n
        path = out / f"digits_{grid[0]}x{grid[1]}.png"
        save_grid(x, path, nrow=10)
        pred, conf = classify(classifier, x)
        rec = {"grid": f"{grid[0]}x{grid[1]}", "png": str(path), "seconds_per_image": round(seconds, 3),
               "mean_confidence": round(conf.mean().item(), 3), "classifier_held_out_accuracy": round(held_out, 3)}
        if labels is not None:
            rec["accuracy_vs_requested_digit"] = round((pred == labels).float().mean().item(), 3)
        records.append(rec)
    return records


def main(argv: list[str] | None = None) -> None:
    """Train, sample, score, report."""
    extra = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    cli = InfDiffCLI(
        DiffusionModule, FieldDataModule,
        args=["fit", "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "quickstart.yaml"), *extra],
        save_config_kwargs={"overwrite": True},
    )
    t_train = time.perf_counter() - t0
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    log_dir = Path(cli.trainer.logger.log_dir)
    module = load_module(ckpt)
    r = int(cli.datamodule.resolution)
    grids = [(r, r), (2 * r, 2 * r), (4 * r, 4 * r), (r, 2 * r)]
    out = log_dir / "quickstart_samples"
    t1 = time.perf_counter()
    records = evaluate_digits(module, grids, out)
    t_sample = time.perf_counter() - t1
    summary = {"train_seconds": round(t_train, 1), "sample_seconds": round(t_sample, 1),
               "checkpoint": ckpt, "log_dir": str(log_dir), "grids": records}
    (log_dir / "quickstart_summary.json").write_text(json.dumps(summary, indent=2))
    print("\n=== lightning_infdiff quickstart ===")
    print(f"trained {cli.trainer.global_step} steps in {t_train:.0f} s; sampled in {t_sample:.0f} s")
    for rec in records:
        acc = rec.get("accuracy_vs_requested_digit")
        acc_txt = f", classifier agrees with the requested digit for {acc:.0%}" if acc is not None else ""
        print(f"  {rec['grid']:>8}: {rec['png']}{acc_txt} (mean confidence {rec['mean_confidence']:.2f})")
    print(f"checkpoint: {ckpt}")
    print(f"TensorBoard: tensorboard --logdir {log_dir.parent}")
    print(f"summary: {log_dir / 'quickstart_summary.json'}")


if __name__ == "__main__":
    main()
