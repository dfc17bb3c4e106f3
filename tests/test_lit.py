"""Lightning smoke tier: CLI fit/resume/sample/export, EMA in validation, config errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lightning_infdiff.callbacks import EMA, SampleGrids, decay_from_half_life
from lightning_infdiff.checkpoint import load_checkpoint, load_module, load_safetensors
from lightning_infdiff.cli import InfDiffCLI, main, parse_grid
from lightning_infdiff.data import FieldDataModule, GaussianBlobs
from lightning_infdiff.data.datamodule import FieldDataModule as DM
from lightning_infdiff.denoisers import SparseNeuralOperator
from lightning_infdiff.lit import DiffusionModule, Sampling, WarmupConstant, WarmupCosine
from lightning_infdiff.processes import GaussianProcess

ROOT = Path(__file__).resolve().parents[1]
TINY_DENOISER = {
    "class_path": "lightning_infdiff.denoisers.SparseNeuralOperator",
    "init_args": {
        "train_resolution": 16, "channels": 8, "depth": 1, "kernel_size": 3, "inner_resolution": 8,
        "inner_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
        "emb_dim": 32, "head_channels": 8,
    },
}


def tiny_config(tmp_path: Path, **overrides) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 4,
            "val_check_interval": 2, "check_val_every_n_epoch": None, "num_sanity_val_steps": 0,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path / "runs"), "name": "t"}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"save_last": True, "monitor": "val/loss", "mode": "min"}},
                {"class_path": "lightning_infdiff.callbacks.EMA", "init_args": {"half_life_images": 50}},
                {"class_path": "lightning_infdiff.callbacks.NoiseLevelCurve"},
            ],
        },
        "model": {
            "denoiser": TINY_DENOISER,
            "sampling": {"steps": 2}, "val_logsnr_bins": 2,
            "lr_scheduler": {"class_path": "lightning_infdiff.lit.WarmupCosine", "init_args": {"warmup_steps": 1}},
        },
        "samples": {"num_samples": 2, "grids": [[16, 16], [12, 20]]},
        "data": {
            "source": {"class_path": "lightning_infdiff.data.GaussianBlobs", "init_args": {"length": 48, "channels": 1}},
            "resolution": 16, "batch_size": 4, "subsample_rate": 2, "num_workers": 0, "val_size": 8,
        },
    }
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_fit(cfg: Path, *extra: str) -> InfDiffCLI:
    return InfDiffCLI(DiffusionModule, FieldDataModule, args=["fit", "--config", str(cfg), *extra])


def test_fast_dev_run(tmp_path):
    cli = run_fit(tiny_config(tmp_path), "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path))
    assert cli.trainer.state.finished


def test_fit_checkpoint_sample_export_round_trip(tmp_path, capsys):
    cli = run_fit(tiny_config(tmp_path))
    assert cli.trainer.global_step == 4
    log_dir = Path(cli.trainer.logger.log_dir)
    assert (log_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (log_dir / "samples").iterdir()) == [
        "step0000002_12x20.png", "step0000002_16x16.png", "step0000004_12x20.png", "step0000004_16x16.png"]
    curve = (log_dir / "val_loss_by_logsnr.jsonl").read_text().splitlines()
    assert len(curve) == 2 and '"logsnr"' in curve[0]
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    module = load_module(ckpt)
    # the reloaded (EMA) weights are the ones saved
    state = load_checkpoint(ckpt)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
    out = tmp_path / "samples"
    main(["sample", "--ckpt_path", str(ckpt), "--grid", "12x20", "--num", "3", "--steps", "2",
          "--batch_size", "2", "--out", str(out)])
    pngs = sorted((out / "12x20").glob("*.png"))
    assert [p.name for p in pngs] == ["seed0.png", "seed1.png", "seed2.png"]
    from PIL import Image

    assert Image.open(pngs[0]).size == (20, 12)
    assert (out / "grid_12x20.png").is_file()
    main(["sample", "--ckpt_path", str(ckpt), "--scale", "2", "--num", "1", "--steps", "1", "--out", str(out)])
    assert (out / "32x32" / "seed0.png").is_file()
    st = tmp_path / "m.safetensors"
    main(["export", "--ckpt_path", str(ckpt), "--out", str(st)])
    again = load_safetensors(st)
    a = module.generate((8, 8), [5], steps=2)
    b = again.generate((8, 8), [5], steps=2)
    assert torch.equal(a, b)


def test_resume_continues_global_step(tmp_path):
    cfg = tiny_config(tmp_path)
    first = run_fit(cfg)
    ckpt = first.trainer.checkpoint_callback.last_model_path
    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.global_step)

    second = InfDiffCLI(DiffusionModule, FieldDataModule, run=False,
                        args=["--config", str(cfg), "--trainer.max_steps", "6"])
    second.trainer.callbacks.append(Probe())
    second.trainer.fit(second.model, datamodule=second.datamodule, ckpt_path=ckpt)
    assert seen[0] == 4 and second.trainer.global_step == 6


def test_ema_weights_are_used_in_validation_sampling():
    torch.manual_seed(0)
    den = SparseNeuralOperator(1, **{k: v for k, v in TINY_DENOISER["init_args"].items()})
    module = DiffusionModule(den, GaussianProcess(), lr_scheduler=partial(WarmupConstant, warmup_steps=1),
                             sampling=Sampling(steps=1), val_logsnr_bins=1)
    dm = DM(GaussianBlobs(32, 1), resolution=16, batch_size=4, num_workers=0, val_size=4)
    ema = EMA(half_life_images=8)
    record = {}
    key = "denoiser.lift.weight"

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            record["avg"] = ema.average_state_dict()[key].clone()
            record["raw"] = pl_module.state_dict()[key].clone()

    seen = []

    class Spy(SampleGrids):
        def draw(self, trainer, pl_module, grid):
            seen.append(pl_module.state_dict()[key].clone())
            return super().draw(trainer, pl_module, grid)

    trainer = L.Trainer(accelerator="cpu", max_steps=3, val_check_interval=3, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, callbacks=[ema, Probe(), Spy(num_samples=1, grids=[[8, 8]])],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert len(seen) == 1
    assert torch.equal(seen[0], record["avg"]) and not torch.equal(seen[0], record["raw"])


def test_ema_decay_from_half_life():
    assert decay_from_half_life(100, 100) == pytest.approx(0.5)
    assert decay_from_half_life(1000, 10) == pytest.approx(0.5 ** 0.01)
    with pytest.raises(ValueError, match="half_life"):
        EMA(half_life_images=0)


def test_ema_update_matches_its_recurrence():
    """The fused update equals ``a <- a + (c - a)(1 - beta_n)``, ``beta_n = min(decay, (1+n)/(10+n))``,
    for every floating tensor (parameters and buffers); an integer buffer takes the same formula."""
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))  # float + int64 buffers
    ema = EMA(half_life_images=8)
    ema.decay = 0.95
    avg = AveragedModel(net, multi_avg_fn=ema._average_many, use_buffers=True)  # as WeightAveraging builds it
    expected = {k: v.clone().double() for k, v in net.state_dict().items()}
    for n in range(30):  # the first update copies the weights; the n-th after it averages with beta_n
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked.add_(3)
        avg.update_parameters(net)
        beta = min(0.95, (1.0 + n) / (10.0 + n)) if n else 0.0
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = expected[k] + (v.double() - expected[k]) * (1 - beta)
            else:  # the int tensor's update truncates as the per-tensor formula does
                expected[k] = (expected[k] + (v.double() - expected[k]) * (1 - beta)).trunc()
    got = avg.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k].double(), v, rtol=1e-5, atol=1e-5), k
    assert ema._beta(1) == pytest.approx(2 / 11) and ema._beta(10**6) == 0.95


def test_warmup_cosine_and_constant_schedules():
    """f(s) = (s+1)/S_w in warm-up, then r + (1-r)(1+cos(pi p))/2; the constant one stays at the peak."""
    def factors(sched, n):
        out = []
        for _ in range(n):
            out.append(sched.get_last_lr()[0] / 0.5)
            sched.optimizer.step()
            sched.step()
        return out

    opt = lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)  # noqa: E731
    f = factors(WarmupCosine(opt(), warmup_steps=10, min_ratio=0.1, total_steps=100), 101)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.55) and f[100] == pytest.approx(0.1)
    g = factors(WarmupConstant(opt(), warmup_steps=4), 50)
    assert g[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and g[4:] == pytest.approx([1.0] * 46)
    with pytest.raises(ValueError, match="min_ratio"):
        WarmupCosine(opt(), min_ratio=2.0)


def test_module_tells_the_cosine_schedule_the_run_length(tmp_path):
    cli = InfDiffCLI(DiffusionModule, FieldDataModule, run=False, args=["--config", str(tiny_config(tmp_path))])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(sched, WarmupCosine) and sched.total_steps == 4 and sched.last_epoch == 4


def test_classifier_free_guidance_end_to_end(tmp_path):
    den = {"class_path": TINY_DENOISER["class_path"], "init_args": {**TINY_DENOISER["init_args"], "num_classes": 4}}
    cfg = tiny_config(tmp_path, **{"model.denoiser": den, "model.sampling": {"guidance_scale": 2.0}, "model.cond_drop_prob": 0.5})
    cli = run_fit(cfg)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    out = tmp_path / "cfg"
    main(["sample", "--ckpt_path", ckpt, "--grid", "16", "--num", "2", "--steps", "2", "--labels", "[1, 3]",
          "--guidance_scale", "3.0", "--out", str(out)])
    assert len(list((out / "16x16").glob("*.png"))) == 2
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt_path", ckpt, "--grid", "16", "--labels", "[7]", "--out", str(out)])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.no_such_key", "1"], "no_such_key"),
        (["--model.denoiser.class_path", "lightning_infdiff.denoisers.NoSuchNet"], "NoSuchNet"),
        (["--model.sampling.steps", "-1"], "model.sampling.steps"),
        (["--data.subsample_rate", "1000"], "1000"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, capsys, args, message):
    cfg = tiny_config(tmp_path)
    with pytest.raises((SystemExit, ValueError)) as err:
        InfDiffCLI(DiffusionModule, FieldDataModule, run=False, args=["--config", str(cfg), *args])
    text = str(err.value) + capsys.readouterr().err
    assert message in text


def test_data_decides_channels(tmp_path):
    cfg = tiny_config(tmp_path)
    cli = InfDiffCLI(DiffusionModule, FieldDataModule, run=False,
                     args=["--config", str(cfg), "--data.source.init_args.channels", "3"])
    assert cli.model.denoiser.in_channels == 3


def test_checkpoint_of_another_config_is_refused(tmp_path):
    cli = run_fit(tiny_config(tmp_path))
    ckpt = load_checkpoint(cli.trainer.checkpoint_callback.last_model_path)
    ckpt["hyper_parameters"]["denoiser"]["init_args"]["channels"] = 16
    bad = tmp_path / "other.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="does not match"):
        load_module(bad)


def test_crafted_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, bad)
    with pytest.raises(ValueError, match="refusing to load"):
        load_module(bad)


def test_print_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(tiny_config(tmp_path)), "--print_config"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    for name in ("SparseNeuralOperator", "GaussianProcess", "CosineSchedule", "IdentityOperator", "EMA"):
        assert name in out, name


def test_parse_grid():
    assert parse_grid("64") == (64, 64) and parse_grid("48x80") == (48, 80)
    with pytest.raises(ValueError, match="grid"):
        parse_grid("1x5")


def test_sample_scale_uses_the_data_resolution(tmp_path):
    """--scale works for any denoiser: the training grid comes from the checkpoint's data config."""
    unet = {"class_path": "lightning_infdiff.denoisers.ADMUNetDenoiser",
            "init_args": {"resolution": 12, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                          "attention_resolutions": [], "head_channels": 8, "emb_dim": 32}}
    cfg = tiny_config(tmp_path, **{"model.denoiser": unet, "data.resolution": 12, "data.subsample_rate": 1,
                                   "samples.grids": [[12, 12]], "trainer.max_steps": 2})
    ckpt = run_fit(cfg).trainer.checkpoint_callback.last_model_path
    out = tmp_path / "scaled"
    main(["sample", "--ckpt_path", ckpt, "--scale", "1.5", "--num", "1", "--steps", "1", "--out", str(out)])
    assert (out / "18x18" / "seed0.png").is_file()
