"""Cost of every denoiser's "small" config: parameters, train step (fp32/bf16), sampling step.

For each denoiser (FNO, UNO, U-ViT, coordinate-MLP baseline and improved, SIID, ADM U-Net and
∞-Diff's sparse neural operator), at 32², 64² and 128² on full grids, 1-channel, 10 classes:

* train step: forward + backward + Adam step of ``GaussianProcess(v).loss``, batch ``B``,
  fp32 and under ``torch.autocast("cpu", torch.bfloat16)``; median over repeats after warm-up;
* sampling: ``lightning_infdiff.samplers.sample`` (DDIM) with a few steps, reported as seconds
  per image per denoiser call (``steps + 1`` calls), fp32, eval mode;
* the exponent ``p`` of ``time ∝ pixels^p`` fitted by least squares in log-log space.

Run (about 15-25 minutes on 2 cores; ``--quick`` takes a couple of minutes)::

    .venv/bin/python benchmarks/bench_denoisers.py [--quick] [--only fno,uvit]

Writes ``benchmarks/results/denoisers[_quick].json`` and ``.md``.

``--subsampled RATE`` instead times the training step on the full grid and with ``1/RATE`` of the
pixels (fixed random subsets per example, as the DataModule's 4x subsampling gives), in one
run per denoiser so the two are measured back to back, at 32² and 64², and reports the ratio.
Point models only compute at the sampled points; grid models scatter the points onto the full
canvas and run the whole grid network, so they save nothing (the ratio shows it). Writes
``benchmarks/results/denoisers_subsampled.json`` and ``.md``. The ``SMALL_CONFIGS`` below are
the proposed ``configs/`` entries (``class_path`` + ``init_args``) for 1-channel 32² digits.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lightning_infdiff.denoisers.base import GridDenoiser
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.samplers import sample
from lightning_infdiff.schedules import ShiftedSchedule

SMALL_CONFIGS: dict[str, dict] = {
    "fno": {"class_path": "lightning_infdiff.denoisers.fno.FNODenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "width": 32, "modes": 10, "depth": 4, "levels": 1, "emb_dim": 128}},
    "uno": {"class_path": "lightning_infdiff.denoisers.fno.FNODenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "width": 20, "modes": 12, "depth": 1, "levels": 3,
        "channel_mult": [1, 2, 3], "emb_dim": 128}},
    "uvit": {"class_path": "lightning_infdiff.denoisers.uvit.UViTDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "transformer_resolution": 16, "channels": 64,
        "channel_mult": [1], "transformer_mult": 2, "num_res_blocks": 2, "num_transformer_blocks": 4,
        "heads": 4, "transformer_dropout": 0.1, "emb_dim": 128}},
    "coord_mlp_baseline": {"class_path": "lightning_infdiff.denoisers.coord_mlp.CoordMLPBaseline", "init_args": {
        "in_channels": 1, "num_classes": 10, "hidden": 960, "depth": 3}},
    "coord_mlp": {"class_path": "lightning_infdiff.denoisers.coord_mlp.CoordMLPDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "hidden": 272, "depth": 5, "emb_dim": 128}},
    "siid": {"class_path": "lightning_infdiff.denoisers.siid.SIIDDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "channels": 128, "depth": 7, "heads": 4, "emb_dim": 128}},
    "unet": {"class_path": "lightning_infdiff.denoisers.unet_denoiser.ADMUNetDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "channels": 32, "channel_mult": [1, 2, 2],
        "attention_resolutions": [16, 8], "head_channels": 32, "emb_dim": 128}},
    "uvit_rope": {"class_path": "lightning_infdiff.denoisers.uvit.UViTDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "transformer_resolution": 16, "channels": 64,
        "channel_mult": [1], "transformer_mult": 2, "num_res_blocks": 2, "num_transformer_blocks": 4,
        "heads": 4, "transformer_dropout": 0.1, "emb_dim": 128, "position": "rope"}},
    "uvit_dwt": {"class_path": "lightning_infdiff.denoisers.uvit.UViTDenoiser", "init_args": {
        "in_channels": 1, "num_classes": 10, "resolution": 32, "transformer_resolution": 16, "dwt_levels": 1,
        "channels": 64, "channel_mult": [], "transformer_mult": 2, "num_transformer_blocks": 6,
        "heads": 4, "transformer_dropout": 0.1, "emb_dim": 128}},
    "sparse_operator": {"class_path": "lightning_infdiff.denoisers.sparse_operator.SparseNeuralOperator", "init_args": {
        "in_channels": 1, "num_classes": 10, "train_resolution": 32, "channels": 32, "inner_resolution": 16,
        "inner_channels": 32, "channel_mult": [1, 2, 2], "emb_dim": 128}},
}


def build(name: str) -> torch.nn.Module:
    """Instantiate a small config (the way LightningCLI resolves ``class_path``/``init_args``)."""
    return config_class(name)(**SMALL_CONFIGS[name]["init_args"])


def config_class(name: str) -> type:
    """The denoiser class of a small config, without building it."""
    module, cls = SMALL_CONFIGS[name]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


#: The neural-operator configs (the issue's exponent target): benchmarks run them first, so a
#: section's time budget cannot run out before them.
OPERATOR_MODELS = ("sparse_operator", "fno", "uno")


def operators_first() -> list[str]:
    """``SMALL_CONFIGS`` names, the operator models first, then the rest in their own order."""
    first = [n for n in OPERATOR_MODELS if n in SMALL_CONFIGS]
    return first + [n for n in SMALL_CONFIGS if n not in first]


def n_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _median_time(fn, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` after ``warmup`` calls (oneDNN builds kernels per shape).

    Calls slower than 5 s are repeated only once (the coordinate MLPs at 128²)."""
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        if time.perf_counter() - t > 5.0:
            repeats = 1
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_step_time(model: torch.nn.Module, res: int, batch: int, bf16: bool, repeats: int, warmup: int,
                    rate: int = 1) -> float:
    """Median seconds of one optimisation step on a ``res x res`` grid with ``1/rate`` of its pixels."""
    process = GaussianProcess(parametrisation="v")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x0 = torch.rand(batch, 1, res, res) * 2 - 1
    cond = torch.arange(batch) % 10
    gen = torch.Generator().manual_seed(res)
    indices = None if rate == 1 else torch.stack(
        [torch.randperm(res * res, generator=gen)[: res * res // rate] for _ in range(batch)])
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = process.loss(model, x0, indices, cond=cond).mean()
        loss.backward()
        opt.step()

    return _median_time(step, repeats, warmup)


def sample_step_time(model: torch.nn.Module, res: int, images: int, steps: int, repeats: int) -> float:
    """Median seconds per image per denoiser call of a DDIM sampling run."""
    model.eval()
    process = GaussianProcess(parametrisation="v")

    def run() -> None:
        sample(process, model, (res, res), list(range(images)), channels=1, steps=steps,
               cond=torch.arange(images) % 10)

    return _median_time(run, repeats, 1) / (steps + 1) / images


def fit_exponent(pixels: list[int], times: list[float]) -> float:
    """Least-squares slope of ``log time`` against ``log pixels``."""
    if len(pixels) < 2:
        return float("nan")
    lx, ly = [math.log(p) for p in pixels], [math.log(t) for t in times]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32² and 64² only, batch 2, fewer repeats")
    parser.add_argument("--only", default="", help="comma-separated subset of denoisers")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="instead of timing: train each config this many steps on digits, sample at 1x/2x")
    parser.add_argument("--sample-dir", default="/tmp/denoiser_samples", help="where --train-steps writes PNG grids")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; use 1 on a shared, loaded machine (2 threads then stall on each other)")
    parser.add_argument("--subsampled", type=int, default=0, metavar="RATE",
                        help="instead: time full-grid vs 1/RATE-subsampled training steps at 32² and 64²")
    parser.add_argument("--batch", type=int, default=4, help="batch of the --subsampled timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = [n for n in SMALL_CONFIGS if not args.only or n in args.only.split(",")]
    if args.subsampled:
        subsampled_costs(names, args.subsampled, args.threads, args.batch)
        return
    if args.train_steps:
        train_and_sample(names, args.train_steps, Path(args.sample_dir))
        return
    resolutions = [32, 64] if args.quick else [32, 64, 128]
    batch, repeats, warmup, steps = (2, 3, 2, 2) if args.quick else (4, 5, 2, 3)
    results = {"config": {"resolutions": resolutions, "batch": batch, "repeats": repeats, "sample_steps": steps,
                          "threads": args.threads, "torch": torch.__version__, "machine": platform.processor(),
                          "loadavg_start": os.getloadavg()}, "denoisers": {}}
    out = Path(__file__).parent / "results" / ("denoisers_quick" if args.quick else "denoisers")
    out.parent.mkdir(exist_ok=True)
    if args.only and out.with_suffix(".json").exists():  # --only updates rows of an earlier run
        results["denoisers"] = json.loads(out.with_suffix(".json").read_text())["denoisers"]
    for name in names:
        model = build(name)
        row = {"class_path": SMALL_CONFIGS[name]["class_path"], "params": n_params(model), "by_res": {}}
        for res in resolutions:
            r = {
                "train_fp32_s": train_step_time(model, res, batch, False, repeats, warmup),
                "train_bf16_s": train_step_time(model, res, batch, True, repeats, warmup),
                "sample_step_per_image_s": sample_step_time(model, res, min(batch, 2), steps, repeats),
            }
            row["by_res"][res] = r
            print(f"{name:20s} {res:4d}² " + " ".join(f"{k}={v:.4f}" for k, v in r.items()), flush=True)
        px = [res * res for res in resolutions]
        row["exponent"] = {k: fit_exponent(px, [row["by_res"][res][k] for res in resolutions])
                           for k in ("train_fp32_s", "train_bf16_s", "sample_step_per_image_s")}
        results["denoisers"][name] = row
        results["config"]["loadavg_end"] = os.getloadavg()
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))  # after every denoiser
        out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))


