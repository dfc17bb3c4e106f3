"""Where the speckles above the training resolution come from, and what the display filter does.

Backs the README's statement that the main job's samples are as smooth as real digits at 1x, 2x
and 4x the training resolution (``infdiff evaluate`` reports the same measure). For one
checkpoint, every sampler in ``--samplers`` draws the same seeds (labels cycling over the
classes, the module's guidance scale) at each grid *without* the display filter, so each stage
is measured on the same clean estimates ``T x0``:

* ``T x0``: the sampler's output before any deblurring;
* ``Wiener``: ∞-Diff's filter ``m / (m^2 + eps^2)`` at every mode (the display before issue 33);
* ``band-limited``: the toolkit's display, the Wiener filter tapered to zero between half the
  training band and the training band (``HeatKernelOperator.band_taper``).

For each: the artifact ratio (share of variance above half a data pixel, over the same share of
real images resampled bicubically to the grid; :mod:`lightning_infdiff.metrics.artifacts`) and
the offline Fréchet distance (bundled-digits classifier features). A spectrum table splits
``T x0``'s power by frequency band (in units of the training grid's Nyquist frequency) against the
blurred real images ``T x``, which is where the excess lives.

Usage::

    python benchmarks/bench_artifacts.py --ckpt runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out benchmarks/results/artifacts.md
    python benchmarks/bench_artifacts.py --ckpt ... --num 8 --breakdown-num 4 --scales 1,2 --out /tmp/a.md  # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from harness import machine

from lightning_infdiff.checkpoint import load_module
from lightning_infdiff.evaluate import load_datamodule
from lightning_infdiff.malloc import pin_malloc
from lightning_infdiff.metrics.artifacts import ArtifactMeter, highfreq_share, real_reference
from lightning_infdiff.metrics.features import ClassifierFeatures, quantise
from lightning_infdiff.metrics.frechet import FrechetDistance
from lightning_infdiff.metrics.reference import reference_stats, split_of
from lightning_infdiff.operators import HeatKernelOperator, dct_matrix

#: frequency bands of the spectrum table, in units of the training grid's Nyquist frequency
BANDS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 6.0)


def clean_estimates(module, grid: tuple[int, int], n: int, sampler: str, steps: int, batch: int) -> torch.Tensor:
    """``T x0`` for seeds ``0..n-1`` (no display filter)."""
    classes = module.denoiser.num_classes
    out = []
    for start in range(0, n, batch):
        seeds = list(range(start, min(n, start + batch)))
        labels = torch.tensor(seeds) % classes if classes else None
        out.append(module.generate(grid, seeds, sampler=sampler, steps=steps, labels=labels, deblur=False))
    return torch.cat(out)


def band_power(x: torch.Tensor, train: int) -> list[float]:
    """Mean DCT power of ``x`` per :data:`BANDS` band (radial, in training-Nyquist units)."""
    h, w = x.shape[-2:]
    coef = dct_matrix(h) @ x.double() @ dct_matrix(w).T
    power = coef.pow(2).mean(dim=(0, 1))
    ky = torch.arange(h, dtype=torch.float64)[:, None] / train
    kx = torch.arange(w, dtype=torch.float64)[None, :] / train
    f = torch.sqrt(ky**2 + kx**2)
    return [float(power[(f >= a) & (f < b)].sum()) for a, b in zip(BANDS[:-1], BANDS[1:], strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint of a mollified model (the main job's)")
    parser.add_argument("--out", type=Path, required=True, help="markdown report")
    parser.add_argument("--scales", default="1,2,4", help="grids as multiples of the training resolution")
    parser.add_argument("--num", type=int, default=200, help="samples per grid for the main sampler")
    parser.add_argument("--samplers", default="dpmpp_2m,ddim,ddpm", help="the first is the main one")
    parser.add_argument("--breakdown-num", type=int, default=50, help="samples per grid for the other samplers")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=25)
    args = parser.parse_args(argv)
    pin_malloc()
    module = load_module(args.ckpt)
    dm = load_datamodule(args.ckpt, None)
    op = module.process.operator
    if not isinstance(op, HeatKernelOperator):
        raise SystemExit(f"{args.ckpt}: the process has no mollifier ({op!r}): nothing to deblur")
    train = int(module.data_resolution or dm.resolution)
    plain = HeatKernelOperator(op.width, op.inverse_snr, op.normalise_noise, op.reference, band_taper=None)
    extractor = ClassifierFeatures("digits")
    samplers = args.samplers.split(",")
    grids = [(train * int(s), train * int(s)) for s in args.scales.split(",")]
    lines = [
        "# Artifacts above the training resolution: where they come from, what the display does",
        "",
        f"Command: `python benchmarks/bench_artifacts.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"- Checkpoint: `{args.ckpt}`; process `{op!r}`; training grid {train}x{train}; "
        f"{args.steps} solver steps, guidance {module.sampling.guidance_scale}, labels cycling over the classes.",
        f"- Machine: {machine()}.",
        "- Artifact ratio: share of the variance above s = min(H, W)/56 pixels (half an MNIST pixel), "
        "over the same share of real digits resampled bicubically from the training grid; 1 = as smooth "
        "as real digits. FD: offline Fréchet distance (digits-classifier features, images resized to 28x28).",
        "",
    ]
    tables: dict[str, list[str]] = {}
    spectrum: list[str] = []
    for si, sampler in enumerate(samplers):
        n = args.num if si == 0 else args.breakdown_num
        rows = tables.setdefault(sampler, [])
        for grid in grids:
            t0 = time.perf_counter()
            y0 = clean_estimates(module, grid, n, sampler, args.steps, args.batch)
            seconds = time.perf_counter() - t0
            real = real_reference(dm.source, split_of(dm, "train")[:max(n, 100)], train, grid)
            sigma = ArtifactMeter(grid).sigma
            real_share = float(highfreq_share(real, sigma).mean())
            ref = reference_stats(dm, extractor, grid, "train", None, 64, progress=False)
            stages = {"T x0": y0, "Wiener": plain.wiener(y0).clamp(-1, 1),
                      "band-limited": op.wiener(y0, band=train).clamp(-1, 1)}
            for name, x in stages.items():
                fd = FrechetDistance(extractor, reference=ref)
                fd.update(quantise(x), real=False)
                share = float(highfreq_share(x, sigma).mean())
                rows.append(f"| {grid[0]}x{grid[1]} | {name} | {share / real_share:.2f} | {float(fd.compute()):.1f} |")
            print(f"{sampler} {grid}: {n} samples in {seconds:.0f} s; " + rows[-1], flush=True)
            if si == 0:
                got, want = band_power(y0, train), band_power(op.apply(real), train)
                cells = [f"{a / b:.2f}" if b > 0 and a / b < 1e4 else ("-" if b == 0 else f"{a / b:.0e}")
                         for a, b in zip(got, want, strict=True)]
                spectrum.append(f"| {grid[0]}x{grid[1]} | " + " | ".join(cells) + " |")
    for si, sampler in enumerate(samplers):
        n = args.num if si == 0 else args.breakdown_num
        lines += [f"## {sampler}, {n} samples per grid", "", "| grid | stage | artifact ratio | offline FD |",
                  "|---|---|---|---|", *tables[sampler], ""]
    head = " | ".join(f"{a:g}-{b:g}" for a, b in zip(BANDS[:-1], BANDS[1:], strict=True))
    lines += [f"## Power of `T x0` over that of blurred real digits `T x`, by band ({samplers[0]})", "",
              "Bands in units of the training grid's Nyquist frequency (radial; up to 1.41 on the training grid "
              "itself). '-': no real power there at all.", "", f"| grid | {head} |",
              "|---|" + "---|" * (len(BANDS) - 1), *spectrum, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
