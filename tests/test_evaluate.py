"""`infdiff evaluate` and `infdiff train_classifier` on a 2-step tiny model (offline metric)."""

from __future__ import annotations

import json

import pytest
import torch
from test_lit import run_fit, tiny_config

from lightning_infdiff.cli import main
from lightning_infdiff.evaluate import RESULT_KEYS
from lightning_infdiff.metrics import classifier as clf


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A private cache with a random 'trained' classifier (no 20 s training in tests)."""
    monkeypatch.setenv("LIGHTNING_INFDIFF_CACHE", str(tmp_path / "cache"))

    def fake_train(name):
        torch.manual_seed(0)
        return clf.SmallClassifier(10), 0.5

    monkeypatch.setattr(clf, "train_classifier", fake_train)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    cli = run_fit(tiny_config(root, **{"trainer.max_steps": 2, "samples.every_n_val": 0}))
    return cli.trainer.checkpoint_callback.last_model_path


def read_rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_evaluate_writes_jsonl_and_markdown(tmp_path, offline_cache, checkpoint, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt_path", checkpoint, "--out", str(out), "--num_samples", "6", "--steps", "1",
            "--resolutions", "[16, 8x12]", "--metrics", "[offline]", "--seed", "3"]
    main([*args, "--batch_size", "4"])
    rows = read_rows(out)
    fid = [r for r in rows if r["metric"] == "fid_offline"]
    art = [r for r in rows if r["metric"] == "artifacts"]
    assert [tuple(r) for r in fid] == [RESULT_KEYS, RESULT_KEYS] and len(rows) == 4
    assert [tuple(r) for r in art] == [(*RESULT_KEYS, "samples_share", "real_share")] * 2
    assert [r["resolution"] for r in fid] == [[16, 16], [8, 12]] == [r["resolution"] for r in art]
    assert all(r["value"] > 0 and r["num_samples"] == 6 for r in rows)
    assert all(r["value"] == pytest.approx(r["samples_share"] / r["real_share"]) for r in art)
    assert rows[0]["checkpoint"] == checkpoint and rows[0]["sampler"] == "dpmpp_2m" and rows[0]["seed"] == 3
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| checkpoint | metric") and len(md) == 6 and "| fid_offline | 8x12 |" in md[4]
    assert "| artifacts | 8x12 |" in md[5]
    # appended, and the samples do not depend on the batch size
    main([*args, "--batch_size", "5"])
    again = read_rows(out)
    assert len(again) == 8 and len((out / "results.md").read_text().splitlines()) == 10
    for a, b in zip(rows, again[4:], strict=True):
        assert b["value"] == pytest.approx(a["value"], rel=1e-6)
    assert "fid_offline 16x16" in capsys.readouterr().out
    # the reference statistics were cached once per resolution
    assert len(list((offline_cache / "fid_refs").glob("*.pt"))) == 2


def test_evaluate_artifacts_alone_and_their_reference(tmp_path, checkpoint, capsys):
    """--metrics [] with artifacts: only the artifact rows; the real share is that of the
    training split's images resampled bicubically from the training resolution."""
    import numpy as np

    from lightning_infdiff.evaluate import load_datamodule
    from lightning_infdiff.metrics.artifacts import artifact_sigma, highfreq_share, real_reference
    from lightning_infdiff.metrics.reference import split_of

    out = tmp_path / "eval"
    main(["evaluate", "--ckpt_path", checkpoint, "--out", str(out), "--num_samples", "4", "--steps", "1",
          "--resolutions", "[32]", "--metrics", "[]"])
    (row,) = read_rows(out)
    dm = load_datamodule(checkpoint, None)
    idx = split_of(dm, "train")[:4]
    real = real_reference(dm.source, np.asarray(idx), dm.resolution, (32, 32))
    assert real.shape == (4, 1, 32, 32)
    assert row["metric"] == "artifacts" and row["real_share"] == pytest.approx(
        float(highfreq_share(real, artifact_sigma((32, 32))).mean()))
    assert "artifacts 32x32" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt_path", checkpoint, "--out", str(out), "--metrics", "[]", "--artifacts", "false"])


