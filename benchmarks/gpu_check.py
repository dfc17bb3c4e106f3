"""The CUDA check (issue 38): one command on a one-GPU machine, under 8 minutes, one folder of results.

Sections: the tests marked ``cuda``; ∞-Diff's tables 4/5 (the ∞-Diff-sized operator of
``configs/denoisers/sparse_operator.yaml``'s comment, inner grid ``res/4``, at 128² and 256², 1x-8x
subsampling, bf16: step time and peak CUDA memory against the paper's ratios); the U-Net and U-ViT at
128² on full grids; sampling time per image 64²-512²; the main job's recipe at 64² for about 3 minutes
(samples at 1x/2x/4x as PNG); the machine. Writes ``report.md`` and ``report.json``. Sections that need
CUDA are skipped with the reason where there is none, sections that would overrun ``--budget-s`` too.
``--tiny``: tiny sizes, on CPU in well under a minute (``tests/test_gpu_check.py``); not figures.

    python benchmarks/gpu_check.py            # -> benchmarks/results/gpu/<UTC time>/
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bench_sampling
import bench_subsample
import harness
import torch

T0, DEV = time.perf_counter(), "cuda" if torch.cuda.is_available() else "cpu"
PAPER = {128: (2.65, 3.27), 256: (3.51, 2.44)}  # ∞-Diff tables 4/5, 8x vs 1x: times faster, less memory
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False): run it on a GPU machine"
Ns = argparse.Namespace


def infdiff_sized(res: int, tiny: bool, **kw: int) -> dict:
    size = bench_subsample.model_config(res // 4, True) if tiny else dict(
        channels=64, depth=3, kernel_size=7, inner_resolution=res // 4, inner_channels=128,
        channel_mult=(1, 2, 4, 8), attention_resolutions=(16, 8), head_channels=64, emb_dim=256)
    return {"class_path": "lightning_infdiff.denoisers.SparseNeuralOperator",
            "init_args": dict(train_resolution=res, **size, **kw)}


def grid_models(res: int, tiny: bool) -> dict:
    c, e, blocks = (8, 16, 2) if tiny else (64, 256, 8)  # channels, embedding, transformer blocks and heads
    common = dict(resolution=res, channels=c, emb_dim=e)
    return {"U-Net": {"class_path": "lightning_infdiff.denoisers.ADMUNetDenoiser", "init_args": dict(
                common, channel_mult=(1, 2) if tiny else (1, 2, 4, 8), attention_resolutions=(16,), head_channels=c)},
            "U-ViT": {"class_path": "lightning_infdiff.denoisers.UViTDenoiser", "init_args": dict(
                common, transformer_resolution=res // 8, channel_mult=(1, 2, 4), transformer_mult=8,
                num_transformer_blocks=blocks, heads=blocks)}}


def train_steps(a: Ns, specs: list[dict]) -> list[dict]:
    """``bench_subsample.child`` per setting, in this process; a failure (e.g. out of memory) is a NaN row."""
    rows = []
    for s in specs:
        s = dict(s, batch=a.batch, repeats=2 if a.tiny else 3, quick=a.tiny, device=DEV, bf16=DEV == "cuda")
        try:
            rows.append(dict(s, **bench_subsample.child(s)))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(s, step_s=math.nan, peak_mb=math.nan, error=repr(e)[:300]))
        if DEV == "cuda":
            torch.cuda.empty_cache()
    return rows


def s_tests(a: Ns, done: dict) -> tuple:
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-m", "cuda", "-p", "no:cacheprovider",
                        "tests/test_cuda.py"], cwd=harness.ROOT, capture_output=True, text=True,
                       timeout=max(a.left(), 60))
    last = p.stdout.strip().splitlines()[-1]
    n = {k.rstrip("s"): int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", last)}
    notes = sorted({x[:300] for x in p.stdout.splitlines() if re.match(r"(SKIPPED|FAILED|ERROR) ", x)})
    ok = p.returncode == 0 and n.get("passed", 0) > 0 and not n.get("failed") and not n.get("error")
    return ({"counts": n, "notes": notes, "all_passed": ok},
            f"`pytest -m cuda tests/test_cuda.py`: {last} (exit {p.returncode}).\n\n"
            + "\n".join(f"- {x}" for x in notes))


def s_infdiff(a: Ns, done: dict) -> tuple:
    rows = bench_subsample.with_ratios(train_steps(a, [
        dict(res=r, rate=q, model=infdiff_sized(r, a.tiny)) for r in ((16, 32) if a.tiny else (128, 256))
        for q in ((1, 8) if a.tiny else (1, 2, 4, 8))]))
    checks = [[f"{r['res']}² (inner {r['res'] // 4}²)", f"{PAPER[p][0]}x / {PAPER[p][1]}x",
               f"{r['speedup']:.2f}x / {r['memory']:.2f}x",
               "met" if r["speedup"] > PAPER[p][0] and r["memory"] > PAPER[p][1] else "NOT met"]
              for p, r in zip(PAPER, [r for r in rows if r["rate"] == 8], strict=True)]
    head = ["data", "∞-Diff, 8x vs 1x: faster / less memory", "ours", "target: beat it"]
    return {"rows": rows, "targets": checks}, (
        f"bf16 autocast, batch {a.batch}, one Adam step on 1/rate of the pixels; peak: CUDA high-water mark above the "
        f"weights.\n\n{bench_subsample.table(rows)}\n\n{harness.table(head, checks)}")


def s_grid(a: Ns, done: dict) -> tuple:
    res = 16 if a.tiny else 128
    rows = train_steps(a, [dict(res=res, rate=1, name=k, model=m) for k, m in grid_models(res, a.tiny).items()])
    ops = {r["rate"]: r for r in done.get("infdiff", {}).get("rows", []) if r["res"] == res}
    cells = [[r["name"], f"{res}²", f"{1e3 * r['step_s']:.1f}", f"{r['peak_mb']:.0f}", *(
        f"{r['step_s'] / ops[q]['step_s']:.2f}x / {r['peak_mb'] / max(ops[q]['peak_mb'], 1e-3):.2f}x"
        if q in ops else "-"
        for q in (1, 8))] for r in rows]
    head = ["model (full grid)", "data", "step ms", "peak MB", "vs operator 1x: time / memory", "vs operator 8x"]
    return {"rows": rows}, f"As section 2.\n\n{harness.table(head, cells)}"


def s_sampling(a: Ns, done: dict) -> tuple:
    grids, n = ((8, 16, 32), 2) if a.tiny else ((64, 128, 256, 512), 10)
    op = harness.instantiate(infdiff_sized(32 if a.tiny else 128, a.tiny, num_classes=10), in_channels=1)
    rows, cells = {}, []
    for name, model in {"default (main job)": harness.main_denoiser(a.tiny), "∞-Diff-sized, inner 32²": op}.items():
        per = bench_sampling.per_eval(model.eval(), grids, n, a.tiny, name, DEV, "auto" if DEV == "cuda" else "32")
        p = harness.fit_exponent([r * r for r in grids[1:]], [per[r] for r in grids[1:]])
        rows[name] = {"s_per_image": {r: per[r] * (n + 1) for r in grids}, "exponent": p, "target_met": p <= 1.1}
        cells.append([name, *(f"{per[r] * (n + 1):.3f}" for r in grids), f"{p:.2f}", "met" if p <= 1.1 else "NOT met"])
    head = ["denoiser", *(f"{r}² s/image" for r in grids), f"exponent {grids[1]}²-{grids[-1]}²", "target <= 1.1"]
    return rows, (f"DDIM, {n} steps, batch 1, the network in the inference precision ('auto'); exponent of time "
                  f"against pixels.\n\n{harness.table(head, cells)}")


def s_training(a: Ns, done: dict) -> tuple:
    work, r, secs = a.out / "training", 16 if a.tiny else 64, min(180, int(a.left() - 90))
    tiny = [f"--model.denoiser.init_args.{k}={json.dumps(v)}" for k, v in bench_subsample.model_config(8, True).items()]
    args = [f"--data.resolution={r}", f"--model.denoiser.init_args.train_resolution={r}", *(
        ["--trainer.max_steps=10", "--trainer.max_time=null", "--trainer.limit_val_batches=0",
         "--data.batch_size=8", *tiny]
        if a.tiny else [f"--trainer.max_time=00:00:{secs // 60:02d}:{secs % 60:02d}"])]
    work.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "lightning_infdiff.quickstart", *args], cwd=work, capture_output=True,
                       text=True, timeout=max(a.left(), 0) + 60)
    if p.returncode:
        raise RuntimeError(f"the quickstart failed: {p.stderr[-1500:]}")
    summary = json.loads((work / re.search(r"^summary: (.+)$", p.stdout, re.M).group(1).strip()).read_text())
    for g in summary["grids"]:
        g["png"] = Path(shutil.copy(work / g["png"], a.out / f"train_{Path(g['png']).name}")).name
    cells = [[g["grid"], g.get("accuracy_vs_requested_digit", "-"), g["seconds_per_image"], g["png"]]
             for g in summary["grids"]]
    return summary, (f"`python -m lightning_infdiff.quickstart {' '.join(args)}`: {summary['steps']} steps in "
                     f"{summary['train_seconds']} s ({summary['precision']}).\n\n"
                     + harness.table(["grid", "agrees with the requested digit", "s per image", "PNG"], cells))


def s_machine(a: Ns, done: dict) -> tuple:
    info = {"cpu": harness.machine(), "torch": torch.__version__, "torch CUDA": torch.version.cuda}
    if DEV == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    if shutil.which("nvidia-smi"):
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, check=False).stdout.strip()
    return info, harness.table(["", ""], list(info.items()))


# key: (title, function, needs CUDA (even with --tiny?), seconds it needs at full size)
SECTIONS = {"tests": ("Tests marked cuda", s_tests, None, 150),
            "infdiff": ("∞-Diff tables 4/5: the ∞-Diff-sized operator and subsampling", s_infdiff, "always", 100),
            "grid": ("The U-Net and U-ViT on full grids", s_grid, "always", 30),
            "sampling": ("Sampling time per image against resolution", s_sampling, "full size", 60),
            "training": ("A short run of the main job's recipe at 64²", s_training, "full size", 120),
            "machine": ("The machine", s_machine, None, 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=harness.ROOT / "benchmarks/results/gpu" / time.strftime("%Y%m%d-%H%M"))
    ap.add_argument("--tiny", action="store_true", help="tiny sizes; CUDA-only parts skipped without CUDA")
    ap.add_argument("--budget-s", type=float, default=480.0, help="a section that would overrun it is skipped")
    ap.add_argument("--batch", type=int, default=8, help="batch of the training steps of sections 2 and 3")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    a.left = lambda: a.budget_s - (time.perf_counter() - T0)
    done, records, body = {}, {}, []
    for i, (key, (title, fn, needs, est)) in enumerate(SECTIONS.items(), 1):
        t0, rec, text = time.perf_counter(), {"title": title, "status": "skipped"}, ""
        if DEV == "cpu" and (needs == "always" or (needs and not a.tiny)):
            rec["reason"] = NO_CUDA
        elif not a.tiny and a.left() < est:
            rec["reason"] = f"time budget: {a.left():.0f} s of {a.budget_s:.0f} s left, the section needs about {est} s"
        else:
            print(f"[{i}] {title}", flush=True)
            try:
                done[key], text = fn(a, done)
                rec.update(status="ran", result=done[key])
            except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
                rec.update(status="failed", reason=f"{type(e).__name__}: {e}"[:3000])
        records[key] = dict(rec, seconds=round(time.perf_counter() - t0, 1))
        text = text if rec["status"] == "ran" else f"{rec['status'].capitalize()}: {rec['reason']}"
        body.append(f"## {i}. {title}\n\n{text.strip()}\n\n({records[key]['seconds']:.0f} s)\n")
    wall = round(time.perf_counter() - T0, 1)
    (a.out / "report.json").write_text(json.dumps({"tiny": a.tiny, "device": DEV, "budget_s": a.budget_s,
                                                   "wall_s": wall, "sections": records}, indent=1, default=str))
    harness.report("GPU check" + (" (tiny: not figures)" if a.tiny else ""),
                   "\n".join(body) + f"\nWall time: {wall:.0f} s.", a.out / "report.md")
    sys.exit(any(r["status"] == "failed" for r in records.values()))


if __name__ == "__main__":
    main()
