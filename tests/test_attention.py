"""The CPU attention dispatcher computes softmax(q kᵀ/√d + bias) v whichever kernel it picks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_infdiff.denoisers.layers import attention as attention_mod
from lightning_infdiff.denoisers.layers.attention import PLAIN_MAX_TOKENS, attention


def _closed_form(q, k, v, bias=None):  # noqa: ANN001, ANN202 - float64 reference
    s = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    if bias is not None:
        s = s + bias.double()
    return torch.softmax(s, -1) @ v.double()


@pytest.mark.parametrize("length", [1, 16, PLAIN_MAX_TOKENS, PLAIN_MAX_TOKENS + 1])
def test_values_and_gradients_match_the_closed_form(length: int) -> None:
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, 3, length, 8, generator=g, requires_grad=True) for _ in range(3))
    out = attention(q, k, v)
    ref = _closed_form(q, k, v)
    assert out.dtype == torch.float32 and out.shape == (2, 3, length, 8)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w.double()).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-5)


def test_additive_bias_and_masked_keys() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 4, generator=g, requires_grad=True) for _ in range(3))  # the training path
    bias = torch.randn(1, 2, 12, 12, generator=g)
    keep = torch.rand(2, 1, 1, 12, generator=g) > 0.5
    keep[..., 0] = True
    bias = bias.masked_fill(~keep, float("-inf"))
    out = attention(q, k, v, bias)
    torch.testing.assert_close(out.double(), _closed_form(q, k, v, bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), atol=1e-5, rtol=1e-5)
    # a masked key has no influence: changing its value changes nothing
    v2 = v + 100.0 * (~keep).view(2, 1, 12, 1)
    torch.testing.assert_close(attention(q, k, v2, bias), out)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, 2, 16, 32, generator=g, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), attention(q, k, v), atol=3e-2, rtol=3e-2)


def test_long_sequences_and_sampling_use_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = F.scaled_dot_product_attention

    def fused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[0].shape[-2])
        return original(*args, **kwargs)

    monkeypatch.setattr(attention_mod.F, "scaled_dot_product_attention", fused)
    x = torch.randn(1, 1, PLAIN_MAX_TOKENS + 1, 4, requires_grad=True)
    attention(x, x, x)
    y = torch.randn(1, 1, PLAIN_MAX_TOKENS, 4, requires_grad=True)
    attention(y, y, y)
    assert calls == [PLAIN_MAX_TOKENS + 1]
    attention(y.detach(), y.detach(), y.detach())  # no gradients (sampling): the fused kernel
    with torch.no_grad():
        attention(y, y, y)
    assert calls == [PLAIN_MAX_TOKENS + 1, PLAIN_MAX_TOKENS, PLAIN_MAX_TOKENS]