def test_evaluate_reports_missing_clip_weights(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt_path", checkpoint, "--out", str(tmp_path / "e"), "--metrics", "[clip]"])
    err = capsys.readouterr().err
    assert "no local CLIP weights" in err and "--clip_weights" in err


def test_evaluate_needs_a_data_config_without_run_dir(tmp_path, checkpoint, offline_cache, capsys):
    lone = tmp_path / "lone.ckpt"
    lone.write_bytes(open(checkpoint, "rb").read())
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt_path", str(lone), "--out", str(tmp_path / "e")])
    assert "--data_config" in capsys.readouterr().err


def test_train_classifier_command(offline_cache, capsys):
    main(["train_classifier", "--dataset", "digits"])
    assert (offline_cache / "classifier_digits_v1.pt").is_file()
    assert "held-out accuracy 0.5000" in capsys.readouterr().out


def test_fid_overlay_composes_without_training_the_classifier(monkeypatch, tmp_path):
    from pathlib import Path

    from lightning_infdiff.callbacks import FIDCallback
    from lightning_infdiff.cli import InfDiffCLI
    from lightning_infdiff.data import FieldDataModule
    from lightning_infdiff.lit import DiffusionModule
    from lightning_infdiff.metrics import ClassifierFeatures

    monkeypatch.setenv("LIGHTNING_INFDIFF_CACHE", str(tmp_path))
    monkeypatch.setattr(clf, "train_classifier", lambda name: pytest.fail("trained at config time"))
    configs = Path(__file__).resolve().parents[1] / "configs"
    args = []
    for c in ("base.yaml", "data/digits.yaml", "denoisers/sparse_operator.yaml", "callbacks/fid_offline.yaml"):
        args += ["--config", str(configs / c)]
    cli = InfDiffCLI(DiffusionModule, FieldDataModule, run=False, args=[*args, "--trainer.logger", "false"])
    fids = [c for c in cli.trainer.callbacks if isinstance(c, FIDCallback)]
    assert len(fids) == 1 and isinstance(fids[0].extractors[0], ClassifierFeatures)
    assert fids[0].resolutions == [(32, 32), (64, 64)]
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"EMA", "AtomicModelCheckpoint", "FIDCallback"} <= names  # base.yaml's callbacks are kept


@pytest.mark.skipif(__import__("importlib").util.find_spec("open_clip") is None,
                    reason="open-clip-torch is not importable (install the clip extra in a torch+torchvision venv)")
def test_evaluate_clip_and_offline_together(tmp_path, offline_cache, checkpoint):
    """FID_CLIP plumbing with a random-weight ViT-B-32 (no weights here), beside the offline metric."""
    out = tmp_path / "eval"
    main(["evaluate", "--ckpt_path", checkpoint, "--out", str(out), "--num_samples", "4", "--steps", "1",
          "--resolutions", "[8]", "--metrics", "[offline, clip]", "--clip_pretrained", "null",
          "--reference_count", "6", "--artifacts", "false"])
    rows = read_rows(out)
    assert [(r["metric"], r["resolution"]) for r in rows] == [("fid_offline", [8, 8]), ("fid_clip", [8, 8])]
    assert all(r["value"] > 0 for r in rows)
    assert any("clip_ViT-B-32_random" in p.name for p in (offline_cache / "fid_refs").glob("*.pt"))


def test_evaluate_floor_is_held_out_real_data_and_sheets_keep_the_first_samples(tmp_path, offline_cache, checkpoint):
    """The floor row is the distance of as many held-out (validation) images rendered on the grid,
    against the same training reference; the sheet holds the first samples, as the seeds draw them."""
    from PIL import Image

    from lightning_infdiff.evaluate import load_datamodule
    from lightning_infdiff.metrics.features import build_extractor
    from lightning_infdiff.metrics.frechet import FrechetDistance
    from lightning_infdiff.metrics.reference import real_images, reference_stats, split_of

    out = tmp_path / "eval"
    main(["evaluate", "--ckpt_path", checkpoint, "--out", str(out), "--num_samples", "6", "--steps", "1",
          "--resolutions", "[16, 16x32]", "--artifacts", "false", "--floor", "true", "--sheet", "4", "--batch_size", "4"])
    rows = {(r["metric"], tuple(r["resolution"])): r["value"] for r in read_rows(out)}
    assert set(rows) == {(m, g) for m in ("fid_offline", "fid_offline_floor") for g in ((16, 16), (16, 32))}
    dm = load_datamodule(checkpoint, None)
    extractor = build_extractor("offline", "digits", "", None, None, None)
    from lightning_infdiff.coords import Grid

    for grid in ((16, 16), (16, 32)):
        fid = FrechetDistance(extractor, reference=reference_stats(dm, extractor, Grid(*grid, "wide"), progress=False))
        fid.update(real_images(dm.source, split_of(dm, "val")[:6], Grid(*grid, "wide")), real=False)
        assert rows[("fid_offline_floor", grid)] == pytest.approx(float(fid.compute()), rel=1e-5)
        assert rows[("fid_offline_floor", grid)] < rows[("fid_offline", grid)]  # a 2-step model is far from data
    with Image.open(out / "samples_16x32.png") as im:
        assert im.size[0] > im.size[1] > 16  # 4 wide samples in one row, with padding
    assert (out / "samples_16x16.png").is_file()