def train_and_sample(names: list[str], steps: int, sample_dir: Path, batch: int = 8, lr: float = 5e-4) -> None:
    """Same short run for every config: MNIST 32², v-prediction, shifted cosine (reference 32),
    bf16, Adam with clipping, 10% null labels (for CFG); then held-out loss on fixed noise and
    DDIM samples (20 steps, conditional, classes 0-7) at 32² and 64². Results: ``results/denoisers_train.json``."""
    import numpy as np
    from PIL import Image

    from lightning_infdiff.data import MNISTDigits

    src = MNISTDigits()
    data = [src.load(i, 32, np.random.default_rng(i), True) for i in range(1280)]
    x_all = torch.from_numpy(np.stack([im for im, _ in data]))
    y_all = torch.tensor([lab for _, lab in data])
    x_val, y_val, x_tr, y_tr = x_all[:256], y_all[:256], x_all[256:], y_all[256:]
    process = GaussianProcess(schedule=ShiftedSchedule(reference=32), parametrisation="v")
    sample_dir.mkdir(parents=True, exist_ok=True)
    out = Path(__file__).parent / "results" / "denoisers_train"
    rows = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    for name in names:
        torch.manual_seed(0)
        model = build(name)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        model.train()
        for _ in range(steps):
            i = torch.randint(len(x_tr), (batch,), generator=gen)
            cond = torch.where(torch.rand(batch, generator=gen) < 0.1, 10, y_tr[i])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = process.loss(model, x_tr[i], None, cond=cond).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        train_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            val = statistics.fmean(
                process.loss(model, x_val[k:k + 64], None, cond=y_val[k:k + 64],
                             generator=torch.Generator().manual_seed(k)).mean().item() for k in range(0, 256, 64))
        row = {"params": n_params(model), "steps": steps, "batch": batch, "train_s": train_s, "val_loss": val}
        for res in (32, 64):
            imgs = sample(process, model, (res, res), list(range(8)), channels=1, steps=20, cond=torch.arange(8))
            row[f"sample_{res}_std_across_images"] = imgs.std(0).mean().item()
            row[f"sample_{res}_ink_fraction"] = (imgs > 0).float().mean().item()
            grid = ((imgs.clamp(-1, 1) + 1) * 127.5).round().byte()[:, 0]
            Image.fromarray(torch.cat(list(grid), dim=1).numpy()).save(sample_dir / f"{name}_{res}.png")
        rows[name] = row
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2))


