"""Signals that reach the whole job: ``timeout``, ``kill -- -PGID``, systemd and cluster schedulers
signal every process of a job, DataLoader workers included. The training process must still save
``last`` and exit cleanly: with workers, under DDP, and on SLURM's ``--signal=SIGUSR1@90`` requeue
path (SLURM's environment simulated, ``scontrol`` replaced by a script that records its call)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lightning_infdiff.checkpoint import load_checkpoint
from lightning_infdiff.data import GaussianBlobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fault_subprocess import ROOT, config, losses, wait_for_steps  # noqa: E402

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import lightning as L
    import torch
    torch.set_num_threads(1)
    from lightning_infdiff.cli import InfDiffCLI
    from lightning_infdiff.data import FieldDataModule
    from lightning_infdiff.lit import DiffusionModule

    cfg, out, slow = sys.argv[1:4]

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.is_global_zero:
                with open(out, "a") as f:
                    f.write(f"{trainer.global_step} {float(outputs['loss']).hex()}\\n")
            time.sleep(float(slow))

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if trainer.is_global_zero and not trainer.sanity_checking:
                with open(out + ".val", "a") as f:
                    f.write(f"{trainer.global_step} {batch_idx}\\n")
            time.sleep(float(slow))

    cli = InfDiffCLI(DiffusionModule, FieldDataModule, run=False, save_config_callback=None,
                     args=["--config", cfg])
    cli.trainer.callbacks.append(Rec())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print("FIT RETURNED", cli.trainer.global_step, flush=True)
    """
)


class SlowBlobs(GaussianBlobs):
    """Blobs that take 50 ms each to load: a batch of 4 keeps the worker busy 0.2 s."""

    def load(self, *args, **kwargs):
        import time

        time.sleep(0.05)
        return super().load(*args, **kwargs)