def test_evaluate_floor_needs_as_many_held_out_images_and_says_so_before_sampling(tmp_path, checkpoint, capsys):
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--ckpt_path", checkpoint, "--out", str(out), "--num_samples", "500", "--floor", "true",
              "--metrics", "[]"])
    assert err.value.code == 2
    assert "floor: the validation split has" in capsys.readouterr().err and not (out / "results.jsonl").exists()


def test_label_agreement_follows_the_label_cycle_across_batches(monkeypatch, offline_cache):
    """The i-th sample was asked for label i % num_classes, whatever the batches: a classifier
    that always reads 0 agrees with samples 0 and 10 of 12 fed as 5 + 5 + 2 (3 if each batch
    restarted the cycle)."""
    from lightning_infdiff.evaluate import LabelAgreement

    monkeypatch.setattr(clf, "classify", lambda model, images: (torch.zeros(len(images), dtype=torch.long),
                                                                torch.ones(len(images))))
    agree = LabelAgreement("digits")
    for n in (5, 5, 2):
        agree.update(torch.zeros(n, 1, 8, 8, dtype=torch.uint8))
    assert agree.compute() == pytest.approx(2 / 12)
    agree.reset()
    assert agree.seen == 0


def test_label_agreement_only_where_the_classifier_reads_the_model_s_classes(offline_cache, capsys):
    """Unconditional: no accuracy; 3 classes against the digit classifier's 10: skipped, with a note."""
    from types import SimpleNamespace

    from lightning_infdiff.evaluate import label_agreement

    assert label_agreement(SimpleNamespace(denoiser=SimpleNamespace(num_classes=0)), "digits") == []
    assert len(label_agreement(SimpleNamespace(denoiser=SimpleNamespace(num_classes=10)), "digits")) == 1
    assert label_agreement(SimpleNamespace(denoiser=SimpleNamespace(num_classes=3)), "digits") == []
    assert "offline_accuracy skipped: the digits classifier reads 10 classes, the denoiser has 3" in capsys.readouterr().err


def test_evaluate_scores_a_conditional_run_by_the_digit_it_asked_for(tmp_path, offline_cache, monkeypatch):
    """A class-conditional checkpoint gets an offline_accuracy row per grid: the share of samples
    read as the requested label (here a classifier that reads 0 for everything: 1 of 6 samples)."""
    root = tmp_path / "cond"
    root.mkdir()
    cfg = tiny_config(root, **{"trainer.max_steps": 2, "samples.every_n_val": 0})
    ckpt = run_fit(cfg, "--model.denoiser.init_args.num_classes=10", "--data.source.init_args.max_blobs=10",
                   ).trainer.checkpoint_callback.last_model_path
    monkeypatch.setattr(clf, "classify", lambda model, images: (torch.zeros(len(images), dtype=torch.long),
                                                                torch.ones(len(images))))
    out = tmp_path / "eval"
    main(["evaluate", "--ckpt_path", ckpt, "--out", str(out), "--num_samples", "6", "--steps", "1",
          "--resolutions", "[16, 8x16]", "--metrics", "[offline]", "--artifacts", "false"])
    acc = [r for r in read_rows(out) if r["metric"] == "offline_accuracy"]
    assert [r["resolution"] for r in acc] == [[16, 16], [8, 16]]
    assert all(r["value"] == pytest.approx(1 / 6) for r in acc)
