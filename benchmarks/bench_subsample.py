"""Suite section 1: training-step time and peak memory vs coordinate subsampling, every denoiser.

The ∞-Diff appendix tables 4/5 analogue. One training step = forward + loss + backward + Adam
step on ``N = H·W / rate`` random pixels per image (a fresh subset every step).

* ``sparse_operator_infdiff``: ∞-Diff-sized sparse neural operator (64 channels, 3+3 blocks,
  kernel 7) with inner grid ``res/4`` (16² at 64², 32² at 128²), measured by
  ``bench_sparse.child`` unchanged (3 channels, random targets, MSE);
* every small config of ``bench_denoisers.SMALL_CONFIGS`` (1 channel, 10 classes) through
  ``GaussianProcess(v).loss`` with the sampled ``indices``.

Canvas models, the denoisers whose class sets ``full_canvas_cost`` (the grid models FNO, UNO,
U-ViT and U-Net, which scatter the points onto a canvas with a mask channel, and SIID, whose
point-wise layers run on the canvas), do the same work at every rate: they are measured at
rates 1, 4, 16 only, to show that (honestly) they gain nothing, which leaves the budget for
every denoiser at 128². The operator models run first at each resolution. Each setting runs in
a fresh process, forked from a server with torch and the package imported
(``bench_common.run_forked``); peak memory is the ``ru_maxrss`` high-water mark above the
post-set-up baseline.
"""

from __future__ import annotations

import resource
import time

from bench_common import Budget, child_main, run_forked, spread

CANVAS_RATES = (1, 4, 16)
#: Imported once by the fork server the settings' processes are forked from (see ``run_forked``).
PRELOAD = ("torch", "bench_sparse", "bench_denoisers", "lightning_infdiff.processes")
RATES = (1, 2, 4, 8, 16)


def child(spec: dict) -> dict:
    """One (denoiser, resolution, rate) setting in this fresh process."""
    if spec["name"] == "sparse_operator_infdiff":
        import bench_sparse

        r = bench_sparse.child(dict(spec, quick=spec["quick"]))
        return dict(spec, step=spread(r["times"]), peak_mb=r["peak_mb"], params=r["params"],
                    n_points=r["n_points"], backend=r["backend"])
    import torch
    from bench_denoisers import build, n_params

    from lightning_infdiff.processes import GaussianProcess

    torch.manual_seed(0)
    res, rate, b = spec["res"], spec["rate"], spec["batch"]
    model = build(spec["name"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    process = GaussianProcess(parametrisation="v")
    n = res * res // rate
    x0 = torch.rand(b, 1, res, res) * 2 - 1
    cond = torch.arange(b) % 10
    bf16 = spec["precision"] == "bf16"
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        idx = None if rate == 1 else torch.stack([torch.randperm(res * res)[:n] for _ in range(b)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = process.loss(model, x0, idx, cond=cond).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for i in range(spec["warmup"] + spec["repeats"]):
        t0 = time.perf_counter()
        step()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return dict(spec, step=spread(times), peak_mb=peak, params=n_params(model), n_points=n)


def settings(quick: bool) -> list[dict]:
    """Ordered settings: the ∞-Diff operator first (the issue's target), then the small configs."""
    if quick:
        base = dict(batch=1, repeats=2, warmup=1, precision="fp32", quick=True)
        out = [dict(base, name="sparse_operator_infdiff", res=32, inner=8, rate=r) for r in (1, 8)]
        return out + [dict(base, name="fno", res=16, rate=r) for r in (1, 4)]
    from bench_denoisers import operators_first

    base = dict(repeats=3, warmup=1, precision="fp32", quick=False)
    canvas = canvas_models()
    out = []
    for res in (64, 128):  # every denoiser at 64² before any at 128², so a tight budget cuts 128² first
        out += [dict(base, name="sparse_operator_infdiff", res=res, inner=res // 4, rate=r, batch=4) for r in RATES]
        for name in operators_first():
            rates = CANVAS_RATES if name in canvas else RATES
            out += [dict(base, name=name, res=res, rate=r, batch=2) for r in rates]
    return out


def canvas_models() -> list[str]:
    """Small configs whose cost is the full grid's whatever the rate (``Denoiser.full_canvas_cost``)."""
    from bench_denoisers import SMALL_CONFIGS, config_class

    return [n for n in SMALL_CONFIGS if config_class(n).full_canvas_cost]


def predict(done: list[dict], spec: dict) -> float:
    """Seconds a setting should take, from the same denoiser's rate-1 runs (0 if unknown)."""
    # measured rate-1 rows only: errors and budget skips carry no usable time
    same = [r for r in done if r["name"] == spec["name"] and r["rate"] == 1 and "error" not in r and "wall_s" in r]
    at_res = [r["wall_s"] for r in same if r["res"] == spec["res"]]
    if at_res:
        return at_res[0]
    lower = [r for r in same if r["res"] < spec["res"]]
    return lower[-1]["wall_s"] * (spec["res"] / lower[-1]["res"]) ** 2.6 if lower else 0.0


def run(quick: bool, threads: int, budget_s: float) -> dict:
    """Measure every setting that fits the budget; add speed-up and memory ratios vs rate 1."""
    budget = Budget(budget_s)
    rows: list[dict] = []
    for spec in settings(quick):
        spec = dict(spec, threads=threads)
        guess = predict(rows, spec)
        if not budget.allows(guess):
            rows.append(dict(spec, skipped=f"predicted {guess:.0f} s > {budget.left():.0f} s left of the budget"))
            continue
        r = run_forked("bench_subsample", spec, threads, timeout=max(30.0, budget.left()), preload=PRELOAD)
        rows.append(r)
        print(f"  {spec['name']} {spec['res']}² rate {spec['rate']}: "
              + (r.get("error", "")[-200:] or f"{1e3 * r['step']['median']:.0f} ms, {r['peak_mb']:.0f} MB"), flush=True)
    for r in rows:
        ref = next((q for q in rows if q["name"] == r["name"] and q["res"] == r["res"] and q["rate"] == 1), None)
        if ref and "step" in ref and "step" in r:
            r["speedup_vs_rate1"] = ref["step"]["median"] / r["step"]["median"]
            r["mem_reduction_vs_rate1"] = ref["peak_mb"] / max(r["peak_mb"], 1e-3)
    return {"rows": rows, "canvas_models": [] if quick else canvas_models(), "canvas_rates": list(CANVAS_RATES),
            "method": "median over repeats of one Adam training step; peak = ru_maxrss above set-up baseline, "
                      "fresh process per setting; ratios vs rate 1 of the same denoiser and resolution"}


if __name__ == "__main__":
    child_main(child)
