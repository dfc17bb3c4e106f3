"""Markdown report and PNG plots of the benchmark suite's JSON (``benchmarks/suite.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OPERATOR_MODELS = ("default (quickstart SNO)", "sparse_operator", "fno", "uno", "sparse_operator_tiny")


def _ms(st: dict) -> str:
    """``median [q1-q3]`` in milliseconds."""
    return f"{1e3 * st['median']:.1f} [{1e3 * st['q1']:.1f}-{1e3 * st['q3']:.1f}]"


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("met" if flag else "NOT met")


def _color(i: int) -> tuple:
    """A distinct colour per series (the default cycle repeats after ten)."""
    return plt.cm.tab20.colors[(2 * i) % 20 + (2 * i) // 20 % 2]


def _section_head(rec: dict) -> list[str]:
    lines = [f"## {rec['section']}. {rec['title']}", ""]
    if "error" in rec:
        return lines + ["Section failed:", "", "```", str(rec["error"])[-1500:], "```", ""]
    lines.append(f"{rec['threads']} thread(s); wall {rec['wall_s']:.0f} s; 1-min load average "
                 f"{rec['loadavg_before'][0]:.1f} before, {rec['loadavg_after'][0]:.1f} after. "
                 f"Method: {rec['result'].get('method', '')}.")
    return lines + [""]


def subsample(rec: dict, out: Path, plots: list[str]) -> tuple[list[str], dict]:
    lines, targets = _section_head(rec), {}
    if "error" in rec:
        return lines, targets
    res = rec["result"]
    canvas = res.get("canvas_models", res.get("grid_models", []))  # "grid_models": reports before 2026-12-04
    rates = ", ".join(str(r) for r in res.get("canvas_rates", (1, 4, 16)))
    lines += ([f"Canvas models ({', '.join(canvas)}) run on the full canvas whatever the number of points "
               f"(`Denoiser.full_canvas_cost`): they do the same work at every rate and are measured at {rates}x only.",
               ""] if canvas else []) + [
              "| denoiser | data | rate | points/img | step ms median [IQR] | min-max ms | speed-up | peak MB | "
              "mem. reduction |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        head = f"| {r['name']} | {r['res']}² | {r['rate']}× |"
        if "step" not in r:
            lines.append(head + f" | {r.get('skipped') or str(r.get('error', ''))[-120:]} | | | | |")
            continue
        s = r["step"]
        lines.append(head + f" {r['n_points']} | {_ms(s)} | {1e3 * s['min']:.0f}-{1e3 * s['max']:.0f} | "
                     f"{r.get('speedup_vs_rate1', math.nan):.2f}× | {r['peak_mb']:.0f} | "
                     f"{r.get('mem_reduction_vs_rate1', math.nan):.2f}× |")
    t = next((r for r in res["rows"] if r["name"] == "sparse_operator_infdiff" and r["res"] == 128 and r["rate"] == 8
              and "speedup_vs_rate1" in r), None)
    if t:
        targets["∞-Diff SNO 128² (inner 32²), 8× vs 1×: ≥2.65× faster, ≥3.27× less memory"] = (
            f"{t['speedup_vs_rate1']:.2f}× faster, {t['mem_reduction_vs_rate1']:.2f}× less memory",
            t["speedup_vs_rate1"] >= 2.65 and t["mem_reduction_vs_rate1"] >= 3.27)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({r["name"] for r in res["rows"]})
    for ax, key, label in ((axes[0], "speedup_vs_rate1", "step speed-up vs 1×"),
                           (axes[1], "mem_reduction_vs_rate1", "peak-memory reduction vs 1×")):
        for name in names:
            for data_res, style in ((64, "--"), (128, "-")):
                pts = [(r["rate"], r[key]) for r in res["rows"] if r["name"] == name and r["res"] == data_res
                       and key in r]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, marker="o", label=f"{name} {data_res}²",
                            color=_color(names.index(name)))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("subsampling rate")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    _save(fig, out / "suite_subsample.png", plots)
    return lines + [""], targets


def sampling(rec: dict, out: Path, plots: list[str]) -> tuple[list[str], dict]:
    lines, targets = _section_head(rec), {}
    if "error" in rec:
        return lines, targets
    res = rec["result"]
    samplers, resolutions = res["samplers"], res["resolutions"]
    lines += ["Milliseconds per image per network evaluation, median [IQR]; exponent p of time ∝ pixels^p "
              "(all resolutions / 64²-256²).", "",
              "| denoiser | sampler | " + " | ".join(f"{r}²" for r in resolutions) + " | p (all) | p (64²-256²) |",
              "|---|---|" + "---|" * (len(resolutions) + 2)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in res["denoisers"].items():
        for s in samplers:
            cells = []
            for r in resolutions:
                c = row["by_res"].get(str(r), row["by_res"].get(r, {}))
                cells.append(_ms(c["per_nfe"][s]) if "per_nfe" in c else (c.get("skipped") or c.get("error") or "-")[:60])
            hi = (row.get("exponent_64_256") or {}).get(s)
            lines.append(f"| {name} | {s} | " + " | ".join(cells) + f" | {row['exponent'][s]:.2f} | "
                         f"{'-' if hi is None else format(hi, '.2f')} |")
        pts = [(r * r, row["by_res"][str(r)]["per_nfe"]["ddim"]) for r in resolutions
               if "per_nfe" in row["by_res"].get(str(r), {})]
        if pts:
            px = [p for p, _ in pts]
            med = [st["median"] for _, st in pts]
            err = [[st["median"] - st["min"] for _, st in pts], [st["max"] - st["median"] for _, st in pts]]
            ax.errorbar(px, med, yerr=err, marker="o", capsize=2, label=f"{name} (p={row['exponent']['ddim']:.2f})",
                        color=_color(list(res["denoisers"]).index(name)))
        if name in OPERATOR_MODELS:
            hi = (row.get("exponent_64_256") or {}).get("ddim")
            if hi is not None:
                targets[f"sampling exponent of {name} (64²-256², ddim) ≤ 1.1"] = (f"{hi:.2f}", hi <= 1.1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels")
    ax.set_ylabel("s per image per network evaluation (ddim; min-max bars)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    _save(fig, out / "suite_sampling.png", plots)
    return lines + [""], targets


def precision(rec: dict, out: Path, plots: list[str]) -> tuple[list[str], dict]:
    lines, targets = _section_head(rec), {}
    if "error" in rec:
        return lines, targets
    res = rec["result"]
    s = res["setting"]
    lines += [f"Model: {res['model']}; {s['res']}², batch {s['batch']}, {s['rate']}× subsampling; "
              f"medians of {s['repeats']} round-robin steps. The inner U-Net converts its input to channels_last "
              "itself, so `+channels_last` only changes the weights' layout.", "",
              "| variant | step ms median [IQR] | min-max ms | speed-up vs fp32 | minor page faults / step |",
              "|---|---|---|---|---|"]
    fp32 = res["eager"]["fp32"]["median"]
    faults = res.get("faults_per_step") or {}
    for k, st in res["eager"].items():
        fl = f"{faults[k]:.0f}" if k in faults else "not recorded"
        lines.append(f"| {k} | {_ms(st)} | {1e3 * st['min']:.0f}-{1e3 * st['max']:.0f} | {fp32 / st['median']:.2f}× "
                     f"| {fl} |")
    comp = res["compile"]
    mode = comp.get("mode", "default") if isinstance(comp, dict) else "default"
    tc = "torch.compile" if mode == "default" else f"torch.compile mode={mode}"
    for prec, c in comp.items():
        if prec not in ("fp32", "bf16", "skipped"):  # the child's ratios and bookkeeping
            continue
        if not isinstance(c, dict):
            lines.append(f"| torch.compile | {c} | | |")
        elif "speedup" in c:
            lines.append(f"| {tc} ({prec}) vs eager {prec} | {_ms(c['compiled'])} (eager {_ms(c['eager'])}) | "
                         f"compile {c['compile_s']:.0f} s | {c['speedup']:.2f}× vs eager {prec} |")
        else:
            lines.append(f"| {tc} ({prec}) | failed or skipped: {str(c.get('error', c))[-300:]} | | |")
    bf = res["ratios"].get("bf16_speedup_vs_fp32")
    if "bf16_vs_fp32" in comp:
        r = comp["bf16_vs_fp32"]
        lines += ["", f"bf16 against fp32 in the {tc} child (all four timed round-robin): "
                      f"{r['compiled']:.2f}× compiled, {r['eager']:.2f}× eager."]
    lines += _fault_check(res.get("malloc"), faults, fp32)
    lines += _breakdown(res.get("breakdown"), res.get("breakdown_steps", 1), source=res.get("breakdown_source", "profiler"))
    if isinstance(comp, dict) and "breakdown" in comp:
        lines += _breakdown(comp["breakdown"], comp.get("breakdown_steps", 1), f"both under {tc}",
                            faults=comp.get("breakdown_faults_per_step"))
    lines += _sweep(res.get("batch_sweep"), s["batch"])
    lines += _oracle(res.get("oracle"))
    if bf is not None:
        shown = f"{bf:.2f}× eager"
        if "bf16_vs_fp32" in comp:
            shown += f"; {comp['bf16_vs_fp32']['compiled']:.2f}× both under {tc}"
        targets["bf16 ≥ 1.6× faster than fp32 (default denoiser training step)"] = (shown, bf >= 1.6)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = list(res["eager"])
    med = [1e3 * res["eager"][k]["median"] for k in keys]
    err = [[1e3 * (res["eager"][k]["median"] - res["eager"][k]["min"]) for k in keys],
           [1e3 * (res["eager"][k]["max"] - res["eager"][k]["median"]) for k in keys]]
    ax.bar(keys, med, yerr=err, capsize=3)
    ax.set_ylabel("training step (ms), min-max bars")
    ax.tick_params(axis="x", labelsize=7)
    _save(fig, out / "suite_precision.png", plots)
    return lines + [""], targets


#: A variant faulting this many pages more per step than another is flagged: at about 10 µs a
#: fault here (notes of issue 10: ~8,000 extra faults cost ~100 ms), 1,000 is ~10 ms.
FAULT_GAP = 1000


def _fault_check(malloc: dict | None, faults: dict, step_s: float) -> list[str]:
    """Whether the malloc thresholds were pinned and whether page faults could skew the ratios."""
    if malloc is None:
        return ["", "malloc thresholds: not recorded (a run from before they were pinned)."]
    pinned = (f"glibc malloc thresholds pinned (mmap {malloc['mmap_threshold'] >> 20} MiB, trim "
              f"{malloc['trim_threshold'] >> 20} MiB)" if malloc.get("pinned")
              else f"malloc thresholds NOT pinned ({malloc.get('why') or malloc})")
    if not faults:
        return ["", pinned + "."]
    gap = max(faults.values()) - min(faults.values())
    verdict = (f"the variants' page faults per step differ by {gap:.0f}, so faulting does not skew the ratios"
               if gap < FAULT_GAP else
               f"WARNING: the variants' page faults per step differ by {gap:.0f} (about "
               f"{1e3 * gap * 1e-5:.0f} ms at ~10 µs each, against a {1e3 * step_s:.0f} ms fp32 step): "
               "the ratios above partly measure page faults")
    return ["", f"{pinned}; {verdict}."]


def _breakdown(bd: dict | None, steps: int = 1, mode: str = "eager", source: str = "profiler",
               faults: dict | None = None) -> list[str]:
    """Per-op-class time of fp32 and bf16 steps, and what bounds the bf16 gain.

    ``source`` is how the times were taken: ``"profiler"`` (self CPU time of profiled steps, the
    median of ``steps``; records from before the median was taken hold one step) or ``"op timer"``
    (the per-op oracle's medians of ``steps`` steps). ``mode`` names how the steps ran (eager, or
    both compiled); ``faults`` holds the profiled steps' median page faults per precision.
    """
    if not bd or "fp32" not in bd or "bf16" not in bd:
        return []
    f32, b16 = bd["fp32"], bd["bf16"]
    tf, tb = sum(f32.values()), sum(b16.values())
    if source == "op timer":
        how = (f"time inside ops per op class, from the per-op timings of the oracle below, median of {steps} "
               "steps; the step's Python and autograd time is not in it")
    else:
        how = (f"self CPU time per op class, {'one profiled step' if steps == 1 else f'median of {steps} profiled steps'}"
               "; profiling adds overhead, so compare shares, not totals")
    lines = ["", f"Where the time goes, {mode} ({how}):", "",
             "| op class | fp32 ms (share) | bf16 ms (share) | fp32 / bf16 |", "|---|---|---|---|"]
    for k in sorted(f32, key=lambda k: -f32[k]):
        a, b = f32[k], b16.get(k, 0.0)
        lines.append(f"| {k} | {1e3 * a:.1f} ({100 * a / tf:.0f}%) | {1e3 * b:.1f} ({100 * b / tb:.0f}%) | "
                     f"{a / b:.2f}× |" if b > 0 else f"| {k} | {1e3 * a:.1f} | 0 | |")
    lines.append(f"| **step** | {1e3 * tf:.1f} | {1e3 * tb:.1f} | {tf / tb:.2f}× |")
    fast = ("dense conv (U-Net)", "matmul / attention")
    rest_b = sum(v for k, v in b16.items() if k not in fast)
    fast_f = sum(f32.get(k, 0.0) for k in fast)
    if rest_b > 0:
        lines += ["", f"Bound: even if the dense convs and matmuls took zero time in bf16, the other classes as "
                  f"measured in bf16 ({1e3 * rest_b:.0f} ms) would cap the step's speed-up at {tf / rest_b:.2f}×; "
                  f"the dense convs and matmuls are {100 * fast_f / tf:.0f}% of the fp32 step."]
    if faults and {"fp32", "bf16"} <= set(faults):
        gap = abs(faults["fp32"] - faults["bf16"])
        lines += ["", f"Minor page faults per profiled step: fp32 {faults['fp32']:.0f}, bf16 {faults['bf16']:.0f}"
                  + (f". WARNING: they differ by {gap:.0f}, so this table's ratios partly measure page faults."
                     if gap >= FAULT_GAP else ".")]
    return lines


def _sweep(sw: dict | None, batch: int) -> list[str]:
    """Fixed and per-example cost of a step per precision (least-squares fit over batch sizes)."""
    if not sw:
        return []
    f32, b16 = sw["fit"]["fp32"], sw["fit"]["bf16"]
    bs = sorted(int(b) for b in sw["step_s"]["fp32"])
    lines = ["", "Fixed and per-example cost (step time at batch sizes "
             + ", ".join(map(str, bs)) + ", fitted as fixed + per-example × batch):", "",
             "| precision | " + " | ".join(f"batch {b} ms" for b in bs) + " | fixed ms | per example ms |",
             "|---|" + "---|" * (len(bs) + 2)]
    for p, fit in (("fp32", f32), ("bf16", b16)):
        lines.append(f"| {p} | " + " | ".join(f"{1e3 * sw['step_s'][p][str(b)]:.0f}" for b in bs)
                     + f" | {1e3 * fit['fixed_s']:.1f} | {1e3 * fit['per_example_s']:.2f} |")
    same_fixed = (f32["fixed_s"] + f32["per_example_s"] * batch) / (f32["fixed_s"] + b16["per_example_s"] * batch)
    step = sw["step_s"]["fp32"][str(batch)] / sw["step_s"]["bf16"][str(batch)]
    extra = b16["fixed_s"] > f32["fixed_s"]
    fixed_gain = f32["fixed_s"] / b16["fixed_s"] if b16["fixed_s"] > 0 else float("inf")
    text = (f"bf16 speeds up the per-example work {sw['per_example_speedup']:.2f}×, "
            + ("but not the fixed cost " if fixed_gain < 1.1 else f"and the fixed cost {fixed_gain:.2f}× ")
            + f"(dispatch of a few thousand small ops, Python, the optimiser): {1e3 * f32['fixed_s']:.0f} ms in fp32 "
            f"and {1e3 * b16['fixed_s']:.0f} ms in bf16"
            + (", which adds autocast's weight casts and their backward. " if extra else ". ")
            + f"At batch {batch} the step gains {step:.2f}×; it would gain {same_fixed:.2f}× if bf16's fixed cost "
            f"were fp32's, and {sw['per_example_speedup']:.2f}× with no fixed cost at all")
    if step >= 1.6:
        text += "."
    elif sw["per_example_speedup"] >= 1.6:
        text += ": the fixed cost is what keeps this small model's step below 1.6×."
    else:
        text += (": below 1.6× even then, so here the per-example work (elementwise, normalisation and index "
                 "ops that bf16 barely speeds up on this CPU) bounds it as well as the fixed cost.")
    return lines + ["", text]


def _gain(g: float | None) -> str:
    return "n/a" if g is None else f"{g:.2f}×"


def _oracle(o: dict | None) -> list[str]:
    """The per-op precision oracle (``precision_oracle.py``): the table and what it rules out."""
    if not o:
        return []
    cm, rest, target = o["conv_matmul"], o["rest"], o["target"]
    lines = ["", f"Per-op precision oracle (every op of a step timed in both precisions, keyed by op and input "
                 f"shapes, median of {o['repeats']} steps each; time inside ops only, so these ratios are upper "
                 "bounds on the step's):", "",
             "| ops | fp32 ms | bf16 ms | fp32 / bf16 |", "|---|---|---|---|",
             f"| convolutions and matmuls | {1e3 * cm['fp32_s']:.1f} ({100 * cm['share_fp32']:.0f}%) | "
             f"{1e3 * cm['bf16_s']:.1f} | {_gain(cm['gain'])} |",
             f"| the rest (autocast's casts included) | {1e3 * rest['fp32_s']:.1f} | {1e3 * rest['bf16_s']:.1f} | "
             f"{_gain(rest['gain'])} |",
             f"| all ops | {1e3 * o['fp32_s']:.1f} | {1e3 * o['bf16_s']:.1f} | {o['ratio']:.2f}× |",
             f"| oracle: every op in its faster precision, no casts | {1e3 * o['fp32_s']:.1f} | "
             f"{1e3 * o['oracle_s']:.1f} | {o['oracle_ratio']:.2f}× |", ""]
    if o["oracle_ratio"] < target:
        text = (f"No choice of precision per op reaches {target}× with these kernels: the best, {o['oracle_ratio']:.2f}×, "
                "ignores the casts a mixed choice needs and the step's Python and autograd time.")
    else:
        text = (f"A choice of precision per op could reach {o['oracle_ratio']:.2f}× of op time (an upper bound: it "
                "ignores the casts a mixed choice needs and the step's Python and autograd time).")
    req, mm = o["required_conv_matmul_gain"], o["matmul"]
    if req is None:
        text += (f" The rest of the ops at their oracle time ({1e3 * rest['oracle_s']:.1f} ms) already exceed "
                 f"the fp32 op time over {target}, so no speed-up of the convolutions and matmuls could reach it.")
    else:
        text += (f" For {target}× with the rest at its oracle time ({1e3 * rest['oracle_s']:.1f} ms), the "
                 f"convolutions and matmuls would have to gain {req:.2f}× on average; they gain "
                 f"{_gain(cm['gain'])} here, and {100 * o['conv_matmul_share_reaching_required']:.0f}% of their fp32 "
                 f"time is in ops that gain {req:.2f}× or more. A {mm['n']}² matmul, the shape these kernels suit "
                 f"best, gains {mm['gain']:.2f}× on this machine.")
    lines.append(text)
    if o["slower_in_bf16"]:
        lines += ["", "Ops that bf16 slows down most: " + "; ".join(
            f"`{r['op']}` {1e3 * r['fp32_s']:.2f} -> {1e3 * r['bf16_s']:.2f} ms" for r in o["slower_in_bf16"][:3]) + "."]
    return lines


def _mm_share(r: dict) -> float:
    """The matmul-like ops' share of a step: of its op time (the op timer), or of its profiled
    self time in records from before section 4 used the op timer."""
    return r["matmul_like_share"] if "matmul_like_share" in r else r["matmul_like_share_of_self_time"]


def flops(rec: dict, out: Path, plots: list[str]) -> tuple[list[str], dict]:
    lines, targets = _section_head(rec), {}
    if "error" in rec:
        return lines, targets
    res = rec["result"]
    lines += ["| precision | matmul peak GFLOP/s (n) | GFLOP/step | step ms median [IQR] | achieved GFLOP/s | "
              "fraction of peak | matmul-like share of step time | minor page faults / step |",
              "|---|---|---|---|---|---|---|---|"]
    for prec, r in res["by_precision"].items():
        pk = res["peak"][prec]
        fl = f"{r['faults_per_step']:.0f}" if "faults_per_step" in r else "not recorded"
        lines.append(f"| {prec} | {pk['flops_per_s'] / 1e9:.0f} ({pk['n']}²) | {r['flops_per_step'] / 1e9:.2f} | "
                     f"{_ms(r['step_s'])} | {r['achieved_flops_per_s'] / 1e9:.1f} | {100 * r['fraction_of_peak']:.1f}% | "
                     f"{100 * _mm_share(r):.0f}% | {fl} |")
    if "malloc" in res:
        faults = {p: r["faults_per_step"] for p, r in res["by_precision"].items() if "faults_per_step" in r}
        fp32 = res["by_precision"].get("fp32", {}).get("step_s", {}).get("median", 0.0)
        lines += _fault_check(res["malloc"], faults, fp32)
    bf = res["by_precision"].get("bf16")
    if bf:
        top = ", ".join(f"{k} {v:.0f} ms" for k, v in bf["top_ops"][:5])
        lines += ["", f"bf16 step, largest {'ops by time' if 'matmul_like_share' in bf else 'self-time ops'}: {top}."]
        own = bf.get("matmul_like_fraction_of_peak")
        why = (f"matmul-like ops are {100 * _mm_share(bf):.0f}% of the step time, the rest "
               "elementwise, normalisation and index work with no counted FLOPs")
        if own is not None:
            lines += ["", f"Within their {100 * _mm_share(bf):.0f}% of the bf16 step the "
                          f"matmul-like ops alone run at {bf['matmul_like_flops_per_s'] / 1e9:.0f} GFLOP/s, "
                          f"{100 * own:.0f}% of the peak: the bound on this model's fraction of peak even if "
                          "every other op took no time. Its convolutions and matmuls are small (batch 32 on "
                          "4²-32² maps, 32-128 channels), so per-call overhead, not the multiply units, sets "
                          "their speed."]
            why += f"; those ops alone reach {100 * own:.0f}% of the peak"
        targets["default denoiser training step ≥ 25% of the bf16 matmul peak"] = (
            f"{100 * bf['fraction_of_peak']:.1f}% ({why})", bf["fraction_of_peak"] >= 0.25)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    precs = list(res["by_precision"])
    ax.bar([f"{p} peak" for p in precs], [res["peak"][p]["flops_per_s"] / 1e9 for p in precs], color="grey")
    ax.bar([f"{p} step" for p in precs], [res["by_precision"][p]["achieved_flops_per_s"] / 1e9 for p in precs])
    ax.set_ylabel("GFLOP/s")
    _save(fig, out / "suite_flops.png", plots)
    return lines + [""], targets


def loading(rec: dict, out: Path, plots: list[str]) -> tuple[list[str], dict]:
    lines = _section_head(rec)
    if "error" in rec:
        return lines, {}
    res = rec["result"]
    lines += [f"Training consumes {res['training_steps_per_s']:.2f} batches/s (default denoiser, bf16, step "
              f"{_ms(res['training_step_bf16'])} ms).", "",
              "| loader | batches/s (median) | all repeats | first batch s | headroom vs training |", "|---|---|---|---|---|"]
    for name, r in res["loaders"].items():
        lines.append(f"| {name} | {r['batches_per_s']} | {r['all_rates']} | {r['first_batch_s']} | "
                     f"{r['headroom_vs_training']:.1f}× |")
    return lines + [""], {}


def e2e(rec: dict, out: Path, plots: list[str]) -> tuple[list[str], dict]:
    lines = _section_head(rec)
    if "error" in rec:
        return lines, {}
    res = rec["result"]
    r = res["run"]
    lines.append(f"Command: `{res['command']}`.")
    if "error" in r:
        return lines + ["", f"Run failed: {str(r['error'])[-800:]}", ""], {}

    def f(v: float | None) -> str:
        return "unknown" if v is None else f"{v:.0f} s"

    lines += [f"Source: {r['source']}" + (f" ({r['machine_note']})" if r.get("machine_note") else "") + ".", "",
              "| total | set-up | training | sampling + scoring | steps | steps/s |", "|---|---|---|---|---|---|",
              f"| {f(r['total_s'])} | {f(r['setup_s'])} | {f(r['train_s'])} | {f(r['sample_s'])} | {r['steps']} | "
              f"{'-' if r['steps_per_s'] is None else format(r['steps_per_s'], '.2f')} |", "",
              "Sampling seconds per image (25 steps, guided, bf16): "
              + ", ".join(f"{g} {s:.2f}" for g, s in r["sample_seconds_per_image"].items()) + "."]
    acc = {g: a for g, a in (r.get("accuracy_vs_requested_digit") or {}).items() if a is not None}
    if acc:
        lines.append("The quickstart's classifier agrees with the requested digit in "
                     + ", ".join(f"{100 * a:.0f}% at {g}" for g, a in acc.items()) + " of the samples.")
    imp = res.get("import_s", {})
    if "median" in imp:
        lines.append(f"Importing `lightning_infdiff.quickstart` in a fresh interpreter: {imp['median']:.1f} s "
                     f"(min-max {imp['min']:.1f}-{imp['max']:.1f}).")
    return lines + [""], {}


def _save(fig, path: Path, plots: list[str]) -> None:  # noqa: ANN001
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    plots.append(path.name)


WRITERS = {"subsample": subsample, "sampling": sampling, "precision": precision, "flops": flops, "loading": loading,
           "e2e": e2e}


def write_report(suite: dict, out: Path) -> None:
    """Write ``suite.md`` and the PNGs next to ``suite.json``."""
    m = suite["machine"]
    body, targets, plots = [], {}, []
    for name, rec in suite["sections"].items():
        lines, t = WRITERS[name](rec, out, plots)
        body += lines
        targets.update(t)
    head = [f"# Benchmark suite{' (QUICK smoke run: tiny settings, not figures)' if suite['quick'] else ''}", "",
            f"Command: `{suite['command']}`; wall {suite['wall_s'] / 60:.1f} min (plan: at most "
            f"{suite['estimate_s'] / 60:.1f} min).",
            f"Machine: {m['cpu_model']} ({', '.join(m['cpu_flags']) or 'no avx flags read'}), {m['logical_cores']} "
            f"logical cores ({m['affinity_cores']} usable), torch {m['torch']}, Python {m['python']}; threads per "
            f"section {suite['threads']}; {m['date_utc']} UTC.",
            "Every figure is a median over repeats with its spread ([IQR] and min-max); ratios are between "
            "settings measured in the same run. Load averages per section show how busy the shared machine was.",
            ""]
    if targets:
        head += ["## Targets (issue 10)", "", "| target | measured | status |", "|---|---|---|"]
        head += [f"| {k} | {v} | {_ok(ok)} |" for k, (v, ok) in targets.items()] + [""]
    if plots:
        head += ["Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    (out / "suite.md").write_text("\n".join(head + body) + "\n")
