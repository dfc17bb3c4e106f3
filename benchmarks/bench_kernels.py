"""Kernel-level measurements behind the bf16 training-step optimisations (one process, medians).

Each row times one choice the package makes against its alternative, on the shapes of the
default model's training step (``configs/quickstart.yaml``: batch 32, 32² sparse level with 32
channels, 16² inner U-Net):

* attention: ``F.scaled_dot_product_attention`` against the plain matmul-softmax-matmul of
  :func:`lightning_infdiff.denoisers.layers.attention.attention` (forward + backward);
* depthwise 5x5 conv on a channels-last 32x32x32x32 canvas: forward, input gradient and weight
  gradient in fp32 and bf16, and the fp32 depthwise weight gradient against the bf16 block-diagonal
  one (:func:`~lightning_infdiff.denoisers.layers.sparse_conv._depthwise_weight_grad`) at three
  sizes;
* AdamW step over the default model's parameters: per-tensor loop, ``foreach`` and ``fused``;
* gradient accumulation ``add_`` of same-layout against mixed-layout (contiguous + channels_last)
  tensors, fp32 and bf16 (why ``LayoutGroupNorm`` hands gradients back in their tensor's layout);
* GroupNorm on channels-last tensors: torch's kernel against a contiguous copy and back (the
  choice :meth:`~lightning_infdiff.denoisers.layers.adm.LayoutGroupNorm.relayout_pays` makes),
  forward + backward and forward alone, fp32 and bf16, on the inner U-Net's shapes and on a
  grid denoiser's 128² map;
* the inner U-Net's 3x3 convolutions (64 -> 64 channels, channels-last, on 4² and 16² maps at
  batch 1 and 32), forward + backward under bf16 autocast against fp32: the per-call cost that
  bf16 adds on small maps;
* the sparse operator's data projections (``Linear(1, 32)`` lift and ``Linear(32, 1)`` output on
  32x512 points), forward + backward in fp32 and under bf16 autocast (why they run in fp32:
  their weight gradients are matrix-vector products);
* ModulatedLayerNorm-style LN + FiLM under bf16 autocast: fp32 output (autocast's rule) against
  bf16 output;
* the memory-bound ops of the step (add, mul, SiLU, GELU, LayerNorm, a channels-last to contiguous
  copy) on its shapes, fp32 against bf16, with the sparse level's point matmul for contrast: how
  much bf16 can speed up the part of the step that is not convolution or matmul (fp32 and bf16
  calls alternate, :func:`paired_ms`).

    python benchmarks/bench_kernels.py --threads 2 --out benchmarks/results/kernels.md
    python benchmarks/bench_kernels.py --parts elementwise --out benchmarks/results/kernels_elementwise.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import choose_subset, default_denoiser, interleaved, machine_info, time_calls


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall milliseconds of ``repeats`` calls after ``warmup`` untimed ones."""
    return 1e3 * statistics.median(time_calls(fn, repeats, warmup))


def attention_rows(repeats: int) -> list[tuple[str, float, float]]:
    from lightning_infdiff.denoisers.layers.attention import attention

    rows = []
    for shape in ((32, 2, 16, 32), (32, 2, 64, 32), (8, 4, 256, 64)):
        for dt in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(*shape, dtype=dt, requires_grad=True) for _ in range(3))
            g = torch.randn(*shape, dtype=dt)

            def run(f: Callable, q=q, k=k, v=v, g=g) -> None:  # noqa: ANN001
                torch.autograd.grad(f(q, k, v), (q, k, v), g)

            # alternating calls: timed one after the other, the (8, 4, 256, 64) bf16 pair once
            # reversed its order between two runs (plain 6.0 then 15.5 ms)
            fused, plain = paired_ms(lambda run=run: run(F.scaled_dot_product_attention), lambda run=run: run(attention),
                                     repeats)
            rows.append((f"attention fwd+bwd {shape} {str(dt)[6:]}: fused SDPA / plain", fused, plain))
    return rows


def _conv_grad(g: torch.Tensor, x: torch.Tensor, wt: torch.Tensor, mask: tuple[bool, bool, bool]) -> tuple:
    """One part of a depthwise 'same' conv's backward (stride 1, padding 2)."""
    return torch.ops.aten.convolution_backward(g, x, wt, None, (1, 1), (2, 2), (1, 1), False, (0, 0), x.shape[1], mask)


def depthwise_rows(repeats: int) -> list[tuple[str, float, float]]:
    b, c, h, w, k = 32, 32, 32, 32, 5
    ops = {}
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(b, h, w, c).to(dt).permute(0, 3, 1, 2)  # channels-last canvas
        wt = torch.randn(c, 1, k, k, dtype=dt)
        y = F.conv2d(x, wt, padding=2, groups=c)
        g = torch.randn_like(y)
        ops[dt] = {
            "forward": median_ms(lambda x=x, wt=wt: F.conv2d(x, wt, padding=2, groups=c), repeats),
            "input gradient": median_ms(lambda g=g, x=x, wt=wt: _conv_grad(g, x, wt, (True, False, False)), repeats),
            "weight gradient": median_ms(lambda g=g, x=x, wt=wt: _conv_grad(g, x, wt, (False, True, False)), repeats),
        }
    rows = [(f"depthwise 5x5 conv {name}, 32x32x32x32 channels-last: fp32 / bf16", ops[torch.float32][name],
             ops[torch.bfloat16][name]) for name in ops[torch.float32]]
    return rows + block_weight_grad_rows(repeats)


