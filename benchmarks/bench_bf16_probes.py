"""What-if probes on the default model's training step: how much each removable cost is worth.

``benchmarks/results/bf16_bound.md`` explains why the bf16 step of the default denoiser stays
below 1.6x fp32. This script puts numbers on candidate fixes by changing the model in one way
and timing the changed step against the unchanged one. All variants are timed round-robin in
one process (:func:`bench_common.interleaved`), at the quickstart setting (32² digits, batch 32,
2x subsampling, the configured optimiser and clipping; :func:`bench_precision.make_step`).

Probes (each a :data:`PROBES` entry: the change, and the precisions it applies to):

* ``bf16_weights`` (bf16 only): the weights and biases of every ``nn.Conv2d`` and ``nn.Linear``
  held in bf16. Autocast would cast them to bf16 at every call anyway, so this removes its
  per-weight casts and their backward. It is an upper bound, not a training setup: it also runs
  the layers the package keeps in fp32 on purpose
  (``denoisers.layers.precision.in_param_dtype``) in bf16, and the optimiser updates the bf16
  values with no fp32 master copy.
* ``pointwise_matmul`` (fp32 and bf16): every 1x1 ``nn.Conv2d`` computed as a matmul over the
  channels-last layout (``F.linear`` on the ``(B, H, W, C)`` view; no copies), not by oneDNN.
* ``no_dropout`` (fp32 and bf16): dropout probability 0, which gives the cost of the dropout
  masks.
* ``bf16_film`` (fp32 and bf16): the U-Net ResBlocks' FiLM ``GN(h)·(1 + s) + b`` in the map's
  dtype, one ``addcmul`` with ``(s, b)`` cast to it, as ``ModulatedLayerNorm`` does on the sparse
  level. The package's ResBlock multiplies by the fp32 ``(s, b)`` of the conditioning path,
  which promotes a bf16 map to fp32 for the SiLU and the dropout, and casts it back for ``conv2``.

The report also splits the unchanged step into forward, backward and clipping + optimiser
(:data:`PHASES`), fp32 against bf16, to show which part bf16 speeds up least, and counts the
aten ops one step dispatches in each precision (:func:`count_ops`): a step's fixed cost grows
with that count, and autocast adds ops of its own.

    python benchmarks/bench_bf16_probes.py --out benchmarks/results/bf16_probes_epyc.md
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import (
    choose_subset,
    default_denoiser,
    interleaved,
    machine_info,
    pin_malloc,
    spread,
)
from bench_precision import make_step, tiny_denoiser
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_infdiff.denoisers.layers.adm import ResBlock


def hold_bf16_weights(model: nn.Module) -> int:
    """Replace the weight and bias of every ``nn.Conv2d`` / ``nn.Linear`` in ``model`` by bf16
    parameters (in place); returns how many tensors were replaced."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            for name in ("weight", "bias"):
                p = getattr(mod, name, None)
                if p is not None:
                    setattr(mod, name, nn.Parameter(p.detach().to(torch.bfloat16)))
                    n += 1
    return n


class PointwiseMatmulConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` that multiplies channels-last inputs as a matmul.

    ``y[b, :, h, w] = W x[b, :, h, w] + bias``: on a channels-last input, ``x.permute(0, 2, 3, 1)``
    is a contiguous ``(B, H, W, C)`` view, ``F.linear`` maps it to ``(B, H, W, O)``, and the
    permute back is again channels-last. Other layouts take the convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


def _retype(model: nn.Module, match: Callable[[nn.Module], bool], cls: type[nn.Module]) -> int:
    """Give every module of ``model`` for which ``match`` holds the class ``cls`` (a subclass of
    its own with the same parameters, in place); returns how many."""
    mods = [m for m in model.modules() if match(m)]
    for m in mods:
        m.__class__ = cls
    return len(mods)


def pointwise_as_matmul(model: nn.Module) -> int:
    """Turn every 1x1, stride-1, ungrouped, unpadded ``nn.Conv2d`` of ``model`` into a
    :class:`PointwiseMatmulConv2d` (same parameters, in place); returns how many."""
    return _retype(model, lambda m: (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
                                     and m.groups == 1 and m.padding in ((0, 0), "valid")), PointwiseMatmulConv2d)


def drop_dropout(model: nn.Module) -> int:
    """Set every ``nn.Dropout`` of ``model`` with ``p > 0`` to ``p = 0``; returns how many."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, nn.Dropout) and mod.p > 0:
            mod.p = 0.0
            n += 1
    return n


class BF16FiLMResBlock(ResBlock):
    """:class:`~lightning_infdiff.denoisers.layers.adm.ResBlock` whose FiLM keeps the map's dtype:
    ``addcmul(b, h, 1 + s)`` with ``s`` and ``b`` cast to ``h``'s dtype (bf16 under autocast)."""

    @staticmethod
    def modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(shift.to(h.dtype), h, (1.0 + scale).to(h.dtype))


def bf16_film(model: nn.Module) -> int:
    """Turn every ``ResBlock`` of ``model`` into a :class:`BF16FiLMResBlock` (same parameters,
    in place); returns how many."""
    return _retype(model, lambda m: type(m) is ResBlock, BF16FiLMResBlock)


#: name -> (change applied in place, returning the number of changed tensors / modules; precisions)
PROBES: dict[str, tuple[Callable[[nn.Module], int], tuple[str, ...]]] = {
    "bf16_weights": (hold_bf16_weights, ("bf16",)),
    "pointwise_matmul": (pointwise_as_matmul, ("fp32", "bf16")),
    "no_dropout": (drop_dropout, ("fp32", "bf16")),
    "bf16_film": (bf16_film, ("fp32", "bf16")),
}


class _OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, by op name (overload packet)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - dispatch protocol
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], None]) -> collections.Counter[str]:
    """How many times each aten op is dispatched by one call of ``fn``, backward included
    (autograd runs the CPU backward on the calling thread, inside the mode)."""
    with _OpCounter() as counter:
        fn()
    return counter.counts


#: Phases of the unchanged step, timed separately (:func:`bench_precision.make_step`'s ``phases``).
PHASES = ("forward", "backward", "clipping + optimiser")


def run(quick: bool, repeats: int, probes: list[str]) -> dict:
    """Time the base step and every probe's step, fp32 and bf16, round-robin; returns each
    variant's spread and the per-round ratios' spreads (base / probe per precision, and
    fp32 / bf16 with the probe)."""
    torch.manual_seed(0)
    base = tiny_denoiser() if quick else default_denoiser()
    s = dict(res=16, batch=2, rate=2) if quick else dict(res=32, batch=32, rate=2)
    steps: dict[str, Callable[[], None]] = {}
    changed: dict[str, int] = {}
    phases: dict[str, list[tuple[float, float, float]]] = {"fp32": [], "bf16": []}
    for prec in ("fp32", "bf16"):
        steps[f"base {prec}"] = make_step(copy.deepcopy(base).train(), s, prec == "bf16", phases=phases[prec])
    for name in probes:
        change, precisions = PROBES[name]
        for prec in precisions:
            m = copy.deepcopy(base).train()
            changed[name] = change(m)
            steps[f"{name} {prec}"] = make_step(m, s, prec == "bf16")
    warmup = 2
    raw = interleaved(steps, repeats, warmup=warmup)
    timed = {p: v[warmup:] for p, v in phases.items()}  # the timed calls' phases, round by round
    split = {}
    for i, phase in enumerate(PHASES):
        per = {p: [ph[i] for ph in timed[p]] for p in timed}
        split[phase] = {"fp32": spread(per["fp32"]), "bf16": spread(per["bf16"]),
                        "fp32_over_bf16": spread([a / b for a, b in zip(per["fp32"], per["bf16"], strict=True)])}
    times = {k: spread(v) for k, v in raw.items()}
    ops = {}
    for prec in ("fp32", "bf16"):  # a fresh step, so the timed steps' phase lists stay as they are
        step = make_step(copy.deepcopy(base).train(), s, prec == "bf16")
        step()  # the first call also creates the optimiser's state
        c = count_ops(step)
        ops[prec] = {"total": sum(c.values()), "casts": c["_to_copy"], "by_op": dict(c.most_common())}

    def paired(a: str, b: str) -> dict:
        """Spread of the per-round ratios ``a / b``: each round times every variant once, so a
        ratio within a round is less exposed to the machine's drifting load than a ratio of medians."""
        return spread([x / y for x, y in zip(raw[a], raw[b], strict=True)])

    rows = []
    for name in probes:
        precisions = PROBES[name][1]
        row = {"probe": name, "changed": changed[name], "precisions": list(precisions)}
        for prec in precisions:
            row[f"{prec}_speedup"] = paired(f"base {prec}", f"{name} {prec}")
        row["bf16_vs_fp32"] = paired(f"{name} fp32" if "fp32" in precisions else "base fp32", f"{name} bf16")
        rows.append(row)
    return {"setting": s, "quick": quick, "repeats": repeats, "times_s": times, "rows": rows, "phases": split, "ops": ops,
            "base_bf16_vs_fp32": paired("base fp32", "base bf16")}


def report(res: dict, info: dict, command: str) -> str:
    """Markdown: the command and machine, the step medians with their IQR, one line per probe,
    then the unchanged step split into its phases."""
    def ms(v: dict) -> str:
        return f"{1e3 * v['median']:.1f} [{1e3 * v['q1']:.1f}-{1e3 * v['q3']:.1f}]"

    def cell(key: str) -> str:
        return ms(res["times_s"][key])

    def ratio(v: dict) -> str:
        return f"{v['median']:.3f}× [{v['q1']:.3f}-{v['q3']:.3f}]"

    lines = ["# What-if probes on the default model's training step", "",
             f"`{command}`; {info['cpu_model']}, {info['logical_cores']} cores, torch {info['torch']}, "
             f"{info['torch_threads']} thread(s), medians of {res['repeats']} round-robin steps, {info['date_utc']} UTC, "
             f"load {info['loadavg'][0]:.1f}. Setting {res['setting']}.", "",
             f"Unchanged step: fp32 {cell('base fp32')} ms, bf16 {cell('base bf16')} ms [IQR]; "
             f"bf16 / fp32 speed-up {ratio(res['base_bf16_vs_fp32'])}. Speed-ups are medians [IQR] of the "
             "per-round ratios (every variant is timed once per round).", "",
             "| probe | changed | fp32 step ms | bf16 step ms | fp32 speed-up | bf16 speed-up | bf16 vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        name = r["probe"]
        fp32 = cell(f"{name} fp32") if "fp32" in r["precisions"] else "(unchanged)"
        fp32_x = ratio(r["fp32_speedup"]) if "fp32_speedup" in r else "—"
        lines.append(f"| {name} | {r['changed']} | {fp32} | {cell(f'{name} bf16')} | {fp32_x} | "
                     f"{ratio(r['bf16_speedup'])} | {ratio(r['bf16_vs_fp32'])} |")
    lines += ["", "Where the unchanged step's time goes (the same rounds):", "",
              "| phase | fp32 ms | bf16 ms | fp32 / bf16 |", "|---|---|---|---|"]
    for phase, v in res["phases"].items():
        lines.append(f"| {phase} | {ms(v['fp32'])} | {ms(v['bf16'])} | {ratio(v['fp32_over_bf16'])} |")
    ops = res["ops"]
    lines += ["", "Aten ops one unchanged step dispatches (a second step, so the optimiser's state exists; the "
              f"batch's creation included): fp32 {ops['fp32']['total']}, bf16 {ops['bf16']['total']}, of which "
              f"casts (`_to_copy`) {ops['fp32']['casts']} and {ops['bf16']['casts']}. The JSON has the counts by op."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated subset of {', '.join(PROBES)}")
    ap.add_argument("--quick", action="store_true", help="tiny model and batch (a smoke test, not a measurement)")
    ap.add_argument("--out", default=None, help="markdown report (a .json twin is written next to it)")
    args = ap.parse_args(argv)
    probes = choose_subset("--probes", args.probes, PROBES)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    pin_malloc()
    torch.set_num_threads(args.threads)
    res = run(args.quick, args.repeats, probes)
    command = "python benchmarks/bench_bf16_probes.py" + (f" --threads {args.threads}" if args.threads != 2 else "") + (
        f" --repeats {args.repeats}" if args.repeats != 11 else "") + (
        "" if probes == list(PROBES) else f" --probes {','.join(probes)}") + (" --quick" if args.quick else "")
    text = report(res, machine_info(), command)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"machine": machine_info(), **res}, indent=1))


if __name__ == "__main__":
    main()
