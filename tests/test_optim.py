"""Fused AdamW by default, and gradient clipping with it where clipping is exact."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from lightning_infdiff.lit.optim import clip_gradients, default_optimizer, is_fused


def _params(scale: float = 100.0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(3, 4, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]
    for p in ps:
        p.grad = scale * torch.randn(p.shape, generator=g)
    return ps


def _norm(ps: list[torch.nn.Parameter]) -> float:
    return float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ps])))


def test_default_optimizer_is_fused_adamw_on_cpu_and_matches_the_unfused_update() -> None:
    ps = _params()
    opt = default_optimizer(ps)
    assert isinstance(opt, torch.optim.AdamW) and is_fused(opt)
    assert opt.defaults["lr"] == 2e-4 and opt.defaults["weight_decay"] == 0.0
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for t, p in zip(twins, ps, strict=True):
        t.grad = p.grad.clone()
    ref = torch.optim.AdamW(twins, lr=2e-4, weight_decay=0.0)
    for _ in range(3):
        opt.step()
        ref.step()
    for t, p in zip(twins, ps, strict=True):
        torch.testing.assert_close(p, t, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("plugin", [Precision(), MixedPrecision("bf16-mixed", "cpu")])
def test_fused_optimiser_clips_by_norm_and_value_without_a_loss_scale(plugin: Precision) -> None:
    ps = _params()
    assert _norm(ps) > 10.0
    assert clip_gradients(plugin, default_optimizer(ps), 1.0, "norm")
    assert _norm(ps) == pytest.approx(1.0, rel=1e-4)
    ps = _params()
    assert clip_gradients(plugin, default_optimizer(ps), 0.5, "value")
    assert max(float(p.grad.abs().max()) for p in ps) == pytest.approx(0.5)


def test_unfused_or_unclipped_is_left_to_lightning() -> None:
    ps = _params()
    before = _norm(ps)
    plugin = MixedPrecision("bf16-mixed", "cpu")
    assert not clip_gradients(plugin, torch.optim.AdamW(ps, fused=False), 1.0, "norm")
    assert not clip_gradients(plugin, default_optimizer(ps), 0.0, "norm")
    assert _norm(ps) == before


def test_fused_with_a_float16_loss_scaler_clips_the_true_gradients_and_steps_once() -> None:
    """16-mixed (CUDA without bf16): unscale, clip, then the scaler's fused step must not unscale
    again. Reference: the unfused optimiser through the same scaler (Lightning's own path)."""
    runs = {}
    for fused in (True, False):
        ps = _params(scale=1.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.scale(torch.ones(()))  # the loss is scaled before backward (initialises the scale)
        for p in ps:
            p.grad = p.grad * 1024.0  # what backward of a scaled loss leaves
        plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
        opt = torch.optim.AdamW(ps, lr=0.1, weight_decay=0.0, fused=fused or None)
        if fused:
            assert clip_gradients(plugin, opt, 1.0, "norm")
        else:
            scaler.unscale_(opt)
            Precision.clip_gradients(plugin, opt, 1.0)
        assert _norm(ps) == pytest.approx(1.0, rel=1e-4)
        scaler.step(opt)
        scaler.update()
        runs[fused] = [p.detach().clone() for p in ps]
    for a, b in zip(runs[True], runs[False], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fused_with_a_float16_loss_scaler_skips_a_step_with_inf_gradients() -> None:
    ps = _params()
    before = [p.detach().clone() for p in ps]
    ps[0].grad[0, 0] = float("inf")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))
    opt = default_optimizer(ps)
    clip_gradients(MixedPrecision("16-mixed", "cpu", scaler=scaler), opt, 1.0, "norm")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(ps, before, strict=True)) and scaler.get_scale() == 512.0


def test_training_with_bf16_mixed_clips_through_the_fused_optimiser(tmp_path, monkeypatch) -> None:
    import lightning as L
    from test_fault import tiny_dm, tiny_module, trainer

    import lightning_infdiff.lit.module as module_mod

    norms = []

    def spy(plugin, optimizer, clip_val, algorithm):  # noqa: ANN001, ANN202
        done = clip_gradients(plugin, optimizer, clip_val, algorithm)
        norms.append((done, _norm([p for g in optimizer.param_groups for p in g["params"] if p.grad is not None])))
        return done

    class FirstOptimiser(L.Callback):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001, ANN202
            assert is_fused(trainer.optimizers[0])

    monkeypatch.setattr(module_mod, "clip_gradients", spy)
    t = trainer(tmp_path, [FirstOptimiser()], max_steps=3, precision="bf16-mixed", gradient_clip_val=1e-3)
    t.fit(tiny_module(), datamodule=tiny_dm())
    assert len(norms) == 3 and all(done for done, _ in norms)
    assert all(n <= 1e-3 * (1 + 1e-4) for _, n in norms)
