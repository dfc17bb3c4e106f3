"""Suite section 3: fp32 vs bf16 autocast, channels_last, torch.compile on the default denoiser.

The default denoiser is ``configs/quickstart.yaml``'s sparse neural operator at the quickstart's
training setting (32² digits, batch 32, 2x subsampling, heat-kernel process, v-prediction).
One training step = ``GaussianProcess.loss`` forward, backward, gradient clipping and a step of
the training optimiser (``configs/base.yaml``: norm clipping at 1, fused AdamW). The eager variants
(fp32, bf16, each with and without ``channels_last`` on the model's 4-D weights, which only the
inner U-Net has) are timed round-robin in one process, so their ratios share the machine's
load. ``torch.compile`` (inductor; default mode, or ``suite.py --compile-mode``) runs in a child process with a time-out: fp32
and bf16, each compiled and eager, timed round-robin in that child, which gives the compiled
bf16 / fp32 ratio from one run; compile times (first calls) are reported separately, and a
failure is recorded with its error.

Note: the inner ADM U-Net converts its input to channels_last itself (``denoisers/unet.py``),
so "channels_last" here only changes the layout of the model's 4-D weights.

Where bf16 helps: the per-op times of the oracle below are summed into op classes
(:data:`OP_CLASSES`; dense convs, the sparse level's depthwise convs, matmul/attention,
normalisation, copies, index work, the rest), so the report shows which parts bf16 speeds up
and which bound it. The compiled steps get the same split in the child from profiled steps
(median of :data:`PROFILED_STEPS`), with inductor's fused kernels as one more class
(:data:`COMPILED_GRAPH`) and each profiled step's page faults recorded.
A per-op oracle (:func:`oracle_bound`) times the two steps op by op and asks whether any
choice of precision per op could reach the target with this machine's kernels.
A batch sweep (:func:`batch_sweep`) splits the step into a fixed cost and a per-example cost
per precision: bf16 can only speed up the second.

Every process of this section pins glibc's malloc thresholds first (:func:`bench_common.pin_malloc`)
and records each variant's minor page faults per step: with the dynamic threshold, one variant
could fault in fresh pages on every step because of what another allocated before it, and the
ratio would measure that instead of the precision.
"""

from __future__ import annotations

import ast
import copy
import statistics
import tempfile
import time

import torch
from bench_common import (
    BENCH,
    COMPILE_MODES,
    base_config,
    child_main,
    default_denoiser,
    default_optimizer,
    default_process,
    interleaved,
    minor_faults,
    pin_malloc,
    run_child,
    spread,
)
from precision_oracle import bound, matmul_gain, op_times


def setting(quick: bool) -> dict:
    return dict(res=16, batch=2, rate=2, repeats=2) if quick else dict(res=32, batch=32, rate=2, repeats=7)


#: Extra batch sizes of the fixed-versus-per-example split (the setting's own batch reuses the
#: main fp32 / bf16 medians).
SWEEP_BATCHES = {True: (1,), False: (4, 8, 16)}


def batch_sweep(base: torch.nn.Module, s: dict, batches: tuple[int, ...], at_batch: dict[str, float]) -> dict:
    """Step time against batch size per precision, fitted as ``t = fixed + per_example · B``.

    The fixed part is what a step costs whatever its size (operator dispatch, Python, autocast's
    weight casts, the optimiser, tiny kernels); the per-example part is the arithmetic and memory
    traffic that bf16 can speed up. Their split says how far bf16 can take the step at this batch.
    ``at_batch`` holds the median step seconds per precision already measured at ``s["batch"]``.
    """
    points: dict[str, dict[int, float]] = {p: {s["batch"]: at_batch[p]} for p in ("fp32", "bf16")}
    for b in sorted(set(batches) - {s["batch"]}):
        sb = dict(s, batch=b)
        steps = {p: make_step(copy.deepcopy(base).train(), sb, p == "bf16") for p in points}
        times = interleaved(steps, s["repeats"], warmup=1)
        for p in points:
            points[p][b] = spread(times[p])["median"]
    fits = {}
    for p, pts in points.items():
        slope, fixed = statistics.linear_regression(list(pts), list(pts.values()))
        fits[p] = {"fixed_s": fixed, "per_example_s": slope}
    per_example = fits["fp32"]["per_example_s"] / fits["bf16"]["per_example_s"]
    return {"step_s": {p: {str(b): t for b, t in sorted(pts.items())} for p, pts in points.items()}, "fit": fits,
            "per_example_speedup": per_example}