def subsampled_costs(names: list[str], rate: int, threads: int, batch: int, repeats: int = 5, warmup: int = 2) -> None:
    """Full-grid and ``1/rate``-subsampled train-step times (bf16 autocast, as the CLI trains)."""
    grid_models = {n for n in names if isinstance(build(n), GridDenoiser)}
    results = {"config": {"rate": rate, "batch": batch, "repeats": repeats, "warmup": warmup, "threads": threads,
                          "precision": "bf16 autocast", "torch": torch.__version__,
                          "loadavg_start": os.getloadavg()}, "denoisers": {}}
    out = Path(__file__).parent / "results" / "denoisers_subsampled"
    for name in names:
        row = {"kind": "grid" if name in grid_models else "point", "by_res": {}}
        for res in (32, 64):
            torch.manual_seed(0)
            model = build(name)
            full = train_step_time(model, res, batch, True, repeats, warmup, 1)
            sub = train_step_time(model, res, batch, True, repeats, warmup, rate)
            row["by_res"][res] = {"full_s": full, "subsampled_s": sub, "speedup": full / sub}
            print(f"{name:20s} {res:3d}² full {1e3 * full:8.1f} ms  1/{rate} {1e3 * sub:8.1f} ms  "
                  f"x{full / sub:.2f}", flush=True)
        results["denoisers"][name] = row
        results["config"]["loadavg_end"] = os.getloadavg()
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))
        out.with_suffix(".md").write_text(subsampled_markdown(results))
    print(subsampled_markdown(results))