def job_config(tmp_path: Path, name: str, *, workers: int = 1, devices: int = 1, steps: int = 200,
               val_every: int = 1000) -> Path:
    """The fault tests' tiny run with DataLoader workers (and optionally two DDP processes)."""
    path = config(tmp_path, name)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["num_workers"] = workers
    cfg["data"]["source"]["init_args"]["length"] = 400  # long epochs: the kill lands mid-epoch
    cfg["trainer"]["max_steps"] = steps
    cfg["trainer"]["val_check_interval"] = val_every
    cfg["data"]["val_size"] = 40  # ten validation batches of 4
    cfg["trainer"]["default_root_dir"] = str(tmp_path / name)
    if devices > 1:
        cfg["trainer"].update({"devices": devices, "strategy": "ddp"})
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_job(tmp_path: Path, cfg: Path, name: str, env: dict[str, str] | None = None,
              slow: float = 0.2) -> tuple[subprocess.Popen, Path]:
    """Start the run as the leader of its own process group (as a batch job is)."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.losses"
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, str(script), str(cfg), str(out), str(slow)], env=full_env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return proc, out


def group_pids(pgid: int) -> list[int]:
    """Processes of a process group (the training process, its workers, other ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                pass
    return found


def drained(pgid: int, timeout: float = 30.0) -> bool:
    """Whether every process of the group has exited within ``timeout`` (other ranks and workers
    finish their own teardown after the leader)."""
    import time

    end = time.monotonic() + timeout
    while group_pids(pgid):
        if time.monotonic() > end:
            return False
        time.sleep(0.2)
    return True


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError(f"the job did not exit after the signal:\n{log[-3000:]}") from None
    return log


@pytest.mark.slow
def test_sigterm_to_the_whole_group_with_workers_saves_last(tmp_path):
    cfg = job_config(tmp_path, "group")
    proc, out = start_job(tmp_path, cfg, "group")
    wait_for_steps(proc, out, 3)
    assert len(group_pids(proc.pid)) >= 2, "the run should have a DataLoader worker in its group"
    os.killpg(proc.pid, signal.SIGTERM)  # what `timeout`, `kill -- -PGID` and schedulers do
    log = finish(proc)
    assert "killed by signal" not in log, log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    step = load_checkpoint(tmp_path / "group" / "ckpt" / "last.ckpt")["global_step"]
    assert step == losses(out)[-1][0] >= 3
    assert drained(proc.pid), "workers outlived the run"


@pytest.mark.slow
def test_sigterm_while_waiting_for_data_saves_last(tmp_path):
    """Data loading is the slow part (the step takes milliseconds): the signal lands while the
    training process waits for its worker's next batch."""
    cfg = job_config(tmp_path, "data")
    spec = yaml.safe_load(cfg.read_text())
    spec["data"]["source"]["class_path"] = "test_fault_signals.SlowBlobs"
    cfg.write_text(yaml.safe_dump(spec))
    proc, out = start_job(tmp_path, cfg, "data", slow=0.0)
    wait_for_steps(proc, out, 3)
    os.killpg(proc.pid, signal.SIGTERM)
    log = finish(proc)
    assert proc.returncode == 0 and "killed by signal" not in log, log[-3000:]
    step = load_checkpoint(tmp_path / "data" / "ckpt" / "last.ckpt")["global_step"]
    assert step == losses(out)[-1][0] >= 3
    assert drained(proc.pid)


@pytest.mark.slow
def test_sigterm_during_validation_saves_last_at_the_step_reached(tmp_path):
    cfg = job_config(tmp_path, "val", val_every=3)
    proc, out = start_job(tmp_path, cfg, "val")
    val_log = Path(str(out) + ".val")
    wait_for(lambda: val_log.exists() and len(val_log.read_text().splitlines()) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    log = finish(proc)
    assert proc.returncode == 0 and "killed by signal" not in log, log[-3000:]
    step = load_checkpoint(tmp_path / "val" / "ckpt" / "last.ckpt")["global_step"]
    assert step == 3 == losses(out)[-1][0]  # validation ran after step 3; training did not go on
    assert len(val_log.read_text().splitlines()) < 10  # it stopped inside validation
    assert drained(proc.pid)


@pytest.mark.slow
def test_sigterm_to_the_whole_group_under_ddp_saves_last(tmp_path):
    cfg = job_config(tmp_path, "ddp", devices=2)
    proc, out = start_job(tmp_path, cfg, "ddp")
    wait_for_steps(proc, out, 3, timeout=180)
    os.killpg(proc.pid, signal.SIGTERM)
    log = finish(proc, timeout=180)
    assert "killed by signal" not in log, log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "ckpt" / "last.ckpt")
    assert 3 <= ckpt["global_step"] <= losses(out)[-1][0] + 1
    assert drained(proc.pid), "a rank or a worker outlived the run"


@pytest.mark.slow
def test_slurm_requeue_signal_saves_requeues_and_the_requeued_job_resumes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    env = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "infdiff",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cfg = job_config(tmp_path, "slurm", steps=200)
    proc, out = start_job(tmp_path, cfg, "slurm", env=env)
    wait_for_steps(proc, out, 3)
    os.killpg(proc.pid, signal.SIGUSR1)  # sbatch --signal=SIGUSR1@90: every process of the step
    hpc = tmp_path / "slurm" / "hpc_ckpt_1.ckpt"
    wait_for(lambda: hpc.exists() and calls.exists(), proc)
    assert calls.read_text().split() == ["requeue", "4242"]
    os.killpg(proc.pid, signal.SIGTERM)  # SLURM then ends the job to requeue it
    log = finish(proc)
    assert "killed by signal" not in log and proc.returncode == 0, log[-3000:]
    saved = load_checkpoint(hpc)["global_step"]
    assert saved >= 3

    # the requeued job runs the same command: it resumes from the requeue checkpoint by itself
    cfg2 = job_config(tmp_path, "slurm", steps=saved + 2)
    proc2, out2 = start_job(tmp_path, cfg2, "slurm-again", env=env, slow=0.0)
    log2 = finish(proc2)
    assert proc2.returncode == 0 and "FIT RETURNED" in log2, log2[-3000:]
    assert [s for s, _ in losses(out2)] == [saved + 1, saved + 2]


def wait_for(cond, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"timed out:\n{proc.communicate()[0][-3000:]}")
