"""Equal-length CPU training run of every small denoiser config, through the project's own CLI.

For each ``configs/denoisers/<name>.yaml`` this runs, in a subprocess (1 thread)::

    python -m lightning_infdiff fit --config configs/base.yaml --config configs/denoisers/<name>.yaml \\
        --trainer.max_steps S --data.batch_size B --trainer.val_check_interval S ...

so every model gets base.yaml's process (plain diffusion, cosine logSNR, v-prediction), its
optimiser (AdamW 5e-4, cosine decay), its EMA callback and its data (bundled MNIST digits at 32²,
4x coordinate subsampling), the same number of steps and the same batch size. Validation runs
once, at the end, with the EMA weights (held-out v-loss at 8 fixed noise levels, seeded noise).
Then ``python -m lightning_infdiff sample`` draws 16 unconditional samples at 1x (32²) and
2x (64²) from ``last.ckpt`` (EMA weights, DPM-Solver++ 2M, 15 steps by default, seeds 0-15).

The bundled digit classifier (``lightning_infdiff.metrics.classifier``) is then run on the
samples. The models are unconditional, so there is no requested label to agree with: only the
classifier's mean confidence and the entropy of its predicted-class histogram are reported
(a confident classifier on blobs is possible: this is a weak proxy, the PNGs are the evidence).

Run (about an hour for all configs, two queues in parallel on 2 cores)::

    python benchmarks/bench_denoiser_training.py --configs siid,unet --steps 300 --batch 16 &
    python benchmarks/bench_denoiser_training.py --configs uvit,coord_mlp,... --steps 300 --batch 16 &
    python benchmarks/bench_denoiser_training.py --report    # table from the per-model JSONs

Writes ``benchmarks/results/denoiser_training/<name>.json``, the sample grids
``<name>_32x32.png`` / ``<name>_64x64.png`` and ``README.md`` (the table, with the hand-written
per-model descriptions from ``descriptions.json`` once someone has looked at the grids).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "denoiser_training"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (appending its output to ``log``); return wall seconds; raise on failure."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}), see {log}: {' '.join(cmd)}")
    return time.perf_counter() - t0


def fit_command(name: str, steps: int, batch: int, warmup: int, run_dir: Path) -> list[str]:
    """The CLI call that trains config ``name`` (base.yaml + the denoiser overlay)."""
    return [
        sys.executable, "-m", "lightning_infdiff", "fit",
        "--config", "configs/base.yaml", "--config", f"configs/denoisers/{name}.yaml",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.log_every_n_steps", "10",
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", name,
        "--trainer.enable_progress_bar", "false",
        "--data.batch_size", str(batch), "--model.warmup_steps", str(warmup),
        "--model.sample_every_n_val", "0",
    ]


def sample_command(ckpt: Path, scale: int, out: Path, steps: int) -> list[str]:
    """The CLI call that draws 16 samples at ``scale`` x the training grid (DPM-Solver++ 2M)."""
    return [sys.executable, "-m", "lightning_infdiff", "sample", "--ckpt_path", str(ckpt),
            "--scale", str(scale), "--num", "16", "--steps", str(steps), "--out", str(out)]


def _finished_run(run_dir: Path, name: str, steps: int) -> Path | None:
    """A finished earlier fit of ``name`` with ``steps`` steps (validated, last.ckpt written), if any."""
    for version in sorted((run_dir / name).glob("version_*"), reverse=True):
        curve = version / "val_loss_by_logsnr.jsonl"
        ckpt = version / "checkpoints" / "last.ckpt"
        if ckpt.exists() and curve.exists():
            last = json.loads(curve.read_text().splitlines()[-1])
            if int(last["step"]) == steps:
                return version
    return None


def _last_version(run_dir: Path, name: str) -> Path:
    versions = sorted((run_dir / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"no run of {name} under {run_dir / name}")
    return versions[-1]


def classifier_stats(folder: Path) -> dict[str, float]:
    """Digit-classifier confidence and class-histogram entropy of the PNG samples in ``folder``."""
    import numpy as np
    import torch
    from PIL import Image

    from lightning_infdiff.metrics.classifier import classify, load_classifier

    files = sorted(folder.glob("seed*.png"))
    imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32))
                        for f in files])[:, None] / 127.5 - 1.0
    model, _ = load_classifier("digits")
    pred, conf = classify(model, imgs)
    hist = torch.bincount(pred, minlength=10).double() / len(pred)
    ent = -sum(float(p) * math.log(float(p)) for p in hist if p > 0)
    return {"mean_confidence": float(conf.mean()), "class_entropy_nats": ent,
            "classes_seen": int((hist > 0).sum())}


def train_one(name: str, steps: int, batch: int, warmup: int, run_dir: Path, sample_steps: int) -> dict:
    """Train, validate and sample one config; returns the result row (also written as JSON).

    A finished fit of the same config and length under ``run_dir`` is reused (its wall time is
    then the checkpoint's time minus the run's start, i.e. without the CLI's start-up)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"{name}.log"
    row: dict = {"config": f"configs/denoisers/{name}.yaml", "steps": steps, "batch": batch,
                 "warmup_steps": warmup, "loadavg_start": os.getloadavg()}
    cmd = fit_command(name, steps, batch, warmup, run_dir)
    row["fit_command"] = " ".join(cmd[1:])
    version = _finished_run(run_dir, name, steps)
    if version is None:
        row["fit_wall_s"] = _run(cmd, log)
        version = _last_version(run_dir, name)
    else:
        row["fit_wall_s"] = (version / "checkpoints" / "last.ckpt").stat().st_mtime - \
            (version / "hparams.yaml").stat().st_mtime
        row["fit_reused"] = str(version)
    curve = [json.loads(line) for line in (version / "val_loss_by_logsnr.jsonl").read_text().splitlines()]
    row["val_loss"] = sum(c["loss"] for c in curve[-1]["curve"]) / len(curve[-1]["curve"])
    row["val_curve"] = curve[-1]["curve"]
    ckpt = version / "checkpoints" / "last.ckpt"
    for scale in (1, 2):
        out = version / "samples_cli"
        row[f"sample_wall_s_{scale}x"] = _run(sample_command(ckpt, scale, out, sample_steps), log)
        side = 32 * scale
        shutil.copy(out / f"grid_{side}x{side}.png", RESULTS / f"{name}_{side}x{side}.png")
        row[f"classifier_{side}"] = classifier_stats(out / f"{side}x{side}")
    row["sample_command"] = " ".join(sample_command(ckpt, 1, Path("OUT"), sample_steps)[1:])
    row["sample_steps"] = sample_steps
    row["loadavg_end"] = os.getloadavg()
    (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=2))
    return row


