"""``infdiff inpaint`` and ``infdiff superres`` end to end on a 2-step tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_infdiff.cli import InfDiffCLI, main
from lightning_infdiff.data import FieldDataModule
from lightning_infdiff.lit import DiffusionModule


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("apps_cli")
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 2, "num_sanity_val_steps": 0,
            "limit_val_batches": 0, "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
            "default_root_dir": str(root),
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}],
        },
        "model": {
            "denoiser": {
                "class_path": "lightning_infdiff.denoisers.SparseNeuralOperator",
                "init_args": {"train_resolution": 16, "channels": 8, "depth": 1, "kernel_size": 3, "inner_resolution": 8,
                              "inner_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                              "attention_resolutions": [], "emb_dim": 16, "head_channels": 8},
            },
            "process": {"class_path": "lightning_infdiff.processes.GaussianProcess",
                        "init_args": {"operator": {"class_path": "lightning_infdiff.operators.HeatKernelOperator",
                                                   "init_args": {"width": 0.0625}}}},
            "lr_scheduler": {"class_path": "lightning_infdiff.lit.WarmupConstant", "init_args": {"warmup_steps": 1}},
        },
        "data": {
            "source": {"class_path": "lightning_infdiff.data.GaussianBlobs", "init_args": {"length": 16, "channels": 1}},
            "resolution": 16, "batch_size": 4, "subsample_rate": 1, "num_workers": 0, "val_size": 4,
        },
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = InfDiffCLI(DiffusionModule, FieldDataModule, args=["fit", "--config", str(path)])
    return cli.trainer.checkpoint_callback.last_model_path


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(g.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / "small.png")
    mask = np.zeros((12, 12), np.uint8)
    mask[4:8, 4:8] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask[:8, :8]).save(tmp_path / "mask_small.png")
    (tmp_path / "notes.png").write_text("not an image")
    return {p.stem: p for p in tmp_path.iterdir()}


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.parametrize("mask", ["file", "left-half", "random-strokes"])
def test_inpaint_command(ckpt, files, tmp_path, mask):
    out = tmp_path / "inp"
    arg = str(files["mask"]) if mask == "file" else mask
    main(["inpaint", "--ckpt_path", ckpt, "--image", str(files["img"]), "--mask", arg, "--num", "2",
          "--steps", "2", "--out", str(out)])
    assert (out / "grid.png").is_file()
    src, res = _read(files["img"]), _read(out / "seed1.png")
    if mask == "file":  # the known pixels (outside the white square) are exactly the input's
        keep = _read(files["mask"]) < 128
        assert np.abs(src - res)[keep].max() <= 1
        assert np.abs(src - res)[~keep].max() > 1


def test_superres_command(ckpt, files, tmp_path):
    out = tmp_path / "sr"
    main(["superres", "--ckpt_path", ckpt, "--image", str(files["small"]), "--scale", "2", "--method", "replace",
          "--num", "1", "--steps", "2", "--out", str(out)])
    res = _read(out / "seed0.png").astype(np.float64)
    assert res.shape == (12, 12)
    down = res.reshape(6, 2, 6, 2).mean(axis=(1, 3))
    assert np.abs(down - _read(files["small"])).max() <= 1.0  # uint8 rounding only
    main(["superres", "--ckpt_path", ckpt, "--image", str(files["small"]), "--size", "9x13", "--num", "1",
          "--steps", "1", "--out", str(out / "g")])
    assert _read(out / "g" / "seed0.png").shape == (9, 13)


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("inpaint", ["--mask", "{mask_small}"], "mask .* is 8x8 but the image is 12x12"),
        ("inpaint", ["--mask", "star"], "neither a file nor one of"),
        ("inpaint", ["--image", "{notes}"], "not a readable image"),
        ("superres", ["--scale", "0.5"], "scale factor must be >= 1"),
        ("superres", ["--size", "4x4"], "smaller than the input"),
        ("superres", ["--scale", "2", "--method", "autoencoder"], "diffusion-autoencoder"),
        ("superres", ["--size", "13x13", "--method", "replace"], "integer factors"),
    ],
)
def test_command_errors(ckpt, files, tool, args, message, capsys):
    base = ["--ckpt_path", ckpt, "--image", str(files["img"] if tool == "inpaint" else files["small"]), "--steps", "1"]
    argv = [tool, *base, *[a.format(**{k: str(v) for k, v in files.items()}) for a in args]]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err), message
