"""Suite section 2: sampling time per image vs resolution, every denoiser x every sampler.

``lightning_infdiff.samplers.sample`` with the quickstart's process (heat-kernel mollifier,
v-prediction), fp32, eval mode, one image, conditional without guidance, and only a few solver
steps: what is reported is seconds per image per *network evaluation* (``steps + 1`` calls), the
quantity that multiplies with any step count. The samplers' own work (noise draws, the
mollifier, the update) is included, so their differences show in the same run (the three
samplers of one setting are timed round-robin, after one untimed one-step call: the network's
first-call costs are the same for every sampler). Repeats: three below 128², two from 128² on, where one
call of the slowest grid model takes seconds. The growth exponent ``p`` of
``time ∝ pixels^p`` is fitted by least squares in log-log space over all resolutions and over
64²..256² (the issue's target range). Settings predicted to overrun the budget are skipped.
"""

from __future__ import annotations

import math

import torch
from bench_common import (
    Budget,
    default_denoiser,
    default_process,
    fit_exponent,
    interleaved,
    spread,
)

from lightning_infdiff.samplers import sample

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp_2m")


def models(quick: bool) -> dict:
    """Name -> zero-argument constructor (the default denoiser first)."""
    if quick:
        from lightning_infdiff.denoisers.sparse_operator import SparseNeuralOperator

        return {"sparse_operator_tiny": lambda: SparseNeuralOperator(
            in_channels=1, num_classes=10, train_resolution=16, channels=8, depth=1, kernel_size=3,
            inner_resolution=8, inner_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
            head_channels=8, emb_dim=16)}
    from bench_denoisers import build, operators_first

    out = {"default (quickstart SNO)": default_denoiser}
    # the operator models first: the budget must not run out before their 256² (the target)
    for name in operators_first():
        out[name] = lambda name=name: build(name)
    return out


#: Growth of one network evaluation per doubling of the side assumed at least (pixels^1.3).
MIN_SIDE_EXPONENT = 2.6


def predict_nfe_s(by_res: dict, res: int) -> float:
    """Seconds of one network evaluation at ``res``, extrapolated from the measured resolutions.

    ``time ∝ side^p`` with ``p`` the growth between the last two measured sides, but at least
    ``MIN_SIDE_EXPONENT``: attention models grow faster at 128²-256² than below (the EPYC's
    U-ViT with a DWT stem went 8.6x from 64² to 128² and 14x from 128² to 256²), so one fixed
    exponent under-predicts them and the budget overran. ``0.0`` with nothing measured.
    """
    # the slowest sampler's median per measured side below res
    t = {int(r): max(v["median"] for v in row["per_nfe"].values())
         for r, row in by_res.items() if "per_nfe" in row and int(r) < res}
    if not t:
        return 0.0
    done = sorted(t)
    p = MIN_SIDE_EXPONENT
    if len(done) >= 2:
        a, b = done[-2], done[-1]
        p = max(p, math.log(t[b] / t[a]) / math.log(b / a))
    return t[done[-1]] * (res / done[-1]) ** p


def run(quick: bool, threads: int, budget_s: float) -> dict:
    """Time every (resolution, denoiser) that fits, resolutions ascending so cheap ones go first."""
    torch.manual_seed(0)
    budget = Budget(budget_s)
    process = default_process()
    resolutions = (8, 16) if quick else (32, 64, 128, 256)
    steps = 1 if quick else 2

    def repeats_at(res: int) -> int:
        return 2 if quick or res >= 128 else 3

    built = {name: make().eval() for name, make in models(quick).items()}
    rows: dict[str, dict] = {name: {"by_res": {}} for name in built}
    for res in resolutions:
        for name, model in built.items():
            prev = rows[name]["by_res"]
            last = max((int(r) for r in prev if "per_nfe" in prev[r]), default=None)
            nfe = (steps + 1) * repeats_at(res) * len(SAMPLER_NAMES) + 2  # + the warm-up call
            guess = predict_nfe_s(prev, res) * nfe
            if prev and last is None:
                prev[res] = {"skipped": "smaller resolution failed or was skipped"}
                continue
            if not budget.allows(guess):
                prev[res] = {"skipped": f"predicted {guess:.0f} s > {budget.left():.0f} s left of the budget"}
                continue

            def call(s: str, model=model, res=res, n: int = steps) -> None:
                sample(process, model, (res, res), [0], channels=1, steps=n, sampler=s, cond=torch.tensor([3]))

            try:
                # untimed, one solver step (2 evaluations instead of 3, 5% of a 256² setting):
                # the network's and the sampler's first-call costs at this resolution
                call(SAMPLER_NAMES[0], n=1)
                times = interleaved({s: (lambda s=s: call(s)) for s in SAMPLER_NAMES}, repeats_at(res), warmup=0)
            except Exception as err:  # noqa: BLE001 - reported, not hidden
                prev[res] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
                continue
            prev[res] = {"per_nfe": {s: spread([t / (steps + 1) for t in ts]) for s, ts in times.items()}}
            print(f"  {name} {res}²: " + ", ".join(f"{s} {1e3 * v['median']:.1f} ms/NFE"
                                                  for s, v in prev[res]["per_nfe"].items()), flush=True)
    for name, row in rows.items():
        ok = [r for r in resolutions if "per_nfe" in row["by_res"].get(r, {})]
        row["exponent"] = {s: fit_exponent([r * r for r in ok], [row["by_res"][r]["per_nfe"][s]["median"] for r in ok])
                           for s in SAMPLER_NAMES}
        hi = [r for r in ok if r >= 64]
        row["exponent_64_256"] = {
            s: fit_exponent([r * r for r in hi], [row["by_res"][r]["per_nfe"][s]["median"] for r in hi])
            for s in SAMPLER_NAMES} if len(hi) >= 2 else None
        row["params"] = sum(p.numel() for p in built[name].parameters())
    return {"denoisers": rows, "resolutions": list(resolutions), "steps": steps,
            "repeats": {str(r): repeats_at(r) for r in resolutions},
            "samplers": list(SAMPLER_NAMES), "images": 1, "precision": "fp32",
            "method": f"seconds per image per network evaluation, {steps} solver steps = {steps + 1} evaluations, "
                      "batch 1, median over repeats (3 below 128², 2 from 128²; samplers interleaved after one untimed one-step call); "
                      "quickstart process (heat-kernel mollifier)"}

