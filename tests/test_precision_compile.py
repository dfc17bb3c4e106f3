"""The torch.compile option (CompileDenoiser): wiring and numerics with the ``eager`` backend.

Dynamo traces the denoiser (about 15 s of CPU); the ``inductor`` backend is not run here: it
compiles C++ for minutes on CPU (see the issue-8 note for what was measured).
"""

from __future__ import annotations

import pytest
import torch
from test_fault import LossRecorder, tiny_dm, tiny_module, trainer

from lightning_infdiff.callbacks import CompileDenoiser


@pytest.mark.slow
def test_compile_option_is_wired(tmp_path):
    """CompileDenoiser compiles the denoiser in place; the 'eager' backend keeps the numerics, the
    state_dict keys do not change. (The inductor backend is too slow to compile in a CPU test.)"""
    results = []
    for compile_ in (False, True):
        module, rec = tiny_module(), LossRecorder()
        cbs = [rec] + ([CompileDenoiser(backend="eager")] if compile_ else [])
        t = trainer(tmp_path / str(compile_), cbs, max_steps=2, limit_val_batches=0)
        torch.manual_seed(0)
        t.fit(module, datamodule=tiny_dm())
        assert (module.denoiser._compiled_call_impl is not None) is compile_
        results.append((rec.losses, module.state_dict()))
    assert results[0][0] == results[1][0]
    assert list(results[0][1]) == list(results[1][1])  # no "_orig_mod." prefixes
    with pytest.raises(ValueError, match="backend"):
        CompileDenoiser(backend="")