def report() -> str:
    """Markdown table from every ``<name>.json`` (+ ``descriptions.json`` if present)."""
    rows = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json")) if p.stem != "descriptions"}
    desc_path = RESULTS / "descriptions.json"
    desc = json.loads(desc_path.read_text()) if desc_path.exists() else {}
    if not rows:
        return "no results yet\n"
    any_row = next(iter(rows.values()))
    lines = [
        "# Equal-length CPU training of every small denoiser config",
        "",
        f"Each config: `python -m lightning_infdiff fit --config configs/base.yaml --config "
        f"configs/denoisers/<name>.yaml` with {any_row['steps']} steps at batch {any_row['batch']} "
        f"(warm-up {any_row['warmup_steps']} steps), i.e. base.yaml's plain diffusion, cosine logSNR, "
        "v-prediction, AdamW 5e-4 with cosine decay, EMA, bf16-mixed, bundled MNIST digits at 32² with 4x "
        "coordinate subsampling, unconditional. 1 thread per model, two models at a time on a shared "
        "2-core machine (load averages below). Validation once at the end with EMA weights: mean v-MSE over "
        "8 fixed noise levels on 250 held-out digits (full grid). Samples: `python -m lightning_infdiff "
        f"sample --scale 1|2 --num 16 --steps {any_row.get('sample_steps', 25)}` (EMA weights, DPM-Solver++ 2M, "
        "seeds 0-15).",
        "",
        "Classifier columns: the bundled digit CNN on the samples (resized to 32²). The models are "
        "unconditional, so there is no label to agree with: `conf` is the mean top-1 probability and `H` the "
        "entropy (nats) of the predicted-class histogram over the 16 samples (ln 10 = 2.30 is uniform). "
        "Blobs can still get confident predictions: the grids below are the evidence.",
        "",
        "| denoiser | train wall (s) | val loss | conf 32² | H 32² | conf 64² | H 64² | load avg start/end | 32² samples | 64² samples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        c32, c64 = r["classifier_32"], r["classifier_64"]
        d = desc.get(name, {})
        lines.append(
            f"| {name} | {r['fit_wall_s']:.0f} | {r['val_loss']:.4f} | {c32['mean_confidence']:.2f} | "
            f"{abs(c32['class_entropy_nats']):.2f} | {c64['mean_confidence']:.2f} | {abs(c64['class_entropy_nats']):.2f} | "
            f"{r['loadavg_start'][0]:.1f} / {r['loadavg_end'][0]:.1f} | {d.get('32', '(not yet looked at)')} | "
            f"{d.get('64', '(not yet looked at)')} |"
        )
    lines += ["", "Sample grids: `<name>_32x32.png` and `<name>_64x64.png` in this folder.", ""]
    notes = desc.get("_notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="", help="comma-separated names of configs/denoisers/*.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--sample-steps", type=int, default=15, help="DPM-Solver++ steps of the CLI sampling")
    parser.add_argument("--run-dir", default="/tmp/denoiser_training_runs", help="logs and checkpoints (not committed)")
    parser.add_argument("--skip-done", action="store_true", help="skip configs that already have a result JSON")
    parser.add_argument("--report", action="store_true", help="only rewrite README.md from the JSONs")
    args = parser.parse_args()
    if not args.report:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in [n for n in args.configs.split(",") if n]:
            if not (ROOT / "configs" / "denoisers" / f"{name}.yaml").exists():
                raise FileNotFoundError(f"--configs: no configs/denoisers/{name}.yaml")
            if args.skip_done and (RESULTS / f"{name}.json").exists():
                continue
            t0 = time.perf_counter()
            row = train_one(name, args.steps, args.batch, args.warmup, run_dir, args.sample_steps)
            print(f"{name}: fit {row['fit_wall_s']:.0f}s val {row['val_loss']:.4f} total "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "README.md").write_text(report())


if __name__ == "__main__":
    main()
