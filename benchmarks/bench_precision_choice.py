"""The precision the hardware picks against both fixed precisions, on the main job's configuration.

Backs the README's statement that the default precision (``trainer.precision: null``, resolved by
``lightning_infdiff.precision.resolve_precision``) trains the main job's model at least as fast as
the faster of ``32-true`` and ``bf16-mixed`` on this machine. Two measurements of the three
variants (the resolved default, ``32-true``, ``bf16-mixed``):

* the bare training step of the main job (its denoiser, process, batch 32 at 32², 2x
  subsampling, clipping and optimiser), the variants round-robin in one process, median of
  ``--repeats``;
* ``--fit-steps N`` (0 to skip): ``infdiff fit`` of the same configuration in a fresh process per
  variant for N steps (validation off), alternating ``--fit-repeats`` times; the step time is the
  ``Throughput`` callback's median (the Lightning loop included, start-up excluded).

    python benchmarks/bench_precision_choice.py --out benchmarks/results/precision_choice/<cpu>.md
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
import torch

from lightning_infdiff.quickstart import MAIN_JOB

VARIANTS = ("default", "32-true", "bf16-mixed")
QUICK_FIT = ["--config", "configs/data/blobs.yaml", "--data.resolution=8", "--model.denoiser.init_args.num_classes=0",
             "--model.sampling.guidance_scale=1.0", "--model.denoiser.init_args.train_resolution=8",
             "--model.denoiser.init_args.inner_resolution=4", "--model.denoiser.init_args.channels=8",
             "--model.denoiser.init_args.inner_channels=8", "--model.denoiser.init_args.channel_mult=[1]",
             "--model.denoiser.init_args.attention_resolutions=[]", "--model.denoiser.init_args.head_channels=8",
             "--model.denoiser.init_args.emb_dim=16", "--data.batch_size=4", "--data.source.init_args.length=16",
             "--data.val_size=4"]


def step_medians(quick: bool, repeats: int, default: str) -> dict[str, float]:
    torch.manual_seed(0)
    base = harness.main_denoiser(quick)
    res, batch = (16, 2) if quick else (32, 32)
    steps = {v: harness.train_step(copy.deepcopy(base), res, batch, 2, bf16=(default if v == "default" else v)
                                   == "bf16-mixed") for v in VARIANTS}
    return harness.timed(steps, repeats, warmup=1 if quick else 2)


def fit_medians(quick: bool, steps: int, repeats: int) -> dict[str, float]:
    """Median ``Throughput`` step seconds of ``infdiff fit`` per variant, fresh processes, alternating."""
    out: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench_precision_choice_") as tmp:
        for r in range(repeats):
            for v in VARIANTS:
                root = Path(tmp) / f"{v}_{r}"
                configs = [a for path in MAIN_JOB for a in ("--config", str(path))]
                cmd = [sys.executable, "-m", "lightning_infdiff", "fit", *configs, f"--trainer.max_steps={steps}",
                       "--trainer.max_time=null", "--trainer.limit_val_batches=0",
                       "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={root}",
                       f"--trainer.default_root_dir={root}", "--data.num_workers=0",
                       "--trainer.callbacks+=lightning_infdiff.callbacks.Throughput",
                       "--trainer.callbacks.skip_steps=5", "--trainer.callbacks.sample_num=0",
                       *([] if v == "default" else [f"--trainer.precision={v}"]), *(QUICK_FIT if quick else [])]
                subprocess.run(cmd, cwd=harness.ROOT, capture_output=True, check=True)
                out[v].append(json.loads(next(root.rglob("throughput.json")).read_text())["step_time_median_s"])
    return {v: statistics.median(t) for v, t in out.items()}


def section(title: str, medians: dict[str, float], default: str) -> str:
    """A table of the variants' median step times and their ratio to ``32-true``."""
    ratio = harness.ratios(medians, "32-true")
    rows = [(f"default ({default})" if v == "default" else v, f"{1e3 * medians[v]:.1f}", f"{ratio[v]:.3f}")
            for v in VARIANTS]
    return f"## {title}\n\n" + harness.table(["variant", "median ms", "ratio to 32-true"], rows) + "\n"


def run(quick: bool, repeats: int = 15, fit_steps: int = 0, fit_repeats: int = 2) -> str:
    from lightning_infdiff.precision import cpu_bf16_support, resolve_precision

    choice = resolve_precision("cpu")
    native, evidence = cpu_bf16_support()
    text = (f"- Native bf16: {native} ({evidence})\n- **Resolved default: {choice.precision}** ({choice.reason})\n\n"
            f"The default runs the same configuration as `{choice.precision}`: the gap between those two rows is "
            "this machine's run-to-run noise.\n\n")
    text += section("Bare training step (round-robin in one process)",
                    step_medians(quick, 2 if quick else repeats, choice.precision), choice.precision)
    if fit_steps:
        text += "\n" + section(f"`infdiff fit` ({fit_steps} steps), Throughput callback's median step",
                               fit_medians(quick, fit_steps, fit_repeats), choice.precision)
    return text


if __name__ == "__main__":
    ap = harness.parser(__doc__)
    ap.add_argument("--repeats", type=int, default=15, help="bare-step rounds")
    ap.add_argument("--fit-steps", type=int, default=60, help="steps per infdiff fit run (0: skip)")
    ap.add_argument("--fit-repeats", type=int, default=2, help="alternating rounds of the fit runs")
    args = ap.parse_args()
    harness.setup(args)
    body = run(args.quick, args.repeats, min(args.fit_steps, 8) if args.quick else args.fit_steps,
               1 if args.quick else args.fit_repeats)
    harness.report("Precision chosen by the hardware: the default against 32-true and bf16-mixed", body, args.out)
