"""Training-step time and peak memory of the sparse neural operator vs subsampling rate.

The analogue of ∞-Diff appendix tables 4 and 5: one training step (forward, MSE loss,
backward, Adam step) at a fixed batch size, for subsampling rates 1, 2, 4, 8, 16 (fraction
1/rate of the pixels, a fresh random subset every step), at 64² and 128² data with inner grids
of 16² and 32², in fp32 and under bf16 autocast.

Method:
* time: wall clock of each step, median over ``--repeats`` steps after ``--warmup`` steps;
* peak memory: every setting runs in a fresh subprocess; peak = (``ru_maxrss`` high-water
  mark after the steps) - (``ru_maxrss`` after imports, model and optimiser creation), i.e.
  the extra resident memory of a training step (activations, gradients, Adam state,
  temporaries). Large CPU buffers are mmap-ed and returned to the OS when freed, so RSS follows
  the live set; the high-water mark is what a machine must provide. (tracemalloc does not see
  torch's allocations; the CUDA-only ``max_memory_allocated`` does not exist on CPU);
* ratios (speed-up, memory reduction) are against rate 1 of the same setting, in one run;
* threads: ``--threads`` (default 1): on a shared 2-core machine a descheduled second OpenMP
  thread stalls every op, which made 2-thread timings noisy by 10x here.

Usage::

    python benchmarks/bench_sparse.py            # full table -> benchmarks/results/sparse.{json,md}
    python benchmarks/bench_sparse.py --quick    # smoke run (tiny model, 32², rates 1 and 8)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def model_config(inner: int, quick: bool) -> dict:
    if quick:
        return dict(channels=16, inner_resolution=inner, inner_channels=16, channel_mult=(1, 2),
                    num_res_blocks=1, attention_resolutions=(4,), head_channels=16, emb_dim=32)
    # ∞-Diff's sparse level (64 channels, 3+3 blocks, kernel 7); a CPU-sized ADM inner U-Net.
    return dict(channels=64, depth=3, kernel_size=7, inner_resolution=inner, inner_channels=64,
                channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), head_channels=64,
                emb_dim=128, dropout=0.1, dropout_resolution=8)


def child(spec: dict) -> dict:
    """Run one setting in this (fresh) process and return its measurements."""
    import torch

    torch.set_num_threads(spec["threads"])
    from lightning_infdiff.coords import index_to_coords
    from lightning_infdiff.denoisers.layers.sparse_conv import AUTO_PAIRS_MAX_DENSITY
    from lightning_infdiff.denoisers.sparse_operator import SparseNeuralOperator

    torch.manual_seed(0)
    res, rate, b = spec["res"], spec["rate"], spec["batch"]
    model = SparseNeuralOperator(in_channels=3, train_resolution=res, **model_config(spec["inner"], spec["quick"]))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n = res * res // rate
    steps = spec["warmup"] + spec["repeats"]
    data = []
    for _ in range(steps):
        idx = torch.stack([torch.randperm(res * res)[:n] for _ in range(b)])
        data.append((torch.randn(b, n, 3), index_to_coords(idx, (res, res)), torch.randn(b), torch.randn(b, n, 3)))
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step(values, coords, logsnr, target):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = model(values, coords, logsnr, (res, res))
            loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for i, batch in enumerate(data):
        t0 = time.perf_counter()
        step(*batch)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB on Linux
    result = dict(spec, n_points=n, step_s=statistics.median(times), times=times, peak_mb=peak / 1024,
                  params=sum(p.numel() for p in model.parameters()),
                  backend="pairs" if n <= AUTO_PAIRS_MAX_DENSITY * res * res else "dense")
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(*data[-1])
        rows = []
        for ev in prof.key_averages():
            rows.append((ev.key, ev.cpu_time_total / 1e3, ev.self_cpu_time_total / 1e3, ev.count))
        result["profile"] = sorted(rows, key=lambda r: -r[2])[:25]
        result["scopes"] = {k: t for k, t, _, _ in rows if k.startswith("sno/")}
        result["profile_total_ms"] = sum(r[2] for r in rows)
    return result


def run_child(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"setting {spec} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load_1min"] = os.getloadavg()[0]  # other processes on the machine (noise indicator)
    return result


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Sparse neural operator: training step vs subsampling rate",
        "",
        f"Command: `python benchmarks/bench_sparse.py {' '.join(sys.argv[1:])}`; batch {args.batch}, {args.threads} thread(s), "
        f"median of {args.repeats} steps after {args.warmup} warm-up; peak = extra RSS high-water mark of a "
        "fresh process per setting. Speed-up and memory reduction are relative to rate 1 of the same row group. "
        "`load` is the 1-minute load average after the setting: the machine is shared, so above ~1.5 other "
        "processes competed for the 2 cores and times are noisier (memory is unaffected).",
        "",
        "| data | inner | precision | rate | points/img | backend | step (ms) | speed-up | peak (MB) | mem. reduction | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['res']}² | {r['inner']}² | {r['precision']} | {r['rate']}× | {r['n_points']} | {r['backend']} | "
            f"{1e3 * r['step_s']:.0f} | {r['speedup']:.2f}× | {r['peak_mb']:.0f} | {r['mem_reduction']:.2f}× | "
            f"{r['load_1min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 32², rates 1 and 8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--resolutions", type=int, nargs="*", default=None)
    parser.add_argument("--inner", type=int, nargs="*", default=None)
    parser.add_argument("--precisions", nargs="*", default=None)
    parser.add_argument("--rates", type=int, nargs="*", default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--name", default=None, help="results file stem (default: sparse, or sparse_quick)")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        resolutions, inners, precisions, rates = [32], [8], ["fp32"], [1, 8]
        args.repeats, args.batch = min(args.repeats, 2), min(args.batch, 2)
    else:
        resolutions, inners, precisions, rates = [64, 128], [16, 32], ["fp32", "bf16"], [1, 2, 4, 8, 16]
    resolutions = args.resolutions or resolutions
    inners, precisions, rates = args.inner or inners, args.precisions or precisions, args.rates or rates
    rows = []
    for res in resolutions:
        for inner in inners:
            for precision in precisions:
                group = []
                for rate in rates:
                    spec = dict(res=res, inner=inner, precision=precision, rate=rate, batch=args.batch,
                                threads=args.threads, repeats=args.repeats, warmup=args.warmup, quick=args.quick)
                    r = run_child(spec)
                    group.append(r)
                    print(f"{res}² inner {inner}² {precision} rate {rate}: {1e3 * r['step_s']:.0f} ms, "
                          f"peak {r['peak_mb']:.0f} MB ({r['backend']})", flush=True)
                ref = group[0]
                for r in group:
                    r["speedup"] = ref["step_s"] / r["step_s"]
                    r["mem_reduction"] = ref["peak_mb"] / max(r["peak_mb"], 1e-9)
                rows.extend(group)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or ("sparse_quick" if args.quick else "sparse")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows, args)
    if not args.no_profile:
        res, inner = (32, 8) if args.quick else (128, 32)
        text += "\n## Where the time goes (torch.profiler, one fp32 step, "
        text += f"{res}², inner {inner}²)\n"
        for rate in (1, 8):
            spec = dict(res=res, inner=inner, precision="fp32", rate=rate, batch=args.batch, threads=args.threads,
                        repeats=1, warmup=1, quick=args.quick, profile=True)
            r = run_child(spec)
            total = r["profile_total_ms"]
            text += f"\n### rate {rate}× (profiled step {total:.0f} ms of self time)\n\n"
            text += "Forward scopes (inclusive CPU ms): " + ", ".join(
                f"{k} {v:.0f}" for k, v in sorted(r["scopes"].items(), key=lambda kv: -kv[1])) + "\n\n"
            text += "| op | self ms | share | calls |\n|---|---|---|---|\n"
            for key, _, self_ms, count in r["profile"][:14]:
                text += f"| {key} | {self_ms:.1f} | {100 * self_ms / total:.0f}% | {count} |\n"
            (RESULTS / f"{name}_profile_rate{rate}.json").write_text(json.dumps(r, indent=1))
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
