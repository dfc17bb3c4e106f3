"""Evaluate a trained ∞-Diff diffusion autoencoder (configs/experiments/infty_diff_digits.yaml).

Steps, on one checkpoint:

1. encode the bundled training digits at 32² (full grid) and refit the latent prior on those
   latents (``fit_latent_prior``; the paper's order: autoencoder first, then the latent model);
2. reconstruction: encode held-out digits, decode at 32² with the encoder's latents; report the
   mean absolute error and whether the digit classifier reads the same digit in the input and
   the reconstruction; decode the same latents at 64² and 128² and report the error of the
   area-downsampled output against the 32² input (resolution consistency);
3. unconditional samples (latents from the refitted prior) at 32², 64², 128², saved as PNG
   grids; the digit classifier's mean confidence and the class histogram of the samples.

Usage::

    python benchmarks/bench_autoencoder.py --ckpt runs/infty_diff_digits/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_infdiff.checkpoint import load_module
from lightning_infdiff.data import FieldDataModule, MNISTDigits
from lightning_infdiff.denoisers.latent_prior import fit_latent_prior
from lightning_infdiff.images import save_grid
from lightning_infdiff.metrics.classifier import classify, load_classifier

RESULTS = Path(__file__).resolve().parent / "results" / "autoencoder"


def digit_splits(n_train: int, n_test: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images and held-out (validation split) images of the bundled digits at ``res``²,
    taken from the same DataModule split the diffusion model was trained with."""
    dm = FieldDataModule(source=MNISTDigits(), resolution=res, batch_size=250, val_size=256, num_workers=0)
    dm.setup("fit")
    train = []
    for batch in dm.train_dataloader():
        train.append(batch.image)
        if sum(len(t) for t in train) >= n_train:
            break
    test = torch.cat([b.image for b in dm.val_dataloader()])[:n_test]
    return torch.cat(train)[:n_train], test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--prior-steps", type=int, default=3000)
    parser.add_argument("--num", type=int, default=64, help="held-out digits and samples per grid")
    parser.add_argument("--steps", type=int, default=25, help="image sampler steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    module = load_module(args.ckpt).eval()
    res = 32
    t0 = time.perf_counter()
    train, test = digit_splits(4000, args.num, res)
    latents = torch.cat([module.denoiser.encode_images(train[i : i + 500]) for i in range(0, len(train), 500)])
    losses = fit_latent_prior(module.denoiser.prior, latents, steps=args.prior_steps)
    t_prior = time.perf_counter() - t0

    classifier, held_out_acc = load_classifier("digits")
    z = module.denoiser.encode_images(test)
    seeds = list(range(args.num))
    out: dict = {"checkpoint": args.ckpt, "prior_refit_seconds": round(t_prior, 1),
                 "prior_loss_first_last": [round(sum(losses[:100]) / 100, 4), round(sum(losses[-100:]) / 100, 4)],
                 "classifier_held_out_accuracy": round(held_out_acc, 3), "reconstruction": {}, "samples": {}}
    true_pred, _ = classify(classifier, test)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for g in (32, 64, 128):
            t1 = time.perf_counter()
            rec = module.generate((g, g), seeds, latents=z, steps=args.steps)
            down = F.interpolate(rec, size=(res, res), mode="area") if g != res else rec
            pred, _ = classify(classifier, rec)
            out["reconstruction"][f"{g}x{g}"] = {
                "mae_vs_input_at_32": round((down - test).abs().mean().item(), 4),
                "same_digit_as_input": round((pred == true_pred).float().mean().item(), 3),
                "seconds_per_image": round((time.perf_counter() - t1) / len(seeds), 3),
            }
            shown = F.interpolate(test[:16], size=(g, g), mode="nearest") if g != res else test[:16]
            save_grid(torch.cat([shown, rec[:16].float()]), RESULTS / f"reconstruction_{g}x{g}.png", nrow=8)
            t1 = time.perf_counter()
            smp = module.generate((g, g), seeds, steps=args.steps)
            pred, conf = classify(classifier, smp)
            out["samples"][f"{g}x{g}"] = {
                "classifier_mean_confidence": round(conf.mean().item(), 3),
                "class_histogram": torch.bincount(pred, minlength=10).tolist(),
                "seconds_per_image": round((time.perf_counter() - t1) / len(seeds), 3),
            }
            save_grid(smp[:16].float(), RESULTS / f"samples_{g}x{g}.png", nrow=8)
    _, real_conf = classify(classifier, test)
    out["real_digits_classifier_mean_confidence"] = round(real_conf.mean().item(), 3)
    (RESULTS / "summary.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
