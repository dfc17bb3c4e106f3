"""CUDA checks (marker ``cuda``): run where CUDA is available, skipped with the reason elsewhere.

``python benchmarks/gpu_check.py`` runs them on a GPU machine (or ``pytest -m cuda tests/test_cuda.py``).
Every tiny denoiser of ``test_denoisers_family`` plus a tiny sparse operator runs forward and backward
on CUDA and is compared with the same weights and inputs on CPU; samples for the same seeds are
compared across devices; the default denoiser is compiled with ``torch.compile``. The tolerances:

* fp32 with TF32 off: 1e-4 of the reference's largest magnitude, elementwise. The maths is the same;
  only the kernels' reduction order (cuBLAS, cuDNN, cuFFT, SDPA) differs, a few fp32 ulps per op.
* bf16 autocast against CPU fp32: relative L2 error 3e-2 for outputs, 5e-2 for gradients. bf16 keeps
  8 significant bits (rounding 2^-9 = 2e-3 per op), compounded over a dozen layers; the backward pass
  goes through the network twice.
* samples: 1e-4 absolute (images in [-1, 1]): fp32 networks differing by ulps, 8 DDIM steps.
* ``torch.compile`` against eager, fp32: 1e-3 of the largest magnitude: inductor fuses and reorders
  reductions (and its norms use rsqrt), which moves results by more ulps than eager CUDA kernels.

Dropout is off (``eval``): CUDA and CPU draw different random numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from test_denoisers_family import TINY, K, _tiny_sparse_operator, make_inputs, randomise_zeros

from lightning_infdiff.operators import HeatKernelOperator
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.samplers import sample

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: run on a GPU machine (python benchmarks/gpu_check.py)")]

MODELS = {**TINY, "sparse_operator": _tiny_sparse_operator}
GRID = (16, 16)
FP32, BF16_OUT, BF16_GRAD, SAMPLES, COMPILED = 1e-4, 3e-2, 5e-2, 1e-4, 1e-3


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 matmuls and convolutions keep 10 mantissa bits: off, so fp32 means fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def forward_backward(model: torch.nn.Module, device: str, frac: float, bf16: bool = False):  # noqa: ANN201
    """Output and the flattened parameter gradients of ``mean(out²)``, both fp32 on CPU."""
    model = model.to(device).eval()
    model.zero_grad(set_to_none=True)
    values, coords, _ = make_inputs(GRID, frac=frac)
    lam, cond = torch.tensor([-2.0, 3.0]), torch.tensor([1, K])
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        out = model(values.to(device), coords.to(device), lam.to(device), GRID, cond.to(device))
    out.float().square().mean().backward()
    return out.detach().float().cpu(), grads(model)


def grads(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter's gradient (zeros where none), flattened, fp32 on CPU."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float().cpu()
                      for p in model.parameters()])


def assert_close_to_max(got: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    torch.testing.assert_close(got, ref, rtol=rel, atol=rel * ref.abs().max().item())


def rel_l2(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).norm() / ref.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("frac", [1.0, 0.5], ids=["full", "half"])
@pytest.mark.parametrize("name", list(MODELS))
def test_denoiser_fp32_on_cuda_matches_cpu(name: str, frac: float) -> None:
    torch.manual_seed(0)
    model = randomise_zeros(MODELS[name]())
    ref_out, ref_grad = forward_backward(copy.deepcopy(model), "cpu", frac)
    out, grad = forward_backward(model, "cuda", frac)
    assert_close_to_max(out, ref_out, FP32)
    assert_close_to_max(grad, ref_grad, FP32)


@pytest.mark.parametrize("name", list(MODELS))
def test_denoiser_bf16_autocast_on_cuda_matches_cpu_fp32(name: str) -> None:
    torch.manual_seed(0)
    model = randomise_zeros(MODELS[name]())
    ref_out, ref_grad = forward_backward(copy.deepcopy(model), "cpu", 0.5)
    out, grad = forward_backward(model, "cuda", 0.5, bf16=True)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert rel_l2(out, ref_out) <= BF16_OUT
    assert rel_l2(grad, ref_grad) <= BF16_GRAD


@pytest.mark.parametrize("operator", [None, HeatKernelOperator(width=0.015625, inverse_snr=0.05)],
                         ids=["plain", "mollified"])
def test_samples_on_cuda_equal_cpu_samples_for_the_same_seeds(operator) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = randomise_zeros(_tiny_sparse_operator()).eval()
    process = GaussianProcess(operator=operator, parametrisation="v")
    seeds, labels = [3, 11, 42], [0, 1, 2]

    def draw(device: str) -> torch.Tensor:
        with torch.no_grad():
            return sample(process, model.to(device), (20, 12), seeds, channels=1, steps=8,
                          cond=torch.tensor(labels, device=device), guidance_scale=2.0).cpu()

    ref = draw("cpu")
    torch.testing.assert_close(draw("cuda"), ref, rtol=0, atol=SAMPLES)
    assert (ref[0] - ref[1]).abs().max() > 1e-2  # the seeds give different samples


def test_torch_compile_of_the_default_denoiser_matches_eager() -> None:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/denoisers/sparse_operator.yaml").read_text())
    from lightning_infdiff.denoisers import SparseNeuralOperator

    torch.manual_seed(0)
    model = randomise_zeros(SparseNeuralOperator(in_channels=1, num_classes=10,
                                                 **cfg["model"]["denoiser"]["init_args"])).cuda().eval()
    grid = (32, 32)
    values, coords, _ = make_inputs(grid, batch=4)
    args = (values.cuda(), coords.cuda(), torch.tensor([-3.0, 0.0, 2.0, 5.0], device="cuda"), grid,
            torch.tensor([0, 3, 7, 10], device="cuda"))
    ref = model(*args)
    ref.square().mean().backward()
    ref_grad = grads(model)
    model.zero_grad(set_to_none=True)
    model.compile()  # inductor, as CompileDenoiser does
    out = model(*args)
    out.square().mean().backward()
    assert model._compiled_call_impl is not None
    assert_close_to_max(out.detach().cpu(), ref.detach().cpu(), COMPILED)
    assert_close_to_max(grads(model), ref_grad, COMPILED)