def tiny_denoiser() -> torch.nn.Module:
    from lightning_infdiff.denoisers.sparse_operator import SparseNeuralOperator

    return SparseNeuralOperator(in_channels=1, num_classes=10, train_resolution=16, channels=8, depth=1, kernel_size=3,
                                inner_resolution=8, inner_channels=8, channel_mult=(1,), num_res_blocks=1,
                                attention_resolutions=(), head_channels=8, emb_dim=16)


#: Op classes of the breakdown, in matching order (first match wins). Convolutions whose weight
#: has one input channel per group are the sparse level's depthwise convs.
OP_CLASSES = (
    ("matmul / attention", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product")),
    ("normalisation", ("aten::native_layer_norm", "aten::native_group_norm")),
    ("copies / casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("index / gather / scatter / sort", ("aten::index", "aten::gather", "aten::scatter", "aten::topk", "aten::sort",
                                         "aten::argsort", "aten::cat", "aten::embedding")),
)


#: The profiler's event for a call of an inductor-compiled graph (forward or backward): its self
#: time is the graph's generated C++ kernels and their Python wrapper; the extern ops it calls
#: (oneDNN convs, matmuls) are its children, so they keep their own classes.
COMPILED_GRAPH = "## Call CompiledFxGraph"
FUSED_CLASS = "inductor fused kernels (compiled graphs)"


def _op_class(key: str, shapes: list) -> str | None:
    if key.startswith(COMPILED_GRAPH):
        return FUSED_CLASS
    if "convolution" in key:
        # grouped (the sparse level's depthwise convs and their block-diagonal weight gradient,
        # groups > 1) or not (the U-Net's): weight in-channels against the input's channels
        inp, weight = (shapes[1], shapes[2]) if "backward" in key else (shapes[0], shapes[1]) if len(shapes) > 1 else ([], [])
        grouped = len(weight) == 4 and len(inp) == 4 and weight[1] != inp[1]
        return "depthwise conv (sparse level)" if grouped else "dense conv (U-Net)"
    for name, prefixes in OP_CLASSES:
        if key.startswith(prefixes):
            return name
    return "other (elementwise, optimiser, autograd)" if key.startswith(("aten::", "Optimizer")) else None


def _key_class(key: str) -> str | None:
    """The op class of a :func:`precision_oracle.op_times` key (``"aten.mm.default|((8, 4), (4, 4))"``)."""
    qualified, _, shapes = key.partition("|")
    if "depthwise_same_conv" in qualified:  # the sparse level's custom depthwise ops
        return "depthwise conv (sparse level)"
    parts = qualified.split(".")
    if parts[0] != "aten" or len(parts) < 2:
        return None
    return _op_class(f"aten::{parts[1]}", [list(t) for t in ast.literal_eval(shapes)] if shapes else [])


def classify_ops(times: dict[str, float]) -> dict[str, float]:
    """Seconds per op class (:data:`OP_CLASSES`) of the per-op times of one step."""
    out: dict[str, float] = {}
    for key, t in times.items():
        cls = _key_class(key)
        if cls is not None:
            out[cls] = out.get(cls, 0.0) + t
    return out


#: Profiled steps per precision in :func:`op_breakdown` (the median per class is reported: one
#: step caught by a load spike on this shared machine would otherwise skew its classes).
PROFILED_STEPS = 3


def op_breakdown(step, steps: int = PROFILED_STEPS, faults: list[int] | None = None) -> dict[str, float]:  # noqa: ANN001 - a zero-argument training step
    """Self CPU seconds per op class of a training step, the median over ``steps`` profiled steps
    (which parts bf16 does and does not speed up).

    Used for the compiled steps, whose fused kernels only the profiler sees. If ``faults`` is
    given, it receives each profiled step's minor page faults: profiled fp32 steps fault in
    fresh pages that unprofiled ones and bf16's do not (measured on the EPYC: 8,000-16,000 per
    profiled fp32 step, none in bf16's), most likely because the profiler's records, alive
    through the step, leave the heap's holes just too small for the next 4 MiB buffer.
    """
    per_step: list[dict[str, float]] = []
    for _ in range(steps):
        f0 = minor_faults()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        if faults is not None:
            faults.append(minor_faults() - f0)
        out: dict[str, float] = {}
        for e in prof.key_averages(group_by_input_shape=True):
            cls = _op_class(e.key, e.input_shapes or [])
            if cls is not None:
                out[cls] = out.get(cls, 0.0) + e.self_cpu_time_total / 1e6
        per_step.append(out)
    classes = sorted({c for out in per_step for c in out})
    return {c: statistics.median(out.get(c, 0.0) for out in per_step) for c in classes}


