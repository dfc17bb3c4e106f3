"""Suite section 3: fp32 vs bf16 autocast, channels_last, torch.compile on the default denoiser.

The default denoiser is ``configs/quickstart.yaml``'s sparse neural operator at the quickstart's
training setting (32² digits, batch 32, 2x subsampling, heat-kernel process, v-prediction).
One training step = ``GaussianProcess.loss`` forward, backward, Adam step. The eager variants
(fp32, bf16, each with and without ``channels_last`` on the model's 4-D weights, which only the
inner U-Net has) are timed round-robin in one process, so their ratios share the machine's
load. ``torch.compile`` (inductor, default mode) runs in a child process with a time-out,
against an eager twin timed round-robin in the same child; its compile time (first calls) is
reported separately, and a failure is recorded with its error.

Note: the inner ADM U-Net converts its input to channels_last itself (``denoisers/unet.py``),
so "channels_last" here only changes the layout of the model's 4-D weights. The variant
``bf16+gn_contiguous`` measures a *proposed* change outside this branch's files: GroupNorm on a
channels-last CPU tensor is tens of times slower than on a contiguous one (torch 2.13), so that
variant runs each GroupNorm of its model copy on a contiguous copy and converts back.
"""

from __future__ import annotations

import copy
import time

import torch
from bench_common import (
    BENCH,
    child_main,
    default_denoiser,
    default_process,
    interleaved,
    run_child,
    spread,
)


def setting(quick: bool) -> dict:
    return dict(res=16, batch=2, rate=2, repeats=2) if quick else dict(res=32, batch=32, rate=2, repeats=7)


def tiny_denoiser() -> torch.nn.Module:
    from lightning_infdiff.denoisers.sparse_operator import SparseNeuralOperator

    return SparseNeuralOperator(in_channels=1, num_classes=10, train_resolution=16, channels=8, depth=1, kernel_size=3,
                                inner_resolution=8, inner_channels=8, channel_mult=(1,), num_res_blocks=1,
                                attention_resolutions=(), head_channels=8, emb_dim=16)


def contiguous_group_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Proposed patch, on this model copy only: GroupNorm on a contiguous copy of channels-last input."""
    import torch.nn.functional as F

    for mod in model.modules():
        if isinstance(mod, torch.nn.GroupNorm):
            def forward(x: torch.Tensor, mod: torch.nn.GroupNorm = mod) -> torch.Tensor:
                if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                    y = F.group_norm(x.contiguous(), mod.num_groups, mod.weight, mod.bias, mod.eps)
                    return y.contiguous(memory_format=torch.channels_last)
                return F.group_norm(x, mod.num_groups, mod.weight, mod.bias, mod.eps)

            mod.forward = forward
    return model


def make_step(model: torch.nn.Module, s: dict, bf16: bool, seed: int = 0):  # noqa: ANN201
    """A closure doing one training step of ``model`` on a fresh random batch."""
    process = default_process()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    res, b = s["res"], s["batch"]
    n = res * res // s["rate"]

    def step() -> None:
        x0 = torch.rand(b, 1, res, res, generator=gen) * 2 - 1
        idx = torch.stack([torch.randperm(res * res, generator=gen)[:n] for _ in range(b)])
        cond = torch.randint(0, 10, (b,), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = process.loss(model, x0, idx, cond=cond).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def child(spec: dict) -> dict:
    """torch.compile vs eager (same precision) in this fresh process."""
    torch.manual_seed(0)
    s = spec["setting"]
    base = tiny_denoiser() if spec["quick"] else default_denoiser()
    eager, compiled_model = copy.deepcopy(base), copy.deepcopy(base)
    bf16 = spec["precision"] == "bf16"
    compiled_model.compile()  # compiles forward on first call (nn.Module.compile, inductor)
    cstep = make_step(compiled_model, s, bf16)
    t0 = time.perf_counter()
    cstep()
    cstep()  # backward graphs and a possible recompilation happen within the first calls
    compile_s = time.perf_counter() - t0
    times = interleaved({"eager": make_step(eager, s, bf16), "compiled": cstep}, s["repeats"], warmup=1)
    return {"compile_s": compile_s, "eager": spread(times["eager"]), "compiled": spread(times["compiled"]),
            "speedup": spread(times["eager"])["median"] / spread(times["compiled"])["median"]}


def run(quick: bool, threads: int, budget_s: float) -> dict:
    torch.manual_seed(0)
    s = setting(quick)
    base = tiny_denoiser() if quick else default_denoiser()
    variants = {}
    for name, bf16, cl in (("fp32", False, False), ("bf16", True, False), ("fp32+channels_last", False, True),
                           ("bf16+channels_last", True, True), ("bf16+gn_contiguous", True, False)):
        m = copy.deepcopy(base).train()
        if cl:
            m = m.to(memory_format=torch.channels_last)
        if name.endswith("gn_contiguous"):
            contiguous_group_norm(m)
        variants[name] = make_step(m, s, bf16)
    times = interleaved(variants, s["repeats"], warmup=1)
    eager = {k: spread(v) for k, v in times.items()}
    fp32 = eager["fp32"]["median"]
    ratios = {f"{k}_speedup_vs_fp32": fp32 / v["median"] for k, v in eager.items() if k != "fp32"}
    print("  " + ", ".join(f"{k} {1e3 * v['median']:.0f} ms" for k, v in eager.items()), flush=True)
    compile_res: dict = {}
    if quick:
        compile_res = {"skipped": "quick mode (compilation alone takes minutes on this CPU)"}
    else:
        for precision in ("bf16",):
            r = run_child(BENCH / "bench_precision.py", {"setting": s, "quick": quick, "precision": precision},
                          threads, timeout=max(60.0, budget_s * 0.7))
            compile_res[precision] = r
            msg = r.get("error", "")[-300:] or f"speed-up {r['speedup']:.2f}x, compile {r['compile_s']:.0f} s"
            print(f"  torch.compile {precision}: {msg}", flush=True)
    return {"setting": s, "model": "tiny SNO" if quick else "configs/quickstart.yaml SparseNeuralOperator",
            "eager": eager, "ratios": ratios, "compile": compile_res,
            "method": "one Adam training step at the quickstart setting; eager variants timed round-robin in one "
                      "process; torch.compile in a child against an eager twin timed round-robin"}


if __name__ == "__main__":
    child_main(child)
