"""Dense against pairs sparse-conv backend, per subsampling rate, at and away from the training grid.

The evidence behind ``layers.sparse_conv.PointLattice``'s ``"auto"`` rule. One training step
(``GaussianProcess(v).loss``, backward, Adam) of the sparse neural operator with the backend
forced, median over repeats, both backends timed round-robin in one process:

* ``training grid``: the ∞-Diff-sized operator (64 channels, 3+3 blocks, kernel 7) trained at
  the data resolution (``train_resolution = res``), batch 4: the kernel is not resized;
* ``resized kernel``: the small config of ``bench_denoisers`` (``train_resolution = 32``, kernel
  7) on 64² and 128² data, batch 2: the kernel is resized to 15² and 31² taps.

    python benchmarks/bench_backends.py --threads 2 --out benchmarks/results/backends.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_common import interleaved, machine_info, spread

RATES = (4, 8, 16, 32)


def make_model(kind: str, res: int, backend: str) -> torch.nn.Module:
    from bench_denoisers import SMALL_CONFIGS
    from bench_sparse import model_config

    from lightning_infdiff.denoisers.sparse_operator import SparseNeuralOperator

    torch.manual_seed(0)
    if kind == "resized kernel":
        args = dict(SMALL_CONFIGS["sparse_operator"]["init_args"], sparse_backend=backend)
        return SparseNeuralOperator(**args).train()
    return SparseNeuralOperator(in_channels=3, train_resolution=res, sparse_backend=backend,
                                **model_config(res // 4, False)).train()


def make_step(model: torch.nn.Module, res: int, rate: int, batch: int):  # noqa: ANN201 - a closure
    from lightning_infdiff.processes import GaussianProcess

    process = GaussianProcess(parametrisation="v")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    n = res * res // rate
    x0 = torch.rand(batch, model.in_channels, res, res, generator=gen) * 2 - 1
    cond = torch.arange(batch) % 10 if model.num_classes else None

    def step() -> None:
        idx = torch.stack([torch.randperm(res * res, generator=gen)[:n] for _ in range(batch)])
        process.loss(model, x0, idx, cond=cond).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="markdown report (a .json twin is written next to it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for kind, batch in (("training grid", 4), ("resized kernel", 2)):
        for res in (64, 128):
            for rate in RATES:
                steps = {be: make_step(make_model(kind, res, be), res, rate, batch) for be in ("dense", "pairs")}
                t = {be: spread(v) for be, v in interleaved(steps, args.repeats, warmup=1).items()}
                rows.append({"kind": kind, "res": res, "rate": rate, "batch": batch, "dense": t["dense"],
                             "pairs": t["pairs"]})
                print(f"  {kind} {res}² rate {rate}: dense {1e3 * t['dense']['median']:.0f} ms, "
                      f"pairs {1e3 * t['pairs']['median']:.0f} ms", flush=True)
    info = machine_info()
    lines = ["# Sparse-conv backends: dense canvas against pairs kernel map", "",
             f"`python benchmarks/bench_backends.py --threads {args.threads}`; {info['cpu_model']}, "
             f"{info['logical_cores']} cores, torch {info['torch']}, {args.threads} thread(s), medians of "
             f"{args.repeats} round-robin training steps, {info['date_utc']} UTC, load {info['loadavg'][0]:.1f}.", "",
             "| setting | data | rate (density) | dense ms | pairs ms | dense / pairs |", "|---|---|---|---|---|---|"]
    for r in rows:
        d, p = r["dense"]["median"], r["pairs"]["median"]
        lines.append(f"| {r['kind']} (batch {r['batch']}) | {r['res']}² | {r['rate']}× ({1 / r['rate']:.3f}) | "
                     f"{1e3 * d:.0f} | {1e3 * p:.0f} | {d / p:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
