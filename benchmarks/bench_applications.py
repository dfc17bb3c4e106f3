"""Inpainting and super-resolution measured on a model trained on the bundled digits.

Inpainting: ``--n`` digits at the data resolution (32x32) with the left half missing
(``named_mask("left-half")``). For each method we report the mean absolute error on the known
pixels of the *raw* model output (before any final paste; the replacement method's actual
output pastes, so its known-pixel error is exactly 0), the Fréchet distance of the bundled
digit classifier's 128-d features (``SmallClassifier.embed``, through torchmetrics'
``FrechetInceptionDistance(feature=...)``) between the inpainted digits and the originals, and
the classifier's accuracy on the inpainted digits against the true label. Naive fills (mean of
the known pixels; nearest known pixel) are the baselines; a disjoint set of real digits gives
the Fréchet floor at this sample size.

Super-resolution: digits area-downsampled to 16x16 and brought back to 32x32 (``--sr_n`` images),
and the 32x32 digits upsampled to 64x64 (above the training resolution, ``--sr64_n`` images).
We report the area-downsampling consistency ``mean |D(x) - y|`` and the error against the
32x32 originals, with bicubic upsampling as the baseline.

Run (one thread; about 10 CPU-minutes, 30-40 minutes wall on the shared 2-core machine)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_applications.py \
        --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --n 500 --sr_n 100 --sr64_n 20

Extra settings (a guidance-strength sweep, RePaint resampling) on fewer images::

    ... --n 100 --sr_n 0 --sr64_n 0 --strengths 0.25 0.5 1.0 --resample 2 --out benchmarks/results/applications_sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_infdiff.applications import inpaint, named_mask, superres
from lightning_infdiff.applications.common import area_downsample, project_block_means
from lightning_infdiff.checkpoint import load_module
from lightning_infdiff.data import MNISTDigits
from lightning_infdiff.data.sources import split_indices
from lightning_infdiff.images import save_grid
from lightning_infdiff.metrics.classifier import load_classifier


class Features(nn.Module):
    """Classifier features for torchmetrics: float images in [0, 1] -> (B, 128)."""

    num_features = 128

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.eval()

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.classifier.embed(x.float() * 2.0 - 1.0).double()


def frechet(features: Features, real: Tensor, fake: Tensor) -> float:
    fid = FrechetInceptionDistance(feature=features, normalize=True)
    fid.update((real + 1) / 2, real=True)
    fid.update((fake.clamp(-1, 1) + 1) / 2, real=False)
    return float(fid.compute())


def digits(resolution: int, n: int, extra: int) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """``n`` evaluation digits (held-out split first, then training images), their labels,
    ``extra`` disjoint real digits for the Fréchet floor, and a note on where they came from."""
    src = MNISTDigits()
    train, val = split_indices(len(src), 0.0, 256, 0)  # the quickstart datamodule's split
    order = list(val) + list(train)
    rng = np.random.default_rng(0)
    pick = order[: n + extra]
    arr = [src.load(int(i), resolution, rng, False) for i in pick]
    x = torch.from_numpy(np.stack([a[0] for a in arr])).float()
    y = torch.tensor([a[1] for a in arr])
    note = [f"{min(n, len(val))} held-out (validation split) + {max(0, n - len(val))} training digits"]
    return x[:n], y[:n], x[n:], note


def nearest_fill(x: Tensor, known: Tensor) -> Tensor:
    """Copy each missing pixel from its nearest known pixel (Euclidean)."""
    out = x.clone()
    for b in range(x.shape[0]):
        miss = (known[b, 0] == 0).numpy()
        _, (iy, ix) = ndimage.distance_transform_edt(miss, return_indices=True)
        out[b] = x[b][:, iy, ix]
    return out


def run_batched(fn, n: int, batch: int) -> Tensor:
    return torch.cat([fn(i, min(n, i + batch)) for i in range(0, n, batch)])


def write_markdown(result: dict, path: Path, command: str) -> None:
    """The results table (``applications.md``) from the JSON result."""
    d = result["data"]
    lines = [
        "# Inpainting and super-resolution on the digits model",
        "",
        f"Model: `{result['checkpoint']}` (the README's main job, trained here for its 8-minute budget). "
        f"Data: {d['n_inpaint']} digits at {d['resolution']}x{d['resolution']} ({d['source']}); mask: {d['mask']}. "
        f"Sampler: {result['sampler']['sampler']}, {result['sampler']['steps']} steps, {result['sampler']['seeds']}.",
        "",
        f"Command: `{command}`",
        "",
        "## Inpainting",
        "",
        "Known-pixel error = mean |x - input| over the known pixels of the raw model output (before any final paste); "
        "the replacement method's output pastes them, so its output error is exactly 0. Fréchet distance of the "
        "bundled digit classifier's 128-d features (torchmetrics `FrechetInceptionDistance(feature=...)`) between the "
        "inpainted digits and the originals; accuracy = classifier accuracy against the true label.",
        "",
        "| method | known-pixel MAE (raw) | known-pixel MAE (output) | Fréchet (classifier) | accuracy | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["inpainting"].items():
        lines.append(
            f"| {name} | {r['known_mae_raw']:.4f} | {r['known_mae_output']:.4f} | {r['frechet']:.1f} | "
            f"{r['accuracy']:.3f} | {r['seconds']} |"
        )
    lines += [
        f"| real digits (a disjoint set of {d['n_inpaint']}) | - | - | {result['frechet_floor_real_vs_real']:.1f} | "
        f"{result['accuracy_real']:.3f} (originals) | - |",
        "",
        f"Classifier held-out accuracy: {result['classifier_heldout_accuracy']:.3f}.",
        "",
        "## Super-resolution",
        "",
        "`down_mae` = mean |D(x) - y| with D the area downsampling to the input grid; `mae_vs_original` = mean "
        "|x - original 32x32 digit|. `_paste` rows are the same samples followed by the projection onto "
        "{x in [-1, 1]^n : D x = y}. 64x64 is above the training resolution (32).",
        "",
        "| setting | n | down_mae | down_max | mae_vs_original | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["superres"].items():
        mae = f"{r['mae_vs_original']:.4f}" if "mae_vs_original" in r else "-"
        lines.append(f"| {name} | {r['n']} | {r['down_mae']:.2e} | {r['down_max']:.2e} | {mae} | {r['seconds']} |")
    lines += ["", f"Total wall time: {result['seconds_total']} s (one thread, shared 2-core machine).", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--sr_n", type=int, default=200)
    ap.add_argument("--sr64_n", type=int, default=50)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.5])
    ap.add_argument("--resample", type=int, default=1, help="RePaint resamplings for an extra run (1 = none)")
    ap.add_argument("--sr_strength", type=float, default=0.5)
    ap.add_argument("--out", default="benchmarks/results/applications")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    module = load_module(args.ckpt)
    proc, net = module.process, module.denoiser
    res = module.data_resolution or 32
    x, labels, floor_set, note = digits(res, args.n, args.n)
    known = named_mask("left-half", (res, res)).expand(args.n, 1, res, res)
    clf, clf_acc = load_classifier("digits")
    feats = Features(clf)

    def accuracy(imgs: Tensor) -> float:
        with torch.no_grad():
            return float((clf(imgs).argmax(1) == labels[: len(imgs)]).float().mean())

    rows: dict[str, dict] = {}
    shown: dict[str, Tensor] = {}

    def record(name: str, out: Tensor, raw: Tensor, seconds: float, **extra) -> None:
        m = known.expand_as(x)
        final = m * x + (1 - m) * out if name.startswith("replace") else out
        rows[name] = {
            "known_mae_raw": float(((raw - x).abs() * m).sum() / m.sum()),
            "known_mae_output": float(((final - x).abs() * m).sum() / m.sum()),
            "frechet": frechet(feats, x, final),
            "accuracy": accuracy(final),
            "seconds": round(seconds, 1),
            **extra,
        }
        shown[name] = final[:8]
        print(name, json.dumps(rows[name]), flush=True)

    mean_fill = known * x + (1 - known) * ((x * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True))
    record("naive_mean_fill", mean_fill, mean_fill, 0.0)
    nn_fill = nearest_fill(x, known)
    record("naive_nearest_fill", nn_fill, nn_fill, 0.0)

    def inpaint_run(method: str, **kw) -> tuple[Tensor, float]:
        t = time.time()
        out = run_batched(
            lambda a, b: inpaint(proc, net, x[a:b], known[a:b], list(range(a, b)), method=method,
                                 steps=args.steps, paste=False, **kw),
            args.n, args.batch,
        )
        return out, time.time() - t

    out, sec = inpaint_run("replace", sampler="ddpm")
    record("replace_ddpm", out, out, sec, steps=args.steps)
    if args.resample > 1:
        out, sec = inpaint_run("replace", sampler="ddpm", resamplings=args.resample, jump_length=5)
        record(f"replace_ddpm_resample{args.resample}_jump5", out, out, sec, steps=args.steps)
    for lam in args.strengths:
        out, sec = inpaint_run("guidance", sampler="ddpm", strength=lam)
        record(f"guidance_ddpm_lambda{lam:g}", out, out, sec, steps=args.steps)

    # ---- super-resolution
    sr: dict[str, dict] = {}
    low_res = res // 2
    x_low = area_downsample(x[: args.sr_n], (low_res, low_res))
    ref = x[: args.sr_n]

    def sr_row(name: str, out: Tensor, low: Tensor, orig: Tensor | None, seconds: float) -> None:
        d = area_downsample(out, low.shape[-2:])
        row = {"down_mae": float((d - low).abs().mean()), "down_max": float((d - low).abs().max()),
               "seconds": round(seconds, 1), "n": len(out)}
        if orig is not None:
            row["mae_vs_original"] = float((out - orig).abs().mean())
        sr[name] = row
        print(name, json.dumps(row), flush=True)

    if args.sr_n > 0:
        bicubic = F.interpolate(x_low, size=(res, res), mode="bicubic", align_corners=False).clamp(-1, 1)
        sr_row(f"{low_res}to{res}_bicubic", bicubic, x_low, ref, 0.0)
        for method, kw in (("guidance", {"strength": args.sr_strength}), ("replace", {})):
            t = time.time()
            out = run_batched(
                lambda a, b, method=method, kw=kw: superres(
                    proc, net, x_low[a:b], list(range(a, b)), size=(res, res), method=method,
                    steps=args.steps, sampler="ddpm", paste=False, **kw),
                args.sr_n, args.batch,
            )
            sr_row(f"{low_res}to{res}_{method}", out, x_low, ref, time.time() - t)
            # paste=True gives exactly this sample followed by the projection (same seeds)
            pasted = project_block_means(out, x_low)
            sr_row(f"{low_res}to{res}_{method}_paste", pasted, x_low, ref, 0.0)
            shown[f"sr_{method}"] = pasted[:8]
    if args.sr64_n > 0:
        hi = 2 * res
        x_hi_in = x[: args.sr64_n]
        for method, kw in (("guidance", {"strength": args.sr_strength}), ("replace", {})):
            t = time.time()
            out = run_batched(
                lambda a, b, method=method, kw=kw: superres(
                    proc, net, x_hi_in[a:b], list(range(a, b)), size=(hi, hi), method=method,
                    steps=args.steps, sampler="ddpm", paste=False, **kw),
                args.sr64_n, max(1, args.batch // 4),
            )
            sr_row(f"{res}to{hi}_{method}", out, x_hi_in, None, time.time() - t)
            shown[f"sr64_{method}"] = out[:8]
        bic = F.interpolate(x_hi_in, size=(hi, hi), mode="bicubic", align_corners=False).clamp(-1, 1)
        sr_row(f"{res}to{hi}_bicubic", bic, x_hi_in, None, 0.0)

    result = {
        "checkpoint": args.ckpt,
        "data": {"resolution": res, "n_inpaint": args.n, "source": note[0], "mask": "left-half (16 of 32 columns missing)"},
        "sampler": {"steps": args.steps, "sampler": "ddpm", "seeds": "sample i uses seed i"},
        "classifier_heldout_accuracy": clf_acc,
        "frechet_floor_real_vs_real": frechet(feats, x, floor_set),
        "accuracy_real": accuracy(x),
        "inpainting": rows,
        "superres": sr,
        "seconds_total": round(time.time() - t0, 1),
    }
    out_dir = Path(args.out)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, Path(f"{args.out}.md"), "python benchmarks/bench_applications.py " + " ".join(sys.argv[1:]))
    for name, imgs in shown.items():
        save_grid(imgs, out_dir / f"{name}.png", nrow=8)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
