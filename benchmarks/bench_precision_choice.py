"""The precision the hardware picks against both fixed precisions, on the default configuration.

Backs the README's statement that the default precision (``trainer.precision: null``, resolved
by :func:`lightning_infdiff.precision.resolve_precision`) trains the main job's model at least as
fast as the faster of ``32-true`` and ``bf16-mixed`` on this machine. Two measurements, each
timing the three variants (the resolved default, ``32-true``, ``bf16-mixed``) in one run:

* ``step``: the bare training step of ``configs/base.yaml`` + ``configs/quickstart.yaml`` (its
  denoiser, process, batch 32 at 32², 2x subsampling, clipping and fused AdamW;
  ``bench_precision.make_step``), the variants round-robin in this process with glibc's malloc
  thresholds pinned (``bench_common.pin_malloc``), median of ``--repeats``;
* ``fit`` (``--fit-steps N``, 0 to skip): ``infdiff fit`` of the same configuration in a fresh
  process per variant for N steps (validation off, data in the main process), alternating the
  variants ``--fit-repeats`` times; the step time is the ``Throughput`` callback's median (the
  Lightning loop included, start-up excluded), and the wall time of the whole command is shown.

Usage::

    python benchmarks/bench_precision_choice.py --out benchmarks/results/precision_choice/<cpu>.md
    python benchmarks/bench_precision_choice.py --quick --out /tmp/p.md   # seconds; tests
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_common import ROOT, interleaved, machine_info, pin_malloc, spread

from lightning_infdiff.precision import cpu_bf16_support, resolve_precision

VARIANTS = ("default", "32-true", "bf16-mixed")


def step_times(quick: bool, repeats: int, default: str) -> dict[str, dict]:
    """Median bare-step times of the three variants, timed round-robin."""
    from bench_common import default_denoiser
    from bench_precision import make_step, setting, tiny_denoiser

    s = setting(quick)
    torch.manual_seed(0)
    base = tiny_denoiser() if quick else default_denoiser()
    steps = {name: make_step(copy.deepcopy(base), s, bf16=(default if name == "default" else name) == "bf16-mixed")
             for name in VARIANTS}
    times = interleaved(steps, repeats=repeats, warmup=2 if not quick else 1)
    return {name: spread(t) for name, t in times.items()}


def fit_args(precision: str, steps: int, root: Path, quick: bool) -> list[str]:
    args = [sys.executable, "-m", "lightning_infdiff", "fit",
            "--config", str(ROOT / "configs" / "base.yaml"), "--config", str(ROOT / "configs" / "quickstart.yaml"),
            f"--trainer.max_steps={steps}", "--trainer.max_time=null", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={root}", f"--trainer.default_root_dir={root}",
            "--data.num_workers=0", "--trainer.callbacks+=lightning_infdiff.callbacks.Throughput",
            "--trainer.callbacks.skip_steps=5", "--trainer.callbacks.sample_num=0"]
    if precision != "default":
        args.append(f"--trainer.precision={precision}")
    if quick:
        args += ["--config", str(ROOT / "configs" / "data" / "blobs.yaml"), "--data.resolution=8",
                 "--model.denoiser.init_args.num_classes=0", "--model.guidance_scale=1.0",
                 "--model.denoiser.init_args.train_resolution=8", "--model.denoiser.init_args.inner_resolution=4",
                 "--model.denoiser.init_args.channels=8", "--model.denoiser.init_args.inner_channels=8",
                 "--model.denoiser.init_args.channel_mult=[1]", "--model.denoiser.init_args.attention_resolutions=[]",
                 "--model.denoiser.init_args.head_channels=8", "--model.denoiser.init_args.emb_dim=16",
                 "--data.batch_size=4", "--data.source.init_args.length=16", "--data.val_size=4"]
    return args


def fit_times(quick: bool, steps: int, repeats: int) -> dict[str, dict]:
    """``infdiff fit`` per variant in fresh processes, alternating; Throughput's median step time."""
    out: dict[str, dict[str, list[float]]] = {v: {"step": [], "wall": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench_precision_choice_") as tmp:
        for r in range(repeats):
            for v in VARIANTS:
                root = Path(tmp) / f"{v}_{r}"
                t0 = time.perf_counter()
                proc = subprocess.run(fit_args(v, steps, root, quick), capture_output=True, text=True,
                                      env={**os.environ, "HF_HUB_OFFLINE": "1"})
                wall = time.perf_counter() - t0
                if proc.returncode:
                    raise RuntimeError(f"infdiff fit ({v}) failed:\n{proc.stderr[-2000:]}")
                record = json.loads(next(root.rglob("throughput.json")).read_text())
                out[v]["step"].append(record["step_time_median_s"])
                out[v]["wall"].append(wall)
                print(f"fit {v} #{r}: {record['step_time_median_s'] * 1e3:.1f} ms/step, {wall:.1f} s", flush=True)
    return {v: {"step": spread(d["step"]), "wall": spread(d["wall"])} for v, d in out.items()}


def report(rec: dict) -> str:
    """The markdown page of one run."""
    m, choice = rec["machine"], rec["choice"]
    lines = [
        "# Precision chosen by the hardware: the default against 32-true and bf16-mixed",
        "",
        f"Command: `{rec['command']}`",
        "",
        f"- CPU: {m['cpu_model']}; flags that matter: {', '.join(m['cpu_flags']) or 'none of avx2/avx512*/amx*'}; "
        f"{m['torch_threads']} torch threads, torch {m['torch']}, {m['date_utc']} UTC, load average before "
        f"{m['loadavg'][0]:.2f}",
        f"- Native bf16: {rec['cpu_bf16']}",
        f"- **Resolved default: {choice['precision']}** ({choice['reason']})",
        f"- malloc pinned: {rec['malloc'].get('pinned')}",
        "",
        f"The default runs the same configuration as `{choice['precision']}`: the gap between those two rows is "
        "this machine's run-to-run noise, and the issue's target is the default within 1.05x of `32-true`.",
        "",
    ]
    for key, title, unit in (("step", "Bare training step (round-robin in one process)", "step"),
                             ("fit", "`infdiff fit`, Throughput callback's median step", "step")):
        res = rec.get(key)
        if not res:
            continue
        lines += [f"## {title}", "", "| variant | median ms | quartiles ms | ratio to 32-true |", "|---|---|---|---|"]
        ref = (res["32-true"][unit] if key == "fit" else res["32-true"])["median"]
        for v in VARIANTS:
            st = res[v][unit] if key == "fit" else res[v]
            name = f"default ({choice['precision']})" if v == "default" else v
            lines.append(f"| {name} | {st['median'] * 1e3:.1f} | {st['q1'] * 1e3:.1f}-{st['q3'] * 1e3:.1f} | "
                         f"{st['median'] / ref:.3f} |")
        if key == "fit":
            walls = ", ".join(f"{v} {res[v]['wall']['median']:.1f} s" for v in VARIANTS)
            lines += ["", f"Median wall time of each `infdiff fit` command ({rec['fit_steps']} steps, start-up "
                          f"included): {walls}."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="markdown report (also prints it)")
    parser.add_argument("--repeats", type=int, default=15, help="bare-step rounds")
    parser.add_argument("--fit-steps", type=int, default=60, help="steps per infdiff fit run (0: skip)")
    parser.add_argument("--fit-repeats", type=int, default=2, help="alternating rounds of the fit runs")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few rounds: a smoke run, not a figure")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.fit_steps, args.fit_repeats = 2, min(args.fit_steps, 8), 1
    malloc = pin_malloc()
    choice = resolve_precision("cpu")
    native, evidence = cpu_bf16_support()
    print(choice, flush=True)
    rec = {"command": " ".join(["python", "benchmarks/bench_precision_choice.py", *(argv or sys.argv[1:])]),
           "machine": machine_info(), "choice": {"precision": choice.precision, "reason": choice.reason},
           "cpu_bf16": f"{native} ({evidence})", "malloc": malloc, "fit_steps": args.fit_steps}
    rec["step"] = step_times(args.quick, args.repeats, choice.precision)
    if args.fit_steps > 0:
        rec["fit"] = fit_times(args.quick, args.fit_steps, args.fit_repeats)
    text = report(rec)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
