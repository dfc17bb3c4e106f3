"""Per-op precision oracle: how far any choice of fp32 or bf16 per op could take the step.

Section 3 (:mod:`bench_precision`) times the default denoiser's training step in fp32 and under
bf16 autocast. This module asks a sharper question of the same step: with the kernels this
machine has, is there *any* assignment of precisions to ops that reaches the issue's 1.6×?

* :func:`op_times` times every op a step dispatches (aten and the package's custom ops, the
  backward included; a :class:`~torch.utils._python_dispatch.TorchDispatchMode` wraps each call),
  keyed by op and input shapes, so the same op on the same shapes is matched across precisions.
  Only time inside ops is counted: the step's Python, autograd bookkeeping and the timer's own
  overhead are not, and bf16 does not shrink them, so ratios of op time are upper bounds on
  ratios of step time.
* :func:`bound` takes the two precisions' op times. Its *oracle* runs every op in whichever
  precision was faster for it and drops autocast's casts entirely (a mixed assignment would need
  some of them): the best speed-up any precision policy could give with these kernels.
  It also splits the ops into convolutions and matmuls (:func:`conv_or_matmul`; oneDNN
  kernels that bf16's dot-product instructions accelerate) and the rest, and solves for the
  speed-up the first group would need for the target with the rest at its oracle time::

      g_required = M_fp32 / (T_fp32 / target - R_best)

  where ``M_fp32`` is the convolutions' and matmuls' fp32 time, ``T_fp32`` the whole fp32 op time
  and ``R_best`` the rest's oracle time. It is then compared with :func:`matmul_gain`, the bf16
  over fp32 rate of a large square matmul on the same machine: the most these kernels gain on
  the shape that suits them best.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Ops whose kernels are convolutions or matmuls (op name, overload dropped). The package's custom
#: depthwise ops of the sparse level (``lightning_infdiff::depthwise_same_conv*``) call oneDNN
#: convolutions too and are matched by :data:`CONV_PREFIXES`.
CONV_MATMUL_OPS = frozenset({
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "convolution", "_convolution",
    "mkldnn_convolution", "convolution_backward",
})
CONV_PREFIXES = ("depthwise_same_conv", "_scaled_dot_product")


def op_name(key: str) -> str:
    """``"aten.mm.default|((4, 8), (8, 2))"`` -> ``"mm"`` (namespace and overload dropped)."""
    qualified = key.split("|", 1)[0]
    parts = qualified.split(".")
    return parts[1] if len(parts) >= 3 else parts[-1]


def conv_or_matmul(key: str) -> bool:
    """Whether the op of an :func:`op_times` key is a convolution or a matmul."""
    name = op_name(key)
    return name in CONV_MATMUL_OPS or name.startswith(CONV_PREFIXES)


class _OpTimer(TorchDispatchMode):
    """Adds each dispatched op's wall time to ``seconds[op|input shapes]``. Inside the handler the
    mode is off, so an op's own sub-ops (a custom op's implementation) are counted once, in it."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - dispatch protocol
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        dt = time.perf_counter() - t0
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        self.seconds[f"{func}|{shapes}"] += dt
        return out


def op_times(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Seconds per op key of one call of each step, the median over ``repeats`` calls.

    The steps are called round-robin (``a b a b ...``) so drifting load hits them alike; a key
    missing from one call counts as zero there.
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    calls: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            with _OpTimer() as timer:
                fn()
            calls[name].append(dict(timer.seconds))
    return {name: {k: statistics.median(c.get(k, 0.0) for c in cs) for k in sorted(set().union(*cs))}
            for name, cs in calls.items()}


def matmul_gain(n: int, repeats: int) -> dict:
    """bf16 over fp32 rate of an ``n x n`` matmul (medians of ``repeats`` alternating calls)."""
    from bench_common import interleaved

    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    t = interleaved({"fp32": lambda: a32 @ b32, "bf16": lambda: a16 @ b16}, repeats, warmup=1)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"n": n, "fp32_s": med["fp32"], "bf16_s": med["bf16"], "gain": med["fp32"] / med["bf16"]}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def bound(t32: dict[str, float], t16: dict[str, float], target: float = 1.6, top: int = 5) -> dict:
    """What the op times of an fp32 and a bf16 step allow (see the module docstring).

    Returns the op-time totals and ratio, the oracle's total and ratio, the convolutions' and
    matmuls' and the rest's times and gains, the speed-up the convolutions and matmuls would need
    for ``target`` (``None`` if the rest alone exceeds the target's budget), the share of their
    fp32 time in ops that already gain that much, and the ``top`` keys that bf16 slows down most.
    """
    tot32, tot16 = sum(t32.values()), sum(t16.values())
    best = {k: min(v, t16[k]) if k in t16 else v for k, v in t32.items()}
    conv32 = sum(v for k, v in t32.items() if conv_or_matmul(k))
    conv16 = sum(v for k, v in t16.items() if conv_or_matmul(k))
    rest_best = sum(v for k, v in best.items() if not conv_or_matmul(k))
    budget = tot32 / target - rest_best
    required = conv32 / budget if budget > 0 else None
    reaching = sum(v for k, v in t32.items() if conv_or_matmul(k) and k in t16 and t16[k] > 0
                   and required is not None and v / t16[k] >= required)
    slower = sorted(((t16[k] - v, k) for k, v in t32.items() if k in t16 and t16[k] > v), reverse=True)
    return {
        "target": target,
        "fp32_s": tot32, "bf16_s": tot16, "ratio": tot32 / tot16,
        "oracle_s": sum(best.values()), "oracle_ratio": tot32 / sum(best.values()),
        "bf16_only_s": sum(v for k, v in t16.items() if k not in t32),
        "conv_matmul": {"fp32_s": conv32, "bf16_s": conv16, "gain": _ratio(conv32, conv16),
                        "share_fp32": conv32 / tot32},
        "rest": {"fp32_s": tot32 - conv32, "bf16_s": tot16 - conv16, "gain": _ratio(tot32 - conv32, tot16 - conv16),
                 "oracle_s": rest_best},
        "required_conv_matmul_gain": required,
        "conv_matmul_share_reaching_required": reaching / conv32 if conv32 > 0 else 0.0,
        "slower_in_bf16": [{"op": k, "fp32_s": t32[k], "bf16_s": t16[k]} for _, k in slower[:top]],
    }
