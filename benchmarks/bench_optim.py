"""Before/after of the optimisations, measured in one run as ratios.

Each *variant* is a source tree of ``lightning_infdiff`` (a git commit exported with
``git archive``, or the working tree) plus optional run-time patches; children alternate
between variants (``A B C A B C ...``), each a fresh process timing the same workloads, so
machine load hits every variant alike. Workloads (default denoiser, ``configs/quickstart.yaml``,
one thread unless ``--threads``, bf16 autocast as the quickstart):

* ``train``: one training step at the quickstart setting (32², batch 32, 2x subsampling);
* ``train_fp32``: the same step without autocast (so a variant's bf16 speed-up is
  ``train_fp32 / train``, measured in the same children);
* ``sample``: ``samplers.sample`` ddim, 3 steps, 4 images at 32² with guidance 2 (8-row batch);
* ``sample64``: the same sampling at 64² (resized 11x11 sparse kernels, full grid);
* ``sample128``, ``sample256``: one image (no guidance batch) at 128² / 256² (kernels 23², 47²);
* ``train64``: the training step at 64² (dense sparse-conv backend, resized 11x11 kernels);
* ``knn``: ``lattice_knn`` alone at the training setting (32 examples of 512 points on 32²,
  to the 16² inner grid, k = 3);
* ``unet128``: the ADM U-Net grid denoiser (``configs/denoisers/unet.yaml``) sampling one image
  at 128², 3 steps (GroupNorm on 128² channels-last maps without gradients).

The ``+gn_contiguous`` patch measured a proposal that is now in the package
(``layers.adm.LayoutGroupNorm``): GroupNorm on a channels-last CPU tensor is tens of times
slower than on a contiguous one in torch 2.13. It stays for comparisons with older commits.

    python benchmarks/bench_optim.py --variants base=5229015 opt=WORKTREE opt+gn=WORKTREE+gn_contiguous
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import BENCH, ROOT, child_main, spread

WORKLOADS = ("train", "train_fp32", "sample", "sample64", "train64", "sample128", "sample256", "unet128", "knn")


def patch_group_norm() -> None:
    """Proposed: run GroupNorm on a contiguous copy of channels-last inputs, return channels-last."""
    import torch
    import torch.nn.functional as F

    orig = torch.nn.GroupNorm.forward

    def forward(self, x):  # noqa: ANN001, ANN202
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last)
        return orig(self, x)

    torch.nn.GroupNorm.forward = forward


def child(spec: dict) -> dict:
    import torch

    if "gn_contiguous" in spec["patches"]:
        patch_group_norm()
    from bench_common import default_denoiser, default_process, time_calls
    from bench_precision import make_step

    import lightning_infdiff
    from lightning_infdiff.samplers import sample

    torch.manual_seed(0)
    model = default_denoiser()
    out = {"package": lightning_infdiff.__file__}
    reps = spec["repeats"]
    for wl in spec["workloads"]:
        if wl.startswith("train"):
            res = 64 if wl == "train64" else 32
            fn = make_step(model.train(), dict(res=res, batch=32, rate=2), bf16=wl != "train_fp32")
        elif wl == "knn":
            from lightning_infdiff.denoisers.layers.knn import lattice_knn

            gen = torch.Generator().manual_seed(0)
            idx = torch.stack([torch.randperm(1024, generator=gen)[:512] for _ in range(32)])

            def fn(idx=idx) -> None:  # noqa: ANN001
                lattice_knn(idx, (32, 32), (16, 16), 3)
        elif wl == "unet128":
            from bench_denoisers import build

            unet, process = build("unet").eval(), default_process()

            def fn(unet=unet, process=process) -> None:  # noqa: ANN001
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    sample(process, unet, (128, 128), [0], channels=1, steps=3, cond=torch.tensor([3]))
        else:
            process = default_process()
            model.eval()
            res = int(wl[len("sample"):] or 32)
            n = 4 if res <= 64 else 1
            guidance = 2.0 if res <= 64 else 1.0

            def fn(process=process, res=res, n=n, guidance=guidance) -> None:  # noqa: ANN001
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    sample(process, model, (res, res), list(range(n)), channels=1, steps=3, cond=torch.arange(n),
                           guidance_scale=guidance)
        out[wl] = time_calls(fn, reps, warmup=1)
    return out


def export(commit: str, dest: Path) -> Path:
    """``git archive`` of ``lightning_infdiff/`` at ``commit`` into ``dest`` (a package root)."""
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "lightning_infdiff", "configs"],
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", required=True,
                    help="name=TREE[+patch]; TREE = a commit or WORKTREE; patch: gn_contiguous")
    ap.add_argument("--rounds", type=int, default=3, help="child processes per variant (alternating)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per workload per child")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each child")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_optim_"))
    variants = {}
    for item in args.variants:
        name, spec = item.split("=", 1)
        tree, *patches = spec.split("+")
        root = ROOT if tree == "WORKTREE" else export(tree, tmp / tree)
        variants[name] = (root, patches)
    workloads = args.workloads.split(",")
    times: dict[str, dict[str, list[float]]] = {v: {w: [] for w in workloads} for v in variants}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, (root, patches) in variants.items():
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", PYTHONPATH=f"{root}{os.pathsep}{BENCH}")
            spec = {"patches": patches, "workloads": workloads, "repeats": args.repeats}
            proc = subprocess.run([sys.executable, str(BENCH / "bench_optim.py"), "--child", json.dumps(spec)],
                                  env=env, capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            assert r["package"].startswith(str(root)), (r["package"], root)
            for w in workloads:
                times[name][w] += r[w]
            loads.append(os.getloadavg()[0])
            print(f"  {name}: " + ", ".join(f"{w} {1e3 * statistics.median(r[w]):.0f} ms" for w in workloads), flush=True)
    first = next(iter(variants))
    result = {"variants": {k: {"tree": str(v[0]), "patches": v[1]} for k, v in variants.items()},
              "stats": {v: {w: spread(t) for w, t in d.items()} for v, d in times.items()},
              "loadavg_1min": loads, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    result["speedup_vs_" + first] = {v: {w: result["stats"][first][w]["median"] / result["stats"][v][w]["median"]
                                         for w in workloads} for v in variants}
    print("\n| variant | " + " | ".join(f"{w} ms median [IQR] | speed-up" for w in workloads) + " |")
    for v in variants:
        cells = []
        for w in workloads:
            st = result["stats"][v][w]
            cells.append(f"{1e3 * st['median']:.0f} [{1e3 * st['q1']:.0f}-{1e3 * st['q3']:.0f}] | "
                         f"{result['speedup_vs_' + first][v][w]:.2f}×")
        print(f"| {v} | " + " | ".join(cells) + " |")
    print(f"load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if not child_main(child):
        main()
