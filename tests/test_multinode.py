"""Two nodes x one process, launched as the README launches them: ``torchrun --nnodes 2 ...
-m lightning_infdiff fit`` (gloo on localhost), against one process with the same global batch.

For the comparison the training noise must not depend on how the global batch is split (see
tests/multinode_support.py); everything else is the production path: LightningCLI, the
DataModule's per-rank shards, DDP's gradient all-reduce, the checkpoint callbacks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

TESTS = Path(__file__).resolve().parent
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tmp: Path, name: str, batch_size: int) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "precision": "32-true", "max_steps": STEPS, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
            "log_every_n_steps": 1,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp / name / "runs"), "name": "t"}},
            "callbacks": [
                {"class_path": "lightning_infdiff.callbacks.AtomicModelCheckpoint", "init_args": {"save_last": True}},
                {"class_path": "multinode_support.PerExampleNoise"},
                {"class_path": "multinode_support.RecordRank", "init_args": {"out": str(tmp / name)}},
            ],
        },
        "model": {
            "denoiser": {"class_path": "lightning_infdiff.denoisers.SparseNeuralOperator", "init_args": {
                "train_resolution": 16, "channels": 8, "depth": 1, "kernel_size": 3, "inner_resolution": 8,
                "inner_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
                "emb_dim": 32, "head_channels": 8, "dropout": 0.0}},
            "lr_scheduler": {"class_path": "lightning_infdiff.lit.WarmupConstant", "init_args": {"warmup_steps": 1}},
        },
        "samples": {"every_n_val": 0},
        "data": {"source": {"class_path": "lightning_infdiff.data.GaussianBlobs", "init_args": {"length": 44, "channels": 1}},
                 "resolution": 16, "batch_size": batch_size, "subsample_rate": 2, "num_workers": 0, "val_size": 8},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_two_nodes_with_torchrun_match_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "lightning_infdiff", "fit", "--config", str(config(tmp_path, "one", 8)),
                          "--trainer.devices", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    cfg, port = config(tmp_path, "two", 4), free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "lightning_infdiff", "fit", "--config", str(cfg),
         "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)

    single = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world_size"], r["num_nodes"], r["node_rank"]) for r in ranks] == [(2, 2, 0), (2, 2, 1)]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each node trained on its own shard
    # the nodes' mean loss is the single process's loss on the same global batch; tolerance: float32
    # sums in another order (one batch of 8 vs two of 4 and a gloo all-reduce), amplified a little by Adam
    mean = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)]
    assert len(mean) == STEPS and mean == pytest.approx(single["losses"], rel=1e-5, abs=1e-7)
    w1, w2a, w2b = (torch.load(tmp_path / n / f"rank{r}.pt") for n, r in (("one", 0), ("two", 0), ("two", 1)))
    for k, v in w1.items():
        assert torch.equal(w2a[k], w2b[k]), f"the nodes disagree on {k}"
        torch.testing.assert_close(w2a[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # one last.ckpt, written by global rank 0
    ckpts = sorted((tmp_path / "two" / "runs").rglob("last*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt"]
