"""Preemption and kills of a real training process: SIGTERM saves and exits cleanly, SIGKILL
leaves a loadable ``last.ckpt``, and resuming either reproduces the uninterrupted loss curve
bit for bit (CPU, one thread, same code: every quantity is restored or a pure function of the
step; see :class:`lightning_infdiff.callbacks.StepSeed`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_infdiff.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
N_STEPS = 12

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from test_fault_subprocess import fit_run
    fit_run(*sys.argv[1:6])
    """
)


def fit_run(cfg: str, out: str, max_steps: str, slow: str, ckpt: str) -> int:
    """Fit from a config (resuming from ``ckpt`` unless it is ``-``), appending ``step loss`` lines to ``out``."""
    import lightning as L

    from lightning_infdiff.cli import InfDiffCLI
    from lightning_infdiff.data import FieldDataModule
    from lightning_infdiff.lit import DiffusionModule

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with open(out, "a") as f:
                f.write(f"{trainer.global_step} {float(outputs['loss']).hex()}\n")
            time.sleep(float(slow))

    cli = InfDiffCLI(DiffusionModule, FieldDataModule, run=False, save_config_callback=None,
                     args=["--config", cfg, "--trainer.max_steps", max_steps])
    cli.trainer.callbacks.append(Rec())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=None if ckpt == "-" else ckpt)
    print("FIT RETURNED", cli.trainer.global_step, flush=True)
    return cli.trainer.global_step


def config(tmp_path: Path, name: str) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "val_check_interval": 5,
            "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "logger": False, "gradient_clip_val": 1.0,
            "callbacks": [
                {"class_path": "lightning_infdiff.callbacks.AtomicModelCheckpoint",
                 "init_args": {"dirpath": str(tmp_path / name / "ckpt"), "every_n_train_steps": 1,
                               "save_last": True, "save_top_k": 0}},
                {"class_path": "lightning_infdiff.callbacks.EMA", "init_args": {"half_life_images": 50}},
                {"class_path": "lightning_infdiff.callbacks.StepSeed"},
                {"class_path": "lightning_infdiff.callbacks.NonFiniteGuard"},
            ],
        },
        "model": {
            "denoiser": {
                "class_path": "lightning_infdiff.denoisers.SparseNeuralOperator",
                "init_args": {"train_resolution": 16, "channels": 8, "depth": 1, "kernel_size": 3,
                              "inner_resolution": 8, "inner_channels": 8, "channel_mult": [1, 2],
                              "num_res_blocks": 1, "attention_resolutions": [], "emb_dim": 32,
                              "head_channels": 8, "dropout": 0.1, "dropout_resolution": 8},
            },
            "val_logsnr_bins": 2,
            "lr_scheduler": {"class_path": "lightning_infdiff.lit.WarmupCosine", "init_args": {"warmup_steps": 2}},
        },
        "data": {
            "source": {"class_path": "lightning_infdiff.data.GaussianBlobs", "init_args": {"length": 36, "channels": 1}},
            "resolution": 16, "batch_size": 4, "subsample_rate": 2, "num_workers": 0, "val_size": 4,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(tmp_path: Path, name: str, slow: float, ckpt: str = "-") -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.losses"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(config(tmp_path, name.split("-")[0])), str(out), str(N_STEPS),
         str(slow), ckpt],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return proc, out


def losses(path: Path) -> list[tuple[int, float]]:
    return [(int(a), float.fromhex(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def wait_for_steps(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if out.exists() and len(out.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("training did not reach the first steps in time")


def run_here(tmp_path: Path, name: str, ckpt: str = "-") -> Path:
    """The same run in this process (one thread, like the subprocesses)."""
    out = tmp_path / f"{name}.losses"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert fit_run(str(config(tmp_path, name.split("-")[0])), str(out), str(N_STEPS), "0", ckpt) == N_STEPS
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
def test_sigterm_and_sigkill_then_resume_reproduce_the_uninterrupted_run(tmp_path):
    term, term_out = start(tmp_path, "term", 0.3)
    kill, kill_out = start(tmp_path, "kill", 0.3)
    ref_out = run_here(tmp_path, "ref")  # while the subprocesses start
    wait_for_steps(term, term_out, 3)
    term.send_signal(signal.SIGTERM)
    wait_for_steps(kill, kill_out, 4)
    kill.send_signal(signal.SIGKILL)
    term_log, _ = term.communicate(timeout=120)
    kill.communicate(timeout=120)
    assert term.returncode == 0, term_log
    assert "FIT RETURNED" not in term_log  # Lightning exits through SIGTERMException, not a normal return
    assert kill.returncode == -signal.SIGKILL

    # SIGTERM: the step in flight finished, `last` was saved at it and the process exited
    term_ckpt = tmp_path / "term" / "ckpt" / "last.ckpt"
    done = losses(term_out)
    assert load_checkpoint(term_ckpt)["global_step"] == done[-1][0] < N_STEPS
    # SIGKILL: whatever the kill interrupted (possibly a checkpoint write), `last` is loadable
    kill_ckpt = tmp_path / "kill" / "ckpt" / "last.ckpt"
    kill_step = load_checkpoint(kill_ckpt)["global_step"]
    assert 1 <= kill_step <= losses(kill_out)[-1][0] < N_STEPS

    # resume both (in this process: the resumed run need not be the process that was killed)
    term_resumed = run_here(tmp_path, "term-resume", str(term_ckpt))
    kill_resumed = run_here(tmp_path, "kill-resume", str(kill_ckpt))
    reference = losses(ref_out)
    assert [s for s, _ in reference] == list(range(1, N_STEPS + 1))
    assert done == reference[: len(done)]
    assert losses(term_resumed) == reference[len(done):]
    assert losses(kill_resumed) == reference[kill_step:]
    # and the final weights agree bit for bit
    final = [load_checkpoint(tmp_path / n / "ckpt" / "last.ckpt")["state_dict"] for n in ("ref", "term", "kill")]
    for k, v in final[0].items():
        assert torch.equal(v, final[1][k]) and torch.equal(v, final[2][k]), k