def block_weight_grad_rows(repeats: int) -> list[tuple[str, float, float]]:
    """fp32 depthwise weight gradient against the bf16 block-diagonal one the sparse level uses."""
    from lightning_infdiff.denoisers.layers.sparse_conv import _depthwise_weight_grad

    rows = []
    for b, c, hw, k in ((32, 32, 32, 5), (8, 128, 64, 5), (4, 64, 128, 9)):
        x = torch.randn(b, hw, hw, c).permute(0, 3, 1, 2)  # channels-last canvas
        g = torch.randn_like(x)
        wt = torch.randn(c, 1, k, k)
        args = (None, (1, 1), (k // 2, k // 2), (1, 1), False, (0, 0), c, (False, True, False))
        fp32 = median_ms(lambda g=g, x=x, wt=wt, args=args: torch.ops.aten.convolution_backward(g, x, wt, *args), repeats)
        x16, g16 = x.bfloat16(), g.bfloat16()
        blocks = median_ms(lambda g=g16, x=x16, wt=wt, k=k: _depthwise_weight_grad(g, x, wt, (k // 2, k // 2)), repeats)
        rows.append((f"depthwise {k}x{k} weight gradient, {b}x{c}x{hw}x{hw}: fp32 depthwise / bf16 block-diagonal",
                     fp32, blocks))
    return rows


def adamw_rows(repeats: int) -> list[tuple[str, float, float]]:
    model = default_denoiser()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    t = {}
    for name, kw in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **kw)
        t[name] = median_ms(opt.step, repeats)
    return [("AdamW step, default model: per-tensor loop / fused", t["loop"], t["fused"]),
            ("AdamW step, default model: foreach / fused", t["foreach"], t["fused"])]


def layout_rows(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(32, 96, 16, 16).to(dt).contiguous(memory_format=torch.channels_last)
        same = torch.randn(32, 96, 16, 16).to(dt).contiguous(memory_format=torch.channels_last)
        mixed = same.contiguous()
        rows.append((f"gradient add_ 32x96x16x16 {str(dt)[6:]}: mixed layouts / same layout",
                     median_ms(lambda a=a, m=mixed: a.clone().add_(m), repeats),
                     median_ms(lambda a=a, s=same: a.clone().add_(s), repeats)))
    return rows


def group_norm_rows(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for shape in ((32, 32, 16, 16), (32, 64, 8, 8), (32, 96, 16, 16), (1, 64, 128, 128), (8, 32, 64, 64)):
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(*shape).to(dt).contiguous(memory_format=torch.channels_last).requires_grad_(True)
            g = torch.randn_like(x)

            def native(x=x) -> torch.Tensor:  # noqa: ANN001
                return F.group_norm(x, 32)

            def copied(x=x) -> torch.Tensor:  # noqa: ANN001
                return F.group_norm(x.contiguous(), 32).contiguous(memory_format=torch.channels_last)

            for mode in ("fwd+bwd", "fwd"):
                if mode == "fwd":
                    with torch.no_grad():
                        a, b = median_ms(native, repeats), median_ms(copied, repeats)
                else:
                    a = median_ms(lambda f=native, g=g: f().backward(g), repeats)
                    b = median_ms(lambda f=copied, g=g: f().backward(g), repeats)
                rows.append((f"GroupNorm(32) {mode} {'x'.join(map(str, shape))} channels-last {str(dt)[6:]}: "
                             "torch's kernel / via contiguous copies", a, b))
    return rows


def small_conv_rows(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    for b, side in ((1, 4), (32, 4), (1, 16), (32, 16)):
        x = torch.randn(b, 64, side, side).contiguous(memory_format=torch.channels_last)
        xb = x.bfloat16().requires_grad_(True)
        x.requires_grad_(True)

        def run(bf16: bool, x=x, xb=xb) -> None:  # noqa: ANN001
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = conv(xb if bf16 else x)
            y.sum().backward()

        rows.append((f"3x3 conv 64->64 fwd+bwd {b}x64x{side}x{side} channels-last: bf16 autocast / fp32",
                     median_ms(lambda run=run: run(True), repeats), median_ms(lambda run=run: run(False), repeats)))
    return rows


def projection_rows(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for cin, cout in ((1, 32), (32, 1)):
        lin = torch.nn.Linear(cin, cout)
        x = torch.randn(32, 512, cin)

        def run(bf16: bool, lin=lin, x=x) -> None:  # noqa: ANN001
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = lin(x.bfloat16() if bf16 else x)
            y.float().sum().backward()

        rows.append((f"Linear({cin}, {cout}) fwd+bwd on 32x512 points: bf16 autocast / fp32",
                     median_ms(lambda run=run: run(True), repeats), median_ms(lambda run=run: run(False), repeats)))
    return rows


def layer_norm_rows(repeats: int) -> list[tuple[str, float, float]]:
    x = torch.randn(32, 512, 32).bfloat16().requires_grad_(True)
    scale, shift = torch.randn(32, 1, 32), torch.randn(32, 1, 32)

    def autocast_fp32() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.addcmul(shift, F.layer_norm(x, (32,)), 1 + scale)
        y.backward(torch.ones_like(y))

    def native_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False):
            h = F.layer_norm(x, (32,))
            y = torch.addcmul(shift.to(h.dtype), h, (1 + scale).to(h.dtype))
        y.backward(torch.ones_like(y))

    return [("LN + FiLM fwd+bwd 32x512x32 under bf16 autocast: fp32 out / bf16 out",
             median_ms(autocast_fp32, repeats), median_ms(native_bf16, repeats))]


def paired_ms(fa: Callable[[], object], fb: Callable[[], object], repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median wall milliseconds of ``fa`` and ``fb`` timed alternately (:func:`bench_common.interleaved`),
    so a drift in the machine's speed reaches both alike: sub-millisecond kernels timed one after
    the other moved their ratio by up to 1.6x between runs here."""
    times = interleaved({"a": fa, "b": fb}, repeats, warmup)
    return 1e3 * statistics.median(times["a"]), 1e3 * statistics.median(times["b"])


def elementwise_rows(repeats: int) -> list[tuple[str, float, float]]:
    points, hidden = (32, 512, 32), (32, 512, 64)  # the sparse level's points and its MLP's hidden layer
    fmap = (32, 64, 16, 16)  # an inner U-Net feature map (channels-last)
    rows = []
    ops: tuple[tuple[str, tuple[int, ...], Callable[[torch.Tensor], object]], ...] = (
        ("add x + x", points, lambda x: x + x),
        ("mul x * x", hidden, lambda x: x * x),
        ("SiLU", fmap, F.silu),
        ("GELU", hidden, F.gelu),
        ("LayerNorm(32)", points, lambda x: F.layer_norm(x, (32,))),
        ("channels-last -> contiguous copy", fmap, lambda x: x.contiguous()),
    )
    for name, shape, op in ops:
        xs = {}
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(shape).to(dt)
            xs[dt] = x.contiguous(memory_format=torch.channels_last) if len(shape) == 4 else x
        label = "x".join(map(str, shape))
        rows.append((f"{name} {label}: fp32 / bf16", *paired_ms(lambda op=op, x=xs[torch.float32]: op(x),
                                                                lambda op=op, x=xs[torch.bfloat16]: op(x), repeats)))
    a, w = torch.randn(32 * 512, 32), torch.randn(32, 64)
    ab, wb = a.bfloat16(), w.bfloat16()
    rows.append(("point matmul (16384, 32) @ (32, 64): fp32 / bf16", *paired_ms(lambda: a @ w, lambda: ab @ wb, repeats)))
    return rows


#: The measurement groups, in report order (``--parts`` picks a subset).
PARTS: dict[str, Callable[[int], list[tuple[str, float, float]]]] = {
    "attention": attention_rows, "depthwise": depthwise_rows, "adamw": adamw_rows, "layout": layout_rows,
    "group_norm": group_norm_rows, "small_conv": small_conv_rows, "projection": projection_rows,
    "layer_norm": layer_norm_rows, "elementwise": elementwise_rows,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None, help="markdown report (a .json twin is written next to it)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    args = ap.parse_args()
    parts = choose_subset("--parts", args.parts, PARTS)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for part in parts:
        part_rows = PARTS[part](args.repeats)
        rows += part_rows
        for name, a, b in part_rows:
            print(f"  {name}: {a:.2f} / {b:.2f} ms ({a / b:.2f}x)", flush=True)
    info = machine_info()
    lines = ["# Kernel measurements behind the bf16 step optimisations", "",
             f"`python benchmarks/bench_kernels.py --threads {args.threads}"
             f"{'' if parts == list(PARTS) else ' --parts ' + ','.join(parts)}`; {info['cpu_model']}, "
             f"{info['logical_cores']} cores, torch {info['torch']}, {args.threads} thread(s), medians of "
             f"{args.repeats} calls, {info['date_utc']} UTC, load {info['loadavg'][0]:.1f}.", "",
             "| measurement (A / B) | A ms | B ms | A / B |", "|---|---|---|---|"]
    lines += [f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}× |" for name, a, b in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"machine": info, "rows": [{"name": n, "a_ms": a, "b_ms": b} for n, a, b in rows]}, indent=1))


if __name__ == "__main__":
    main()