#: Steps per precision timed op by op for :func:`oracle_bound`, and the matmul (side, repeats)
#: whose bf16 gain it is compared with, by quick mode.
ORACLE_REPEATS = {True: 2, False: 7}
ORACLE_MATMUL = {True: (256, 3), False: (2048, 5)}


def oracle_bound(fp32_step, bf16_step, quick: bool) -> dict:  # noqa: ANN001 - zero-argument training steps
    """Whether any choice of precision per op could reach 1.6× (:mod:`precision_oracle`): the two
    steps timed op by op, the bound that follows, and a large matmul's bf16 gain to compare with."""
    times = op_times({"fp32": fp32_step, "bf16": bf16_step}, ORACLE_REPEATS[quick])
    out = bound(times["fp32"], times["bf16"])
    out["repeats"] = ORACLE_REPEATS[quick]
    out["op_times_s"] = times  # the raw medians per op key, behind every figure above
    out["matmul"] = matmul_gain(*ORACLE_MATMUL[quick])
    req = out["required_conv_matmul_gain"]
    print(f"  per-op oracle: op time {out['ratio']:.2f}x, best per-op precision {out['oracle_ratio']:.2f}x; "
          f"convs/matmuls gain {out['conv_matmul']['gain']:.2f}x, would need "
          f"{'more than any finite' if req is None else f'{req:.2f}x'} for {out['target']}x "
          f"(a {out['matmul']['n']}² matmul gains {out['matmul']['gain']:.2f}x)", flush=True)
    return out


def make_step(model: torch.nn.Module, s: dict, bf16: bool, seed: int = 0,  # noqa: ANN201
              phases: list[tuple[float, float, float]] | None = None):
    """A closure doing one training step of ``model`` on a fresh random batch.

    With ``phases``, each call also appends its ``(forward, backward, clipping + optimiser)``
    wall seconds to that list (the batch's creation is in none of them).
    """
    process = default_process()
    opt = default_optimizer(model.parameters())
    clip = float(base_config()["trainer"].get("gradient_clip_val") or 0.0)
    gen = torch.Generator().manual_seed(seed)
    res, b = s["res"], s["batch"]
    n = res * res // s["rate"]

    def step() -> None:
        x0 = torch.rand(b, 1, res, res, generator=gen) * 2 - 1
        idx = torch.stack([torch.randperm(res * res, generator=gen)[:n] for _ in range(b)])
        cond = torch.randint(0, 10, (b,), generator=gen)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = process.loss(model, x0, idx, cond=cond).mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if clip > 0:  # as the trainer does (configs/base.yaml)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if phases is not None:
            phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))

    return step


def child(spec: dict) -> dict:
    """torch.compile vs eager for each of ``spec["precisions"]``, all timed round-robin in this
    fresh process (so the compiled bf16 / fp32 ratio is measured in one run, like the eager one)."""
    torch.manual_seed(0)
    malloc = pin_malloc()
    s = spec["setting"]
    base = tiny_denoiser() if spec["quick"] else default_denoiser()
    mode = spec.get("compile_mode", "default")
    out: dict = {"malloc": malloc, "mode": mode}
    variants = {}
    for prec in spec["precisions"]:
        bf16 = prec == "bf16"
        compiled_model = copy.deepcopy(base)
        # compiles forward on first call (nn.Module.compile, inductor); "max-autotune" also
        # benchmarks inductor's own GEMM templates (AMX micro-kernels for bf16 on this CPU)
        compiled_model.compile(mode=None if mode == "default" else mode)
        cstep = make_step(compiled_model, s, bf16)
        t0 = time.perf_counter()
        cstep()
        cstep()  # backward graphs and a possible recompilation happen within the first calls
        out[prec] = {"compile_s": time.perf_counter() - t0}
        variants[f"{prec} eager"] = make_step(copy.deepcopy(base), s, bf16)
        variants[f"{prec} compiled"] = cstep
    faults: dict[str, list[int]] = {}
    times = {k: spread(v) for k, v in interleaved(variants, s["repeats"], warmup=1, faults=faults).items()}
    out["faults_per_step"] = {k: statistics.median(v) for k, v in faults.items()}
    # where the compiled steps spend their time: which classes compilation fused away, and what
    # bf16 gains in the fused kernels that remain
    profiled_faults: dict[str, list[int]] = {prec: [] for prec in spec["precisions"]}
    out["breakdown"] = {prec: op_breakdown(variants[f"{prec} compiled"], faults=profiled_faults[prec])
                        for prec in spec["precisions"]}
    out["breakdown_faults_per_step"] = {k: statistics.median(v) for k, v in profiled_faults.items()}
    out["breakdown_steps"] = PROFILED_STEPS
    for prec in spec["precisions"]:
        eager, compiled = times[f"{prec} eager"], times[f"{prec} compiled"]
        out[prec].update(eager=eager, compiled=compiled, speedup=eager["median"] / compiled["median"])
    if {"fp32", "bf16"} <= set(out):
        out["bf16_vs_fp32"] = {mode: times[f"fp32 {mode}"]["median"] / times[f"bf16 {mode}"]["median"]
                               for mode in ("eager", "compiled")}
    return out


