"""The README's main job: train the default model on the bundled digits, then sample everywhere.

``python -m lightning_infdiff.quickstart`` (``make train``) runs ``infdiff fit`` on the configs
of :data:`MAIN_JOB` (base, data, denoiser, process, then the job's own keys), then draws
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
from .malloc import pin_malloc
from .precision import inference_autocast

__all__ = ["MAIN_JOB", "main", "evaluate_digits"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: the main job's configs, in the order LightningCLI stacks them
MAIN_JOB = [CONFIGS / name for name in (
    "base.yaml", "data/digits.yaml", "denoisers/sparse_operator.yaml", "process/mollified.yaml", "quickstart.yaml",
)]


def evaluate_digits(module: DiffusionModule, grids: list[tuple[int, int]], out: Path, per_class: int = 2,
                    steps: int = 25, precision: str = "auto") -> list[dict]:
    """Sample digits 0-9 ``per_class`` times at each grid, save grids, and score them.

    The network runs in ``precision`` (:func:`~lightning_infdiff.precision.inference_autocast`;
    the main job passes the precision it trained in). A wide grid is a wider view: its square
    window holding the digit is what the classifier reads (:func:`~lightning_infdiff.metrics.classifier.ink_windows`).

    Returns one record per grid: classifier accuracy against the requested digit, mean
    confidence and seconds per image.
    """
    from .metrics.classifier import classify, ink_windows, load_classifier

    classifier, held_out = load_classifier("digits")
    n = 10 * per_class
    labels = torch.arange(n) % 10 if module.denoiser.num_classes else None
    records = []
    for grid in grids:
        t0 = time.perf_counter()
        with inference_autocast(module.device, precision):
            x = module.generate(grid, list(range(n)), steps=steps, labels=labels)
        seconds = (time.perf_counter() - t0) / n
        path = out / f"digits_{grid[0]}x{grid[1]}.png"
        save_grid(x, path, nrow=10)
        pred, conf = classify(classifier, ink_windows(x))
        rec = {"grid": f"{grid[0]}x{grid[1]}", "png": str(path), "seconds_per_image": round(seconds, 3),
               "mean_confidence": round(conf.mean().item(), 3), "classifier_held_out_accuracy": round(held_out, 3)}
        if labels is not None:
            rec["accuracy_vs_requested_digit"] = round((pred == labels).float().mean().item(), 3)
        records.append(rec)
    return records


#: added to the run (before the user's arguments): step and validation times in ``throughput.json``
THROUGHPUT_ARGS = ["--trainer.callbacks+=lightning_infdiff.callbacks.Throughput", "--trainer.callbacks.sample_num=0"]


def main(argv: list[str] | None = None) -> None:
    """Train, sample, score, report."""
    pin_malloc(respect_env=True)
    extra = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    cli = InfDiffCLI(
        DiffusionModule, FieldDataModule,
        args=["fit", *(a for path in MAIN_JOB for a in ("--config", str(path))), *THROUGHPUT_ARGS, *extra],
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
    records = evaluate_digits(module, grids, out, precision=str(cli.trainer.precision))
    t_sample = time.perf_counter() - t1
    log_final_grids(cli.trainer, records)
    throughput_path = log_dir / "throughput.json"
    cost = json.loads(throughput_path.read_text()) if throughput_path.is_file() else {}
    summary = {"train_seconds": round(t_train, 1), "sample_seconds": round(t_sample, 1),
               "steps": int(cli.trainer.global_step), "precision": str(cli.trainer.precision),
               "precision_reason": cli.precision_choice.reason if cli.precision_choice else None,
               "step_time_median_s": cost.get("step_time_median_s"), "train_wall_s": cost.get("train_wall_s"),
               "validation_runs": cost.get("validation_runs"), "validation_s": cost.get("validation_s"),
               "validation_share": cost.get("validation_share"),
               "checkpoint": ckpt, "log_dir": str(log_dir), "grids": records}
    (log_dir / "quickstart_summary.json").write_text(json.dumps(summary, indent=2))
    print("\n=== lightning_infdiff quickstart ===")
    print(f"trained {cli.trainer.global_step} steps in {t_train:.0f} s ({cli.precision_choice}); "
          f"sampled in {t_sample:.0f} s")
    if cost.get("validation_share") is not None:
        print(f"validation: {cost['validation_runs']} runs, {cost['validation_s']:.0f} s, "
              f"{cost['validation_share']:.1%} of the training time")
    for rec in records:
        acc = rec.get("accuracy_vs_requested_digit")
        acc_txt = f", classifier agrees with the requested digit for {acc:.0%}" if acc is not None else ""
        print(f"  {rec['grid']:>8}: {rec['png']}{acc_txt} (mean confidence {rec['mean_confidence']:.2f})")
    print(f"checkpoint: {ckpt}")
    print(f"TensorBoard: tensorboard --logdir {log_dir.parent}")
    print(f"summary: {log_dir / 'quickstart_summary.json'}")


def log_final_grids(trainer: object, records: list[dict]) -> None:
    """Show the final sample sheets in TensorBoard too (``quickstart/<H>x<W>`` at the last step)."""
    import numpy as np
    from PIL import Image

    exp = getattr(getattr(trainer, "logger", None), "experiment", None)
    if exp is None or not hasattr(exp, "add_image"):
        return
    for rec in records:
        img = np.asarray(Image.open(rec["png"]).convert("RGB"))
        exp.add_image(f"quickstart/{rec['grid']}", img, trainer.global_step, dataformats="HWC")  # type: ignore[attr-defined]
    exp.flush()


if __name__ == "__main__":
    main()