def subsampled_markdown(results: dict) -> str:
    """Table of full vs subsampled train-step times and the speed-up per denoiser."""
    cfg = results["config"]
    r = cfg["rate"]
    lines = [
        f"Training step (forward + backward + Adam, {cfg['precision']}), batch {cfg['batch']}, full grid vs "
        f"1/{r} of the pixels (fixed random subsets), median of {cfg['repeats']} after {cfg['warmup']} warm-up "
        f"steps, both measured back to back in one run; torch {cfg['torch']}, {cfg['threads']} thread(s); "
        f"load average {cfg['loadavg_start'][0]:.1f} -> {cfg.get('loadavg_end', cfg['loadavg_start'])[0]:.1f} "
        "(a shared 2-core machine running other jobs, including this project's training benchmark: absolute "
        "times are noisy, ratios less so).",
        "",
        "Grid models (FNO/UNO, U-ViT, ADM U-Net) scatter the points onto the full canvas with a mask channel "
        "and run the whole grid network, so subsampling saves them nothing: a ratio near 1 (below 1 from the "
        "scatter/gather overhead or noise); it only reduces the loss's pixel count. Point models take the "
        "points directly, but only those that compute at the points save: the coordinate MLPs run on the N "
        "points alone (speed-up near the rate); SIID places the points on the full canvas for its axial "
        "attention and point-wise layers (by design, see siid.py), and the sparse operator's depthwise conv is "
        "a masked dense conv with its inner U-Net on a fixed grid, so at 32²-64² they save little. Ratios "
        "within about ±15% of 1 are within this run's noise.",
        "",
        f"| denoiser | kind | 32² full (ms) | 32² 1/{r} (ms) | 32² speed-up | 64² full (ms) | 64² 1/{r} (ms) | 64² speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["denoisers"].items():
        cells = [name, row["kind"]]
        for res in ("32", "64"):
            v = row["by_res"].get(res) or row["by_res"].get(int(res))
            cells += [f"{1e3 * v['full_s']:.0f}", f"{1e3 * v['subsampled_s']:.0f}", f"{v['speedup']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(results: dict) -> str:
    """Table: params, then per resolution train fp32 / bf16 and sample step (ms), then exponents."""
    cfg = results["config"]
    res = cfg["resolutions"]
    head = ["denoiser", "params (M)"] + [f"{r}² train fp32/bf16 (ms)" for r in res] + \
        [f"{r}² sample ms/img/step" for r in res] + ["exp train fp32", "exp train bf16", "exp sample"]
    lines = [
        f"Small configs, 1 channel, 10 classes; train batch {cfg['batch']} (full grid, Adam step), sampling DDIM "
        f"{cfg['sample_steps']} steps; medians of {cfg['repeats']}; torch {cfg['torch']}, {cfg['threads']} threads; "
        f"load average {cfg['loadavg_start'][0]:.1f} -> {cfg['loadavg_end'][0]:.1f} (shared machine: noisy).",
        "Exponent p: time ∝ pixels^p fitted over the resolutions.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, row in results["denoisers"].items():
        cells = [name, f"{row['params'] / 1e6:.2f}"]
        cells += [f"{1e3 * row['by_res'][r]['train_fp32_s']:.0f} / {1e3 * row['by_res'][r]['train_bf16_s']:.0f}"
                  for r in res]
        cells += [f"{1e3 * row['by_res'][r]['sample_step_per_image_s']:.1f}" for r in res]
        cells += [f"{row['exponent'][k]:.2f}" for k in ("train_fp32_s", "train_bf16_s", "sample_step_per_image_s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