def run(quick: bool, threads: int, budget_s: float, compile_mode: str = "default") -> dict:
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    malloc = pin_malloc()  # before any tensor: the thresholds then hold for the whole section
    torch.manual_seed(0)
    s = setting(quick)
    base = tiny_denoiser() if quick else default_denoiser()
    variants = {}
    for name, bf16, cl in (("fp32", False, False), ("bf16", True, False), ("fp32+channels_last", False, True),
                           ("bf16+channels_last", True, True)):
        m = copy.deepcopy(base).train()
        if cl:
            m = m.to(memory_format=torch.channels_last)
        variants[name] = make_step(m, s, bf16)
    faults: dict[str, list[int]] = {}
    times = interleaved(variants, s["repeats"], warmup=1, faults=faults)
    eager = {k: spread(v) for k, v in times.items()}
    # the op classes come from the oracle's per-op timer, not the profiler: a profiled fp32 step
    # faulted in thousands of fresh pages that bf16's did not (see op_breakdown)
    oracle = oracle_bound(variants["fp32"], variants["bf16"], quick)
    breakdown = {k: classify_ops(oracle["op_times_s"][k]) for k in ("fp32", "bf16")}
    sweep = batch_sweep(base, s, SWEEP_BATCHES[quick], {p: eager[p]["median"] for p in ("fp32", "bf16")})
    fp32 = eager["fp32"]["median"]
    ratios = {f"{k}_speedup_vs_fp32": fp32 / v["median"] for k, v in eager.items() if k != "fp32"}
    print("  " + ", ".join(f"{k} {1e3 * v['median']:.0f} ms" for k, v in eager.items()), flush=True)
    compile_res: dict = {}
    if quick:
        compile_res = {"skipped": "quick mode (compilation alone takes minutes on this CPU)"}
    else:
        # an empty inductor cache: the compile times are a first compilation's, not a cache hit
        # left by an earlier run of the same graphs
        with tempfile.TemporaryDirectory(prefix="infdiff_inductor_") as cache:
            r = run_child(BENCH / "bench_precision.py", {"setting": s, "quick": quick, "precisions": ["fp32", "bf16"],
                                                         "compile_mode": compile_mode},
                          threads, timeout=max(60.0, budget_s * 0.9), env={"TORCHINDUCTOR_CACHE_DIR": cache})
        if "error" in r:
            compile_res = {"fp32": r, "bf16": r}
            print(f"  torch.compile: {r['error'][-300:]}", flush=True)
        else:
            compile_res = r
            for prec in ("fp32", "bf16"):
                print(f"  torch.compile {prec}: speed-up {r[prec]['speedup']:.2f}x, compile {r[prec]['compile_s']:.0f} s",
                      flush=True)
            print(f"  compiled ({compile_mode}) bf16 vs compiled fp32: {r['bf16_vs_fp32']['compiled']:.2f}x", flush=True)
    return {"setting": s, "model": "tiny SNO" if quick else "configs/quickstart.yaml SparseNeuralOperator",
            "eager": eager, "faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
            "malloc": malloc, "ratios": ratios, "compile": compile_res, "breakdown": breakdown,
            "breakdown_steps": ORACLE_REPEATS[quick], "breakdown_source": "op timer", "batch_sweep": sweep,
            "oracle": oracle,
            "method": "one training step (loss, backward, clipping, fused AdamW) at the quickstart setting; eager variants timed round-robin in one "
                      "process; torch.compile in a child with an empty inductor cache: fp32 and bf16, compiled and eager, timed round-robin; glibc malloc "
                      "thresholds pinned in both processes, minor page faults counted per step"}


if __name__ == "__main__":
    child_main(child)
