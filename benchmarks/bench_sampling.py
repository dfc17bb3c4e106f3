"""Sampling cost against resolution: seconds per image per network evaluation, 32² to 256².

One image (batch 1) is sampled with DDIM at each grid by the main job's denoiser and, with
``--models``, by other families' configurations (``configs/denoisers/<name>.yaml``, 1 channel);
the time of ``steps`` solver steps (``steps + 1`` evaluations) is a median over repeats. The
growth exponent ``p`` of ``time ∝ pixels^p`` is fitted from 64² to 256²: a model that works at
the pixels' resolution grows at least linearly (``p ≥ 1``), the operators, whose inner grid stays
fixed, grow slower.

    python benchmarks/bench_sampling.py --models sparse_operator,fno,uno --out benchmarks/results/sampling.md
"""

from __future__ import annotations

import harness
import torch


def models(quick: bool, names: list[str]) -> dict:
    import yaml

    out = {"main job's denoiser": lambda: harness.main_denoiser(quick)}
    for n in names:
        cfg = yaml.safe_load((harness.ROOT / "configs" / "denoisers" / f"{n}.yaml").read_text())["model"]["denoiser"]
        out[n] = lambda cfg=cfg: harness.instantiate(cfg, in_channels=1)
    return out


def exponent(per_nfe: dict[int, float]) -> float | None:
    """Growth exponent over pixels from the grids of 64² and above (all grids if fewer than two)."""
    res = [r for r in per_nfe if r >= 64] if sum(r >= 64 for r in per_nfe) >= 2 else list(per_nfe)
    return harness.fit_exponent([r * r for r in res], [per_nfe[r] for r in res]) if len(res) >= 2 else None


def per_eval(model: torch.nn.Module, grids, steps: int = 2, quick: bool = False, name: str = "", device: str = "cpu",
             precision: str = "32") -> dict[int, float]:
    """Median seconds per network evaluation of DDIM-sampling one image at each grid on ``device``
    (the network in ``precision``, as ``infdiff sample --precision``)."""
    from lightning_infdiff.precision import inference_autocast
    from lightning_infdiff.samplers import sample

    process, model, out = harness.main_process(), model.to(device), {}
    for res in grids:
        def call(res: int = res) -> None:
            with inference_autocast(device, precision):
                sample(process, model, (res, res), [0], channels=1, steps=steps, sampler="ddim",
                       cond=torch.tensor([3], device=device))
            if device != "cpu":
                torch.cuda.synchronize(device)

        out[res] = harness.timed({"s": call}, repeats=2 if quick or res >= 128 else 3)["s"] / (steps + 1)
        print(f"  {name} {res}²: {1e3 * out[res]:.1f} ms per evaluation", flush=True)
    return out


def run(quick: bool, names: list[str] | None = None, steps: int = 2) -> str:
    torch.manual_seed(0)
    grids = (8, 16) if quick else (32, 64, 128, 256)
    rows = []
    for name, make in models(quick, names or []).items():
        per_nfe = per_eval(make().eval(), grids, steps, quick, name)
        p = exponent(per_nfe)
        rows.append([name, *(f"{1e3 * per_nfe[r]:.1f}" for r in grids), "-" if p is None else f"{p:.2f}"])
    head = ["denoiser", *(f"{r}² ms/eval" for r in grids), "exponent (pixels)"]
    return (f"DDIM, {steps} steps ({steps + 1} evaluations), batch 1, fp32; median over repeats (3 below 128², 2 "
            f"from 128²).\n\n{harness.table(head, rows)}\n")


if __name__ == "__main__":
    ap = harness.parser(__doc__)
    ap.add_argument("--models", default="", help="comma-separated names of configs/denoisers/<name>.yaml")
    args = ap.parse_args()
    harness.setup(args)
    names = [n for n in args.models.split(",") if n]
    harness.report("Sampling cost against resolution", run(args.quick, names), args.out)
