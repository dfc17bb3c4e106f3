"""Training cost against coordinate subsampling: the analogue of ∞-Diff's appendix tables 4 and 5.

The ∞-Diff-sized sparse neural operator (64 channels, 3+3 sparse blocks, kernel 7, inner grid
``res/4``) takes one training step (forward, MSE on random targets, backward, Adam) on ``1/rate``
of a ``res``² image's pixels. Each (resolution, rate) runs in a fresh process, so its peak memory
is that process's resident high-water mark above the baseline after set-up. The table gives the
speed-up and the memory reduction against rate 1 of the same resolution; the paper reports 2.65x
and 3.27x at 8x on 256² images.

    python benchmarks/bench_subsample.py --out benchmarks/results/subsample.md
    python benchmarks/bench_subsample.py --quick
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import harness

#: ∞-Diff's tables 4/5 at 8x subsampling: training speed-up and memory reduction against 1x.
PAPER = {"speedup": 2.65, "memory": 3.27}


def model_config(inner: int, quick: bool) -> dict:
    if quick:
        return dict(channels=8, depth=1, kernel_size=3, inner_resolution=inner, inner_channels=8, channel_mult=(1,),
                    num_res_blocks=1, attention_resolutions=(), head_channels=8, emb_dim=16)
    return dict(channels=64, depth=3, kernel_size=7, inner_resolution=inner, inner_channels=64,
                channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), head_channels=64,
                emb_dim=128, dropout=0.1, dropout_resolution=8)


def child(spec: dict) -> dict:
    """One setting, in this fresh process: median step seconds and peak MB above set-up. Optional keys:
    ``device`` (on ``cuda`` the peak is ``max_memory_allocated``, so any process will do), ``bf16``
    (autocast) and ``model`` (a ``class_path``/``init_args`` config replacing the operator)."""
    import torch

    from lightning_infdiff.coords import index_to_coords

    torch.manual_seed(0)
    res, rate, b = spec["res"], spec["rate"], spec["batch"]
    dev = torch.device(spec.get("device", "cpu"))
    cfg = spec.get("model") or {"class_path": "lightning_infdiff.denoisers.sparse_operator.SparseNeuralOperator",
                                "init_args": dict(train_resolution=res, **model_config(res // 4, spec["quick"]))}
    model = harness.instantiate(cfg, in_channels=3).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n = res * res // rate
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    high_water = (lambda: torch.cuda.max_memory_allocated(dev) / 2**20) if cuda else (  # MB
        lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    base = high_water()
    times = []
    for i in range(1 + spec["repeats"]):
        idx = torch.stack([torch.randperm(res * res)[:n] for _ in range(b)])
        values, coords, target = torch.randn(b, n, 3), index_to_coords(idx, (res, res)), torch.randn(b, n, 3)
        values, coords, target, lam = (t.to(dev) for t in (values, coords, target, torch.randn(b)))
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(spec.get("bf16"))):
            loss = torch.nn.functional.mse_loss(model(values, coords, lam, (res, res)).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "peak_mb": high_water() - base}


def measure(spec: dict, threads: int | None) -> dict:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def with_ratios(rows: list[dict]) -> list[dict]:
    """Adds ``speedup`` and ``memory`` (rate 1's step time and peak over this row's, same resolution)."""
    out = []
    for r in rows:
        ref = next(q for q in rows if q["res"] == r["res"] and q["rate"] == 1)
        out.append(dict(r, speedup=ref["step_s"] / r["step_s"], memory=ref["peak_mb"] / max(r["peak_mb"], 1e-3)))
    return out


def markdown(rows: list[dict], batch: int, repeats: int) -> str:
    body = table(rows)
    return (f"Batch {batch}, median of {repeats} steps after one warm-up, a fresh process per setting; ratios "
            f"against rate 1 of the same resolution. ∞-Diff (tables 4/5, 256², 8x): {PAPER['speedup']}x faster, "
            f"{PAPER['memory']}x less memory.\n\n{body}\n")


def table(rows: list[dict]) -> str:
    return harness.table(["data", "rate", "points/img", "step ms", "speed-up", "peak MB", "memory reduction"],
                         [(f"{r['res']}²", f"{r['rate']}×", r["res"] ** 2 // r["rate"], f"{1e3 * r['step_s']:.1f}",
                           f"{r['speedup']:.2f}×", f"{r['peak_mb']:.0f}", f"{r['memory']:.2f}×") for r in rows])


def run(quick: bool, threads: int | None = None) -> str:
    batch, repeats = (1, 2) if quick else (8, 3)
    rows = []
    for res in (16,) if quick else (64, 128):
        for rate in (1, 8) if quick else (1, 2, 4, 8):
            spec = dict(res=res, rate=rate, batch=batch, repeats=repeats, quick=quick)
            rows.append(dict(spec, **measure(spec, threads)))
            print(f"  {res}² rate {rate}: {1e3 * rows[-1]['step_s']:.0f} ms, {rows[-1]['peak_mb']:.0f} MB", flush=True)
    return markdown(with_ratios(rows), batch, repeats)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        args = harness.parser(__doc__).parse_args()
        harness.report("Training cost against coordinate subsampling", run(args.quick, args.threads), args.out)
