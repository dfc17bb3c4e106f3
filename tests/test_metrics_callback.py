"""FIDCallback: logs per resolution, EMA weights, seed spreading, DDP synchronisation."""

from __future__ import annotations

import os
from functools import partial

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_lit import TINY_DENOISER
from torch import nn

from lightning_infdiff.callbacks import EMA, FIDCallback
from lightning_infdiff.data import FieldDataModule, GaussianBlobs
from lightning_infdiff.denoisers import SparseNeuralOperator
from lightning_infdiff.lit import DiffusionModule, Sampling, WarmupConstant
from lightning_infdiff.metrics import (
    ClassifierFeatures,
    FeatureStats,
    FrechetDistance,
    frechet_distance,
)
from lightning_infdiff.metrics.classifier import SmallClassifier
from lightning_infdiff.processes import GaussianProcess


def offline_features() -> ClassifierFeatures:
    torch.manual_seed(0)
    return ClassifierFeatures(model=SmallClassifier(10))


def tiny_module() -> DiffusionModule:
    torch.manual_seed(0)
    den = SparseNeuralOperator(1, **TINY_DENOISER["init_args"])
    return DiffusionModule(den, GaussianProcess(), lr_scheduler=partial(WarmupConstant, warmup_steps=1),
                           sampling=Sampling(steps=1), val_logsnr_bins=1)


def tiny_dm() -> FieldDataModule:
    return FieldDataModule(GaussianBlobs(24, 1), resolution=8, batch_size=4, num_workers=0, val_size=4)


