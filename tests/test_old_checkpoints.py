"""Checkpoints from before the LightningModule only wired still load, sample the same and resume.

The files in tests/data/old_checkpoints were written by commit 7df682e (see the README there).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_infdiff.checkpoint import load_checkpoint, load_module, upgrade_config
from lightning_infdiff.cli import InfDiffCLI
from lightning_infdiff.data import FieldDataModule
from lightning_infdiff.lit import DiffusionModule, WarmupConstant, WarmupCosine

OLD = Path(__file__).parent / "data" / "old_checkpoints"


@pytest.mark.parametrize("name", ["operator", "autoencoder"])
def test_old_checkpoint_loads_and_draws_the_same_samples(name):
    module = load_module(OLD / f"{name}_7df682e.ckpt")
    reference = torch.load(OLD / "samples_7df682e.pt", weights_only=True)
    key = "op" if name == "operator" else "ae"
    torch.manual_seed(0)
    torch.testing.assert_close(module.generate([16, 16], [0, 1], steps=3), reference[key], rtol=0, atol=1e-5)
    torch.testing.assert_close(module.generate([16, 32], [5], steps=2), reference[f"{key}_wide"], rtol=0, atol=1e-5)


def test_old_arguments_are_upgraded():
    op = load_checkpoint(OLD / "operator_7df682e.ckpt")["hyper_parameters"]
    new = upgrade_config({k: v for k, v in op.items() if k != "_instantiator"})
    assert new["lr_scheduler"] == {"class_path": "lightning_infdiff.lit.WarmupConstant", "init_args": {"warmup_steps": 3}}
    assert new["sampling"] == {"sampler": "dpmpp_2m", "steps": 3, "guidance_scale": 1.0}
    assert not {"num_samples", "sample_grids", "sample_every_n_val", "sample_seed", "lr_schedule"} & set(new)
    ae = load_checkpoint(OLD / "autoencoder_7df682e.ckpt")["hyper_parameters"]
    new = upgrade_config({k: v for k, v in ae.items() if k != "_instantiator"})
    assert new["lr_scheduler"]["init_args"] == {"warmup_steps": 3, "min_ratio": 0.2}
    assert new["denoiser"]["init_args"]["prior_weight"] == 0.5 and "latent_prior_weight" not in new
    assert upgrade_config(new) == new  # today's configuration is left as it is
    module = load_module(OLD / "autoencoder_7df682e.ckpt")
    assert module.denoiser.prior_weight == 0.5 and isinstance(module.sampling.steps, int)


def test_old_run_resumes_with_todays_configuration(tmp_path):
    """The old run's config in today's terms resumes from its checkpoint (no 'another model' refusal)."""
    cfg = yaml.safe_load((OLD / "operator_7df682e.yaml").read_text())
    model = cfg["model"]
    model["lr_scheduler"] = {"class_path": "lightning_infdiff.lit.WarmupConstant",
                             "init_args": {"warmup_steps": model.pop("warmup_steps")}}
    model.pop("lr_schedule")
    model["sampling"] = {"guidance_scale": model.pop("guidance_scale"), "steps": model.pop("sample_steps")}
    cfg["samples"] = {"num_samples": model.pop("num_samples"), "grids": model.pop("sample_grids")}
    cfg["trainer"]["max_steps"] = 4
    cfg["trainer"]["val_check_interval"] = 4
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    path = tmp_path / "today.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = InfDiffCLI(DiffusionModule, FieldDataModule,
                     args=["fit", "--config", str(path), "--ckpt_path", str(OLD / "operator_7df682e.ckpt")])
    assert cli.trainer.global_step == 4
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(sched, WarmupConstant) and isinstance(sched, WarmupCosine) and sched.last_epoch == 4
