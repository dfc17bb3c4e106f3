"""Precisions Lightning supports on CPU and gradient accumulation (torch.compile: test_precision_compile.py)."""

from __future__ import annotations

import pytest
import torch
from test_ddp import make_module
from test_fault import LossRecorder, tiny_dm, tiny_module, trainer

from lightning_infdiff.callbacks import NonFiniteGuard


@pytest.mark.parametrize(
    "precision,dtype",
    [("32-true", torch.float32), ("64-true", torch.float64), ("bf16-mixed", torch.float32),
     ("16-mixed", torch.float32)],
)
def test_two_step_fit_in_each_cpu_precision(tmp_path, precision, dtype):
    """Mixed precisions keep fp32 weights (autocast runs the network in half precision).

    On CPU Lightning 2.6 replaces 16-mixed by bf16-mixed with a warning (no fp16 AMP on CPU);
    on CUDA 16-mixed runs fp16 autocast with a GradScaler.
    """
    module, rec, guard = tiny_module(), LossRecorder(), NonFiniteGuard()
    if precision == "16-mixed":
        with pytest.warns(UserWarning, match="fp16 is not supported on CPU. Using `precision='bf16-mixed'`"):
            t = trainer(tmp_path, [rec, guard], max_steps=2, precision=precision, val_check_interval=2)
        assert t.precision == "bf16-mixed"
    else:
        t = trainer(tmp_path, [rec, guard], max_steps=2, precision=precision, val_check_interval=2)
    t.fit(module, datamodule=tiny_dm())
    assert t.global_step == 2 and guard.total_skipped == 0
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in rec.losses)
    assert {p.dtype for p in module.parameters()} == {dtype}
    assert torch.isfinite(t.callback_metrics["val/loss"])


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_all_half_precision_is_refused_clearly(tmp_path, precision):
    t = trainer(tmp_path, [], max_steps=1, precision=precision)
    with pytest.raises(ValueError, match=rf"trainer.precision='{precision}' is not supported.*bf16-mixed"):
        t.fit(tiny_module(), datamodule=tiny_dm())


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """2 micro-batches of 4 with accumulate_grad_batches=2 == one batch of 8 (split-invariant noise).

    Tolerance: float32 sums in another order (rel 1e-5).
    """
    runs = {}
    for name, batch, accumulate in (("big", 8, 1), ("accumulated", 4, 2)):
        module = make_module()
        t = trainer(tmp_path / name, [], max_steps=3, accumulate_grad_batches=accumulate, val_check_interval=50)
        t.fit(module, datamodule=tiny_dm(length=44, batch_size=batch, val_size=8))
        assert t.global_step == 3
        runs[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    changed = False
    for k, v in runs["big"].items():
        torch.testing.assert_close(runs["accumulated"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        changed |= not torch.equal(v, make_module().state_dict()[k])
    assert changed