def trainer(callbacks, **kw) -> L.Trainer:
    args = dict(accelerator="cpu", max_steps=2, val_check_interval=2, check_val_every_n_epoch=None,
                num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


def test_callback_logs_every_resolution_with_ema_weights(tmp_path):
    module, dm = tiny_module(), tiny_dm()
    ema = EMA(half_life_images=8)
    fid = FIDCallback([offline_features()], resolutions=[[8, 8], [16, 16], [8, 12]], num_samples=4, steps=1,
                      batch_size=3, cache=str(tmp_path))
    key = "denoiser.lift.weight"
    record, seen = {}, []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            record["avg"] = ema.average_state_dict()[key].clone()
            record["raw"] = pl_module.state_dict()[key].clone()

    original = module.generate

    def spy(grid, seeds, *args, **kwargs):
        seen.append((tuple(grid), list(seeds), module.state_dict()[key].clone()))
        return original(grid, seeds, *args, **kwargs)

    module.generate = spy
    t = trainer([fid, ema, Probe()])  # FID before EMA in the list: the weights must still be the EMA ones
    t.fit(module, datamodule=dm)
    logged = {k: float(v) for k, v in t.callback_metrics.items() if k.startswith("fid_")}
    assert set(logged) == {"fid_offline/8x8", "fid_offline/16x16", "fid_offline/8x12"}
    assert all(v > 0 for v in logged.values()) and logged == pytest.approx(fid.last)
    assert [s[:2] for s in seen] == [((8, 8), [1_000_000, 1_000_001, 1_000_002]), ((8, 8), [1_000_003]),
                                     ((8, 12), [1_000_000, 1_000_001, 1_000_002]), ((8, 12), [1_000_003]),
                                     ((16, 16), [1_000_000, 1_000_001, 1_000_002]), ((16, 16), [1_000_003])]
    for *_, w in seen:
        assert torch.equal(w, record["avg"]) and not torch.equal(w, record["raw"])
    assert len(list((tmp_path / "fid_refs").glob("*.pt"))) == 3


def test_schedule_every_n_steps():
    fid = FIDCallback([offline_features()], every_n_steps=4, num_samples=2)

    class T:
        sanity_checking = False
        current_epoch = 0

        class state:
            fn = "fit"

    t = T()
    due = []
    for step in (2, 4, 6, 8, 9, 12):
        t.global_step = step
        if fid._due(t):
            fid._last_step_bucket = step // 4
            due.append(step)
    assert due == [4, 8, 12]


def test_seeds_are_spread_over_ranks(monkeypatch):
    fid = FIDCallback([offline_features()], resolutions=[[8, 8]], num_samples=5, batch_size=2)
    module = tiny_module()
    fid.metrics[("fid_offline", (8, 8))] = FrechetDistance(fid.extractors[0], reference=_dummy_ref())
    calls = []
    monkeypatch.setattr(module, "generate", lambda g, seeds, *a, **k: calls.append(list(seeds)) or
                        torch.zeros(len(seeds), 1, *g))
    for rank in range(2):
        fid.evaluate(module, rank, 2)
    flat = sorted(s - fid.seed for c in calls for s in c)
    assert flat == [0, 1, 2, 3, 4] and calls[0] == [fid.seed, fid.seed + 2]


def test_conditional_models_get_a_balanced_label_cycle(monkeypatch):
    from lightning_infdiff.callbacks.fid import sample_into

    module = tiny_module()
    monkeypatch.setattr(module.denoiser, "num_classes", 3)
    seen = []

    def fake_generate(grid, seeds, sampler=None, steps=None, labels=None):
        seen.append(labels.tolist())
        return torch.zeros(len(seeds), 1, *grid)

    monkeypatch.setattr(module, "generate", fake_generate)
    metric = FrechetDistance(offline_features(), reference=_dummy_ref())
    sample_into(module, (8, 8), [10, 11, 12, 13, 14], [metric], batch_size=2, first_seed=10)
    assert seen == [[0, 1], [2, 0], [1]] and int(metric.fake_features_num_samples) == 5


def _dummy_ref() -> FeatureStats:
    stats = FeatureStats.empty(128)
    stats.update(torch.randn(4, 128))
    return stats


class Passthrough(nn.Module):
    num_features = 3

    def forward(self, x):
        return x


def _ddp_worker(rank: int, world: int, port: int, features: torch.Tensor, ref: dict, out: str) -> None:
    # a forked child must not enter the parent's OpenMP pool (GNU libgomp is not fork-safe: this
    # test hung in the child when the same process had run multi-threaded ops just before)
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metric = FrechetDistance(Passthrough(), reference=FeatureStats.from_dict(ref))
        for chunk in features[rank::world].split(7):  # uneven shards and batches
            metric.update(chunk, real=False)
        torch.save(metric.compute(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_fid_equals_single_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 3, generator=g), torch.randn(41, 3, generator=g) * 1.5 + 0.3
    ref = FeatureStats.empty(3)
    ref.update(real)
    single = frechet_distance(ref.mean, ref.cov, fake.double().mean(0), torch.cov(fake.double().T))
    port = 29500 + os.getpid() % 1000
    # fork: the workers need no re-import of the test session (spawn costs ~30 s here)
    mp.start_processes(_ddp_worker, args=(2, port, fake, ref.to_dict(), str(tmp_path / "fid")), nprocs=2,
                       join=True, start_method="fork")
    values = [float(torch.load(tmp_path / f"fid.{r}")) for r in range(2)]
    assert values[0] == pytest.approx(single, rel=1e-9) and values[1] == pytest.approx(single, rel=1e-9)


@pytest.mark.slow
def test_callback_under_two_process_ddp_equals_one_process(tmp_path):
    """Lightning DDP (gloo, forked workers): ranks split the seeds, torchmetrics sums; same FID as 1 process."""

    def run(devices: int, **kw) -> dict[str, float]:
        fid = FIDCallback([offline_features()], resolutions=[[8, 8], [12, 12]], num_samples=6, steps=1,
                          batch_size=2, cache=str(tmp_path))
        t = trainer([fid], devices=devices, **kw)
        t.validate(tiny_module(), datamodule=tiny_dm())
        return {k: float(v) for k, v in t.callback_metrics.items() if k.startswith("fid_")}

    one = run(1)
    two = run(2, strategy="ddp_fork")  # fork: no re-import of the test session in the workers
    assert set(one) == set(two) == {"fid_offline/8x8", "fid_offline/12x12"}
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
