"""Suite section 4: hardware efficiency of the default denoiser's training step.

* Work: ``torch.utils.flop_counter.FlopCounterMode`` over one training step (forward + backward
  of ``GaussianProcess.loss``; the Adam update is elementwise and not counted). It counts the
  matmul-like ops (``mm``, ``addmm``, ``bmm``, convolutions and their backward, scaled dot-product
  attention) at 2 FLOPs per multiply-add; elementwise, normalisation and index ops (the
  ``pairs`` sparse depthwise convolution, gathers, scatters) are not counted, so the achieved
  rate is a matmul-FLOP rate, comparable with the matmul peak. Two corrections to the stock
  counter (:func:`flop_counter`): the dense sparse conv's custom operators carry their own
  formula (``denoisers/layers/sparse_conv.py``; the counter does not see inside custom ops), and a
  grouped convolution's weight gradient is counted per group (torch's formula multiplies
  ``C_in · C_out`` and ignores ``groups``, which counted every depthwise weight gradient
  ``C`` times over: 7.1 of the 22.0 GFLOP per step reported before this correction).
* Peak: the median FLOP/s of square ``n x n`` matmuls (``2 n^3`` FLOPs) in fp32 and bf16 on
  the same machine and thread count.
* Bound: the time inside each op of a step (``precision_oracle.op_times``, median of 3 steps)
  split into counted (matmul-like: convolutions and matmuls, ``precision_oracle.conv_or_matmul``)
  ops and everything else: when most time goes to uncounted ops, the step is bound by memory traffic
  and per-op overhead, not by the FMA units. The counted ops' own rate (the step's FLOPs over
  their share of its wall time) is what the step would reach if everything else took no time:
  when that is far below the peak too, the convolutions and matmuls themselves are too small
  to feed the units.
"""

from __future__ import annotations

import copy
import statistics
from math import prod

import torch
from bench_common import interleaved, spread
from bench_precision import make_step, setting, tiny_denoiser
from precision_oracle import conv_or_matmul, op_times
from torch.utils.flop_counter import FlopCounterMode


def conv_backward_flops(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias, _stride,  # noqa: ANN001
                        _padding, _dilation, transposed: bool, _output_padding, _groups, output_mask: list[bool],  # noqa: ANN001
                        out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003
    """FLOPs of ``aten.convolution_backward`` with groups: each requested gradient (input, weight)
    takes as many multiply-adds as the forward, ``B · prod(spatial) · prod(w_shape)``, where the
    weight ``(C_out, C_in / groups, k...)`` already carries the groups and ``spatial`` is the
    output's (the input's for a transposed conv); 2 FLOPs per multiply-add."""
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    per_gradient = 2 * grad_out_shape[0] * prod(spatial) * prod(w_shape)
    return per_gradient * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` with the grouped-conv backward counted per group (:func:`conv_backward_flops`)."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})


def matmul_peak(n: int, dtype: torch.dtype, repeats: int) -> dict:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    times = interleaved({"mm": lambda: a @ b}, repeats, warmup=2)["mm"]
    st = spread(times)
    return {"n": n, "dtype": str(dtype), "seconds": st, "flops_per_s": 2 * n**3 / st["median"],
            "flops_per_s_best": 2 * n**3 / st["min"]}


def run(quick: bool, threads: int, budget_s: float) -> dict:
    from bench_common import default_denoiser, pin_malloc

    # as section 3 does: without the pin, whether a step faults in fresh pages depends on what the
    # process allocated before (unpinned, a second run of this section in one process had its fp32
    # step fault in 13,280 pages per step, the first none); the faults are recorded per step
    malloc = pin_malloc()
    torch.manual_seed(0)
    s = setting(quick)
    n, reps = (256, 5) if quick else (2048, 7)
    peaks = {"fp32": matmul_peak(n, torch.float32, reps), "bf16": matmul_peak(n, torch.bfloat16, reps)}
    base = tiny_denoiser() if quick else default_denoiser()
    out = {"setting": s, "peak": peaks, "by_precision": {}, "malloc": malloc}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(base).train()
        step = make_step(model, s, precision == "bf16")
        step()  # warm-up outside the counter
        counter = flop_counter()
        with counter:
            step()
        flops = counter.get_total_flops()
        step_faults: dict[str, list[int]] = {}
        times = interleaved({"step": step}, s["repeats"], warmup=0, faults=step_faults)["step"]
        st = spread(times)
        # time inside each op (median of 3 steps), not the profiler's self times: a profiled fp32
        # step faulted in thousands of fresh pages that bf16's did not (bench_precision.op_breakdown)
        ops = op_times({"step": step}, repeats=3, warmup=0)["step"]
        total = sum(ops.values())
        counted = sum(t for k, t in ops.items() if conv_or_matmul(k))
        achieved = flops / st["median"]
        share = counted / max(total, 1e-12)
        # the matmul-like ops' own rate: the step's FLOPs over their share of the step's wall time
        own = flops / max(share * st["median"], 1e-12)
        out["by_precision"][precision] = {
            "flops_per_step": flops, "step_s": st, "achieved_flops_per_s": achieved,
            "faults_per_step": statistics.median(step_faults["step"]),
            "fraction_of_peak": achieved / peaks[precision]["flops_per_s"],
            "matmul_like_share": share,
            "matmul_like_flops_per_s": own, "matmul_like_fraction_of_peak": own / peaks[precision]["flops_per_s"],
            "top_ops": sorted(((k, 1e3 * t) for k, t in ops.items()), key=lambda kv: -kv[1])[:8],
        }
        r = out["by_precision"][precision]
        print(f"  {precision}: {flops / 1e9:.2f} GFLOP/step, {1e3 * st['median']:.0f} ms, "
              f"{achieved / 1e9:.1f} GFLOP/s = {100 * r['fraction_of_peak']:.1f}% of the {precision} matmul peak "
              f"({peaks[precision]['flops_per_s'] / 1e9:.0f} GFLOP/s); matmul-like ops "
              f"{100 * r['matmul_like_share']:.0f}% of the step's op time", flush=True)
    out["method"] = ("FLOPs from torch.utils.flop_counter.FlopCounterMode (matmul/conv/attention only, 2 per MAC, "
                     "forward+backward, Adam not counted; grouped-conv weight gradients counted per group, the "
                     f"sparse level's custom conv ops by their own formula); peak = median of {reps} {n}x{n} matmuls; "
                     "matmul-like share = their time inside ops over all ops' (median of 3 steps, per-op timer)")
    return out
