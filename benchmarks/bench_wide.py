"""Wide canvases: is a 1:2 canvas a wider view with undistorted content, or the square stretched?

Backs the README's statement that ``infdiff sample --grid 32x64`` (the ``wide`` canvas) draws
undistorted digits with background beside them. For one class-conditional digits checkpoint,
the same seeds and labels are drawn on the training square (1x), on a ``wide`` canvas twice as
wide (square pixels, the image plane extended) and on a ``stretch`` canvas (the square stretched
to 1:2, the only choice before issue 33). Per canvas:

* **reads as the digit**: the square window (the canvas's height) holding most ink is given to
  the bundled-digits classifier: the share agreeing with the requested digit and the mean
  confidence (at 1x the whole image);
* **proportions**: the ink's bounding-box width over height and its ink area over height (a
  stroke-width proxy), medians, in pixels of the canvas (a stretched digit doubles both);
* **background**: outside that window, the mean distance of the pixels from the background
  value (-1) and the share of them with ink (``> -0.5``): a wider view should hold background,
  as the 1x image's border columns do.

Usage::

    python benchmarks/bench_wide.py --ckpt runs/quickstart/version_0/checkpoints/last.ckpt \\
        --out benchmarks/results/wide/wide.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from harness import machine

from lightning_infdiff.checkpoint import load_module
from lightning_infdiff.images import save_grid
from lightning_infdiff.malloc import pin_malloc
from lightning_infdiff.metrics.classifier import (
    classify,
    ink_window_starts,
    ink_windows,
    load_classifier,
)


def spread(profile: torch.Tensor, lo: float = 0.05, hi: float = 0.95) -> float:
    """Pixels between the ``lo`` and ``hi`` quantiles of an ink-mass profile (robust to specks)."""
    cdf = profile.cumsum(0) / profile.sum()
    return float((cdf < hi).sum() - (cdf < lo).sum() + 1)


def measures(x: torch.Tensor, labels: torch.Tensor, classifier: torch.nn.Module) -> dict[str, float]:
    h, w = x.shape[-2:]
    left = ink_window_starts(x)
    pred, conf = classify(classifier, ink_windows(x))
    ratios, areas, bg_dist, bg_ink = [], [], [], []
    for img, i in zip(x, left, strict=True):
        mass = (img[0] + 1).clamp_min(0)  # ink mass per pixel (background -1 -> 0)
        if float(mass.sum()) > 0:
            height, width = spread(mass.sum(1)), spread(mass.sum(0))
            ratios.append(width / height)
            areas.append(float((img[0] > 0).sum()) / height)
        side = torch.cat([img[0, :, : int(i)], img[0, :, int(i) + h :]], dim=1) if w > h else img[0][:, [0, 1, -2, -1]]
        bg_dist.append(float((side + 1).abs().mean()))
        bg_ink.append(float((side > -0.5).float().mean()))
    return {
        "accuracy": float((pred == labels).float().mean()), "confidence": float(conf.mean()),
        "width_over_height": statistics.median(ratios) if ratios else float("nan"),
        "ink_per_row": statistics.median(areas) if areas else float("nan"),
        "background_distance": statistics.fmean(bg_dist), "background_ink": statistics.fmean(bg_ink),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", type=Path, required=True, help="markdown report (sample sheets beside it)")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=25)
    args = parser.parse_args(argv)
    pin_malloc()
    module = load_module(args.ckpt)
    if not module.denoiser.num_classes:
        raise SystemExit(f"{args.ckpt}: the model is unconditional; this benchmark asks for digits")
    r = int(module.data_resolution or 32)
    classifier, held_out = load_classifier("digits")
    labels = torch.arange(args.num) % module.denoiser.num_classes
    rows, sheets = [], {}
    for name, grid, canvas in (("1x square", (r, r), "wide"), ("wide 1:2", (r, 2 * r), "wide"),
                               ("stretch 1:2", (r, 2 * r), "stretch")):
        xs = []
        for start in range(0, args.num, args.batch):
            seeds = list(range(start, min(args.num, start + args.batch)))
            xs.append(module.generate(grid, seeds, steps=args.steps, labels=labels[seeds], canvas=canvas))
        x = torch.cat(xs)
        sheets[name] = x[:20]
        m = measures(x, labels, classifier)
        rows.append(f"| {name} | {grid[0]}x{grid[1]} | {m['accuracy']:.0%} | {m['confidence']:.3f} | "
                    f"{m['width_over_height']:.2f} | {m['ink_per_row']:.2f} | {m['background_distance']:.3f} | "
                    f"{m['background_ink']:.1%} |")
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pictures = []
    for name, x in sheets.items():
        png = args.out.with_name(f"{args.out.stem}_{name.split()[0]}.png")
        save_grid(x, png, nrow=10)
        pictures.append(f"![{name}]({png.name})")
    lines = [
        "# Wide canvases: a wider view, not a stretched square", "",
        f"Command: `python benchmarks/bench_wide.py {' '.join(argv or sys.argv[1:])}`", "",
        f"- Checkpoint `{args.ckpt}`, trained at {r}x{r}; {args.num} samples per canvas (seeds 0-{args.num - 1}, "
        f"labels cycling 0-9), DPM-Solver++ {args.steps} steps, guidance {module.sampling.guidance_scale}; the same seeds "
        f"on every canvas. Classifier held-out accuracy {held_out:.1%}.",
        f"- Machine: {machine()}.", "",
        "| canvas | grid | classifier agrees (ink window) | mean confidence | ink width / height | ink per row (px) "
        "| background: mean distance from -1 | background: ink share |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "The ink window is the square of the canvas's height holding the most ink (the whole image at 1x). "
        "Width over height (between the 5% and 95% quantiles of the ink mass along each axis) and ink per row "
        "(pixels above 0 over that height) are medians in canvas pixels: a stretched digit doubles both. "
        "Background is measured outside the ink window (at 1x: the two outer columns on each side).", "",
        "Sample sheets (first 20 samples; 1x, wide, stretch):", "", *pictures, "",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
