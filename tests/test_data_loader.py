"""Batch plan, DataModule, workers, ranks, multi-resolution, epochs and resume."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_infdiff.batch import FieldBatch
from lightning_infdiff.data import (
    BatchPlan,
    FieldCollate,
    FieldDataModule,
    FieldLoader,
    GaussianBlobs,
)
from lightning_infdiff.data.subsample import CoordinateSampler


def _dm(**kw):
    args = dict(source=GaussianBlobs(length=200), resolution=16, batch_size=8, subsample_rate=4)
    args.update(kw)
    dm = FieldDataModule(**args)
    dm.setup()
    return dm


def _fingerprint(batches):
    return [
        (b.image.sum().item(), None if b.indices is None else b.indices.tolist()) for b in batches
    ]


def test_yields_field_batches_with_labels():
    dm = _dm()
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, FieldBatch)
    assert batch.image.shape == (8, 3, 16, 16) and batch.image.dtype == torch.float32
    assert batch.indices.shape == (8, 64) and batch.num_points == 64
    assert batch.label.dtype == torch.long and batch.label.shape == (8,)
    assert float(batch.image.min()) >= -1.0 and float(batch.image.max()) <= 1.0
    assert batch.coords.shape == (8, 64, 2)
    val = next(iter(dm.val_dataloader()))
    assert val.indices is None and val.image.shape[-2:] == (16, 16)


def test_split_is_deterministic_and_disjoint():
    a, b = _dm(), _dm(seed=5)
    assert np.array_equal(a.train_indices, b.train_indices), "the split does not move with the seed"
    assert len(a.val_indices) == 10 and len(a.train_indices) == 190
    assert not set(a.val_indices.tolist()) & set(a.train_indices.tolist())
    c = _dm(split_seed=1)
    assert not np.array_equal(a.val_indices, c.val_indices)


def test_same_seed_same_batches_other_seed_different():
    one = _fingerprint(list(_dm(seed=3).train_dataloader())[:4])
    two = _fingerprint(list(_dm(seed=3).train_dataloader())[:4])
    other = _fingerprint(list(_dm(seed=4).train_dataloader())[:4])
    assert one == two
    assert one != other


def test_epochs_differ_but_validation_is_fixed():
    dm = _dm()
    loader = dm.train_dataloader()
    e0, e1 = _fingerprint(loader), _fingerprint(loader)
    assert e0 != e1
    assert _fingerprint(dm.val_dataloader()) == _fingerprint(dm.val_dataloader())


def test_workers_split_batches_and_match_single_process():
    """Two workers build alternate batches; the sequence equals the single-process one."""
    serial = _fingerprint(_dm(num_workers=0).train_dataloader())
    parallel = _fingerprint(_dm(num_workers=2).train_dataloader())
    assert parallel == serial
    assert len(serial) == 190 // 8
    # consecutive batches (built by different workers) have different images and coordinates
    assert serial[0][0] != serial[1][0] and serial[0][1] != serial[1][1]


def _plan(rank, world, **kw):
    src = GaussianBlobs(length=64)
    args = dict(batch_size=4, resolutions=[16], train=True, seed=0, rank=rank, world_size=world)
    args.update(kw)
    return BatchPlan(src, np.arange(64), **args)


def test_ranks_see_disjoint_images_and_different_coordinates():
    collate = FieldCollate(CoordinateSampler(rate=4))
    seen, coords = [], []
    for rank in range(2):
        plan = _plan(rank, 2)
        order = plan.order(0)
        seen.append({int(order[k * 2 + rank]) for k in range(plan.per_rank)})
        batch = collate(plan.batch(0, 0))
        coords.append(batch.indices)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 64
    assert not torch.equal(coords[0], coords[1])


def test_rank_and_world_size_come_from_the_trainer():
    dm = _dm()
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    plan = dm.train_dataloader().dataset
    assert (plan.rank, plan.world_size) == (1, 2)


def test_multi_resolution_one_resolution_per_batch_same_on_all_ranks():
    dm = _dm(resolution=24, train_resolutions=[16, 24, 32], subsample_rate=8)
    sizes = [tuple(b.image.shape[-2:]) for b in dm.train_dataloader()]
    assert set(sizes) == {(16, 16), (24, 24), (32, 32)}
    for b in dm.train_dataloader():
        assert b.indices.shape[1] == b.image.shape[-1] ** 2 // 8
    r0 = [_plan(0, 2, resolutions=[16, 24, 32]).resolution(0, b) for b in range(8)]
    r1 = [_plan(1, 2, resolutions=[16, 24, 32]).resolution(0, b) for b in range(8)]
    assert r0 == r1
    assert {b.image.shape[-1] for b in dm.val_dataloader()} == {24}


def test_loader_state_dict_resumes_mid_epoch():
    dm = _dm()
    full = _fingerprint(dm.train_dataloader())  # epoch 0 from a fresh loader
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 5}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    assert _fingerprint(resumed) == full[5:]
    assert len(resumed) == len(full)


def test_flip_is_random_but_reproducible():
    plan = _plan(0, 1, hflip=True)
    plain = _plan(0, 1, hflip=False)
    flipped = [
        np.array_equal(a.image[..., ::-1], b.image)
        for a, b in zip(
            plain.batch(0, 0) + plain.batch(0, 1), plan.batch(0, 0) + plan.batch(0, 1), strict=True
        )
    ]
    assert any(flipped) and not all(flipped)
    again = [s.image.sum() for s in plan.batch(0, 0)]
    assert again == [s.image.sum() for s in _plan(0, 1, hflip=True).batch(0, 0)]


def test_datamodule_state_dict_warns_on_seed_change():
    dm = _dm(seed=1)
    state = dm.state_dict()
    other = _dm(seed=2)
    with pytest.warns(UserWarning, match="seed=1"):
        other.load_state_dict(state)


def test_field_loader_without_trainer_counts_epochs():
    dm = _dm()
    loader = dm.train_dataloader()
    assert isinstance(loader, FieldLoader)
    first = _fingerprint(loader)
    loader.set_epoch(0)
    assert _fingerprint(loader) == first


def test_no_validation_split_gives_no_val_loader():
    dm = _dm(val_fraction=0.0)
    assert len(dm.val_indices) == 0 and dm.val_dataloader() == []
    with pytest.raises(ValueError, match="val_fraction must be in"):
        _dm(val_fraction=1.5)


def test_too_few_examples_for_one_batch():
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        _dm(source=GaussianBlobs(length=10), val_size=4).train_dataloader()
