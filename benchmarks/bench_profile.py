"""Where the default denoiser spends its time: torch.profiler over a training step and sampling.

The default denoiser (``configs/quickstart.yaml``) at 32² and 64² on one thread:

* training step at the quickstart setting (batch 32, 2x subsampling, bf16 autocast, Adam);
* sampling: ``samplers.sample`` (ddim, 3 steps, batch 4, bf16 autocast as the quickstart).

Prints the ``sno/*`` forward scopes (inclusive) and the ops with the largest self CPU time.
Not part of the suite (profiling distorts timings); used to choose the optimisations.

    python benchmarks/bench_profile.py [--res 32 64] [--out profile.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_common import default_denoiser, default_process
from bench_precision import make_step
from torch.profiler import ProfilerActivity, profile

from lightning_infdiff.samplers import sample


def table(prof, top: int) -> dict:  # noqa: ANN001
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    scopes = {e.key: e.cpu_time_total / 1e3 for e in ev if e.key.startswith("sno/")}
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3, e.count) for e in ev), key=lambda r: -r[1])[:top]
    return {"total_self_ms": total / 1e3, "scopes_ms": scopes, "top_ops": ops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = default_denoiser()
    process = default_process()
    result = {}
    for res in args.res:
        step = make_step(model.train(), dict(res=res, batch=32, rate=2), bf16=True)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        result[f"train_{res}"] = table(prof, args.top)
        model.eval()

        def run(res: int = res) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                sample(process, model, (res, res), list(range(4)), channels=1, steps=3, cond=torch.arange(4),
                       guidance_scale=2.0)

        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        result[f"sample_{res}"] = table(prof, args.top)
    for k, r in result.items():
        print(f"\n== {k}: {r['total_self_ms']:.0f} ms self time; scopes: "
              + ", ".join(f"{s} {v:.0f}" for s, v in sorted(r["scopes_ms"].items(), key=lambda kv: -kv[1])))
        for key, ms, count in r["top_ops"]:
            print(f"  {key:55s} {ms:8.1f} ms {100 * ms / r['total_self_ms']:5.1f}%  x{count}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
