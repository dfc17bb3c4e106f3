"""Bad input end to end: data, configs, checkpoints and CLI arguments.

Each case must give a clear error that names the key or file (or a counted, reported skip) and
must not lose an earlier checkpoint or output. Cases already covered elsewhere are listed in
the issue-8 report; these are the ones that were missing.
"""

from __future__ import annotations

import copy
import errno
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_fault import tiny_dm, tiny_module, trainer

from lightning_infdiff.checkpoint import (
    export_safetensors,
    load_checkpoint,
    load_module,
    load_safetensors,
)
from lightning_infdiff.cli import InfDiffCLI, main
from lightning_infdiff.data import ArraySource, FieldDataModule, GaussianBlobs, ImageFolder
from lightning_infdiff.lit import DiffusionModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DENOISER = {
    "class_path": "lightning_infdiff.denoisers.SparseNeuralOperator",
    "init_args": {"train_resolution": 16, "channels": 8, "depth": 1, "kernel_size": 3, "inner_resolution": 8,
                  "inner_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
                  "emb_dim": 32, "head_channels": 8},
}


def config(folder: Path, **top) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 1,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "logger": False, "default_root_dir": str(folder),
                    "callbacks": [{"class_path": "lightning_infdiff.callbacks.AtomicModelCheckpoint",
                                   "init_args": {"dirpath": str(folder / "ckpt"), "save_last": True,
                                                 "save_top_k": 0, "every_n_train_steps": 1}}]},
        "model": {"denoiser": copy.deepcopy(DENOISER), "lr_scheduler": {"class_path": "lightning_infdiff.lit.WarmupConstant", "init_args": {"warmup_steps": 1}}},
        "data": {"source": {"class_path": "lightning_infdiff.data.GaussianBlobs",
                            "init_args": {"length": 16, "channels": 1}},
                 "resolution": 16, "batch_size": 4, "subsample_rate": 2, "num_workers": 0, "val_size": 4},
    }
    for key, value in top.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    path = folder / "cfg.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fit")
    InfDiffCLI(DiffusionModule, FieldDataModule, args=["fit", "--config", str(config(folder))],
               save_config_callback=None)
    path = folder / "ckpt" / "last.ckpt"
    assert load_checkpoint(path)["global_step"] == 1
    return path


def cli_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------ data
def test_zero_byte_and_non_image_files_are_counted_and_reported(tmp_path):
    for i in range(3):
        Image.new("L", (20, 20), 40 * i).save(tmp_path / f"ok{i}.png")
    (tmp_path / "empty.png").write_bytes(b"")  # zero-size file
    (tmp_path / "notes.jpg").write_text("not an image")  # non-image file with an image extension
    (tmp_path / "readme.txt").write_text("ignored: not an image extension")
    src = ImageFolder(str(tmp_path), channels=1)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\).*empty\.png.*notes\.jpg"):
        src.prepare([16])
    assert len(src) == 3
    with pytest.raises(OSError, match=r"cannot read image file '.*empty\.png'"):
        ImageFolder(str(tmp_path), channels=1, strict=True).prepare([16])


def test_one_pixel_image_is_upsampled_with_warning_or_refused(tmp_path):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match=r"dot\.png' is 1x1, smaller than the training resolution 16"):
        ImageFolder(str(tmp_path), strict=True).prepare([16])


def test_wrong_channel_counts(tmp_path):
    with pytest.raises(ValueError, match="ImageFolder: data.source.init_args.channels must be 1 or 3, got 2"):
        ImageFolder(str(tmp_path), channels=2)
    dm = tiny_dm(source=GaussianBlobs(28, 3))  # RGB data, 1-channel denoiser (built without the CLI link)
    with pytest.raises(ValueError, match=r"model\.denoiser\.init_args\.in_channels=1 but the data has 3 channel"):
        trainer(tmp_path, [], max_steps=1).fit(tiny_module(), datamodule=dm)


def test_conditional_denoiser_with_another_class_count(tmp_path):
    from test_fault import TINY

    from lightning_infdiff.denoisers import SparseNeuralOperator
    from lightning_infdiff.processes import GaussianProcess

    module = DiffusionModule(SparseNeuralOperator(1, num_classes=10, **TINY), GaussianProcess())
    with pytest.raises(ValueError, match=r"model\.denoiser\.init_args\.num_classes=10 but the data has 4 classes"):
        trainer(tmp_path, [], max_steps=1).fit(module, datamodule=tiny_dm())


def test_nan_pixels_in_a_tensor_dataset():
    images = np.zeros((8, 16, 16), np.float32)
    images[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, H, W\[, 3\]\), got float32"):
        ArraySource(images, None, 1, None)
    # a custom source that yields NaN pixels is stopped by NonFiniteGuard: test_fault.py


# ------------------------------------------------------------------ configs
def test_unknown_key_in_a_yaml_file(tmp_path, capsys):
    cfg = config(tmp_path, **{"data.batchsize": 4})
    with pytest.raises(SystemExit):
        InfDiffCLI(DiffusionModule, FieldDataModule, run=False, args=["--config", str(cfg)])
    assert "batchsize" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,key",
    [(["--data.batch_size", "abc"], "data.batch_size"), (["--trainer.max_steps", "many"], "max_steps"),
     (["--model.sampling.sampler", "linear"], "sampler"), (["--data.resolution", "[32, 32]"], "resolution")],
)
def test_wrong_types_name_the_key(tmp_path, capsys, args, key):
    with pytest.raises(SystemExit):
        InfDiffCLI(DiffusionModule, FieldDataModule, run=False, args=["--config", str(config(tmp_path)), *args])
    assert key in capsys.readouterr().err


def test_incompatible_overlays_fail_before_the_first_step(tmp_path):
    """multiscale loss (full grids) + subsampled data: refused in setup, naming both keys."""
    cfg = config(tmp_path)
    with pytest.raises(ValueError, match=r"multiscale=true needs full grids.*data\.subsample_rate=4"):
        InfDiffCLI(DiffusionModule, FieldDataModule, save_config_callback=None,
                   args=["fit", "--config", str(cfg), "--config", str(CONFIGS / "process" / "multiscale.yaml"),
                         "--data.subsample_rate", "4"])
    assert not (tmp_path / "ckpt").exists()  # nothing ran


# ------------------------------------------------------------------ checkpoints
def test_truncated_and_foreign_checkpoints(tmp_path, ckpt):
    data = ckpt.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cannot load '.*cut\.ckpt': the file is corrupt"):
        load_module(cut)
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(ValueError, match=r"weights\.pt is not a Lightning checkpoint \(no 'state_dict'\)"):
        load_module(plain)
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, bare)
    with pytest.raises(ValueError, match=r"bare\.ckpt has no model configuration"):
        load_module(bare)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_module(tmp_path / "missing.ckpt")


def test_resuming_from_a_corrupt_or_crafted_checkpoint_names_it(tmp_path, ckpt):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:1000])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, evil)
    for bad, message in ((cut, "cannot resume from .*cut.ckpt.*the file is corrupt"),
                         (evil, "refusing to resume from .*evil.ckpt.*holds a pickled .*print")):
        folder = tmp_path / bad.stem
        with pytest.raises(ValueError, match=message):
            InfDiffCLI(DiffusionModule, FieldDataModule, save_config_callback=None,
                       args=["fit", "--config", str(config(folder)), "--ckpt_path", str(bad)])
        assert not (folder / "ckpt").exists()


def test_another_architecture_is_refused(tmp_path, ckpt):
    state = load_checkpoint(ckpt)
    state["hyper_parameters"]["denoiser"] = {"class_path": "lightning_infdiff.denoisers.ADMUNetDenoiser",
                                             "init_args": {"resolution": 16, "channels": 8}}
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    with pytest.raises(ValueError, match=r"other\.ckpt does not match its own configuration"):
        load_module(other)


def test_resuming_another_model_is_refused_with_the_keys_that_differ(tmp_path, ckpt, capsys):
    """LightningCLI would build the checkpoint's model in place of the configured one, silently."""
    folder = tmp_path / "other"
    other = config(folder, **{"model.denoiser.init_args.num_classes": 10, "model.val_seed": 3})
    err = cli_error(capsys, ["fit", "--config", str(other), "--ckpt_path", str(ckpt)])
    err = err.strip().splitlines()[-1]  # (pytest's own argv can make Lightning warn before it)
    assert err.startswith("infdiff fit: error: --ckpt_path ") and "Traceback" not in err
    assert "model.denoiser.init_args.num_classes: configured 10, checkpoint 0" in err
    assert "model.val_seed: configured 3, checkpoint 1234" in err and "--resume_model checkpoint" in err
    assert not (folder / "ckpt").exists()  # nothing was trained

    # told to, it continues the checkpoint's model and says so
    cli = InfDiffCLI(DiffusionModule, FieldDataModule, save_config_callback=None,
                     args=["fit", "--config", str(other), "--ckpt_path", str(ckpt), "--resume_model", "checkpoint",
                           "--trainer.max_steps", "2"])
    assert cli.model.denoiser.num_classes == 0 and cli.trainer.global_step == 2
    assert "--resume_model checkpoint: using the model stored in" in capsys.readouterr().err

    # the same model resumes without a word (the data decides in_channels, so that is no difference)
    same = InfDiffCLI(DiffusionModule, FieldDataModule, save_config_callback=None,
                      args=["fit", "--config", str(config(tmp_path / "same")), "--ckpt_path", str(ckpt),
                            "--trainer.max_steps", "2"])
    assert same.trainer.global_step == 2 and "resume_model" not in capsys.readouterr().err


def test_safetensors_without_config_and_failed_export_keeps_the_old_file(tmp_path, ckpt, monkeypatch):
    from safetensors.torch import save_file

    raw = tmp_path / "raw.safetensors"
    save_file({"w": torch.ones(2)}, str(raw))
    with pytest.raises(ValueError, match=r"raw\.safetensors has no lightning_infdiff configuration"):
        load_safetensors(raw)
    out = tmp_path / "model.safetensors"
    export_safetensors(ckpt, out)
    before = out.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(OSError, match=r"model\.safetensors.*the disk is full.*previous checkpoint there is intact"):
        export_safetensors(ckpt, out)
    monkeypatch.undo()
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.safetensors", "raw.safetensors"]


# ------------------------------------------------------------------ CLI arguments
@pytest.mark.parametrize("grid", ["0", "1", "1x1", "0x64", "64x", "abc"])
def test_sampling_grid_of_zero_or_one_pixel(capsys, ckpt, tmp_path, grid):
    err = cli_error(capsys, ["sample", "--ckpt_path", str(ckpt), "--grid", grid, "--out", str(tmp_path)])
    assert "grid must" in err and repr(grid) in err


@pytest.mark.parametrize(
    "args,message",
    [(["--scale", "-1"], "--scale must be positive"), (["--scale", "2", "--grid", "8"], "exactly one"),
     (["--grid", "8", "--num", "0"], "must be positive"), (["--grid", "8", "--labels", "[1]"], "unconditional"),
     (["--grid", "8", "--guidance_scale", "3"], "--guidance_scale 3 needs a class-conditional model")],
)
def test_bad_sample_arguments(capsys, ckpt, tmp_path, args, message):
    assert message in cli_error(capsys, ["sample", "--ckpt_path", str(ckpt), "--out", str(tmp_path), *args])


def test_guidance_on_an_unconditional_model_is_refused_by_the_applications_too(capsys, ckpt, tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("L", (16, 16), 128).save(image)
    for command in (["inpaint", "--mask", "left-half"], ["superres", "--scale", "2"]):
        err = cli_error(capsys, [command[0], "--ckpt_path", str(ckpt), "--image", str(image), "--out", str(tmp_path / "o"),
                                 "--guidance_scale", "2", *command[1:]])
        assert err.strip().splitlines()[-1].startswith(f"infdiff {command[0]}: error: --guidance_scale 2 needs a class-")


def test_missing_checkpoint_on_the_command_line(capsys, tmp_path):
    err = cli_error(capsys, ["sample", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--grid", "8"])
    assert "checkpoint not found" in err and "nope.ckpt" in err


def test_non_writable_output_folder_fails_before_sampling(capsys, ckpt, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file, not a folder")
    err = cli_error(capsys, ["sample", "--ckpt_path", str(ckpt), "--grid", "8", "--out", str(blocker / "samples")])
    assert "cannot write to the output folder" in err and "a_file/samples" in err
    # a read-only folder (simulated: the tests run as root, which ignores permission bits)
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.png").write_bytes(b"earlier output")
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    called = []
    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    monkeypatch.setattr(DiffusionModule, "generate", lambda *a, **k: called.append(1))
    err = cli_error(capsys, ["sample", "--ckpt_path", str(ckpt), "--grid", "8", "--out", str(out)])
    assert "cannot write to the output folder" in err and "Permission denied" in err
    assert not called and (out / "keep.png").read_bytes() == b"earlier output"


def test_the_command_line_prints_none_of_lightnings_warnings_about_its_own_arguments(tmp_path, monkeypatch, recwarn):
    """`infdiff fit ...` from a shell: LightningCLI reads sys.argv itself instead of being handed it
    (which made it warn "LightningCLI's args parameter is intended to run from within Python")."""
    monkeypatch.setattr(sys, "argv", ["infdiff", "fit", "--config", str(config(tmp_path / "run")), "--print_config"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


# ------------------------------------------------------------------ one-line errors from `infdiff fit`
def one_line_error(capsys, args: list[str]) -> str:
    """``main(args)`` exits 2 and its last stderr line is the error, with no traceback."""
    err = cli_error(capsys, args)
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--data.subsample_rate", "0"], "data.subsample_rate: subsampling rate must be an integer >= 1"),
        (["--data.subsample_rate", "1000"], "data.subsample_rate: subsampling rate 1000 leaves"),
        (["--data.resolution", "0"], "data.resolution must be an integer >= 2"),
        (["--data.batch_size", "-1"], "data.batch_size must be an integer >= 1, got -1"),
        (["--data.batch_size", "0"], "data.batch_size must be an integer >= 1, got 0"),
        (["--data.num_workers", "-1"], "data.num_workers must be >= 0"),
        (["--data.val_size", "100"], "data.val_size / data.val_fraction: val_size must be in [0, 16)"),
        (["--trainer.precision", "bf16-true"], "trainer.precision='bf16-true' is not supported"),
        (["--model.denoiser.init_args.num_classes", "10"], "model.denoiser.init_args.num_classes=10 but the data has"),
    ],
    ids=["rate0", "rate-too-large", "resolution0", "batch-negative", "batch0", "workers", "val-size",
         "bf16-true", "num-classes"],
)
def test_bad_fit_settings_are_one_line_errors_naming_the_key(tmp_path, capsys, extra, expected):
    folder = tmp_path / "run"
    line = one_line_error(capsys, ["fit", "--config", str(config(folder)), *extra])
    assert line.startswith("infdiff fit: error: ") and expected in line, line
    assert not (folder / "ckpt").exists()


def test_image_folder_errors_are_one_line(tmp_path, capsys):
    folder = tmp_path / "run"
    cfg = str(config(folder))
    as_folder = ["--data.source", "lightning_infdiff.data.ImageFolder", "--data.source.init_args.root"]
    line = one_line_error(capsys, ["fit", "--config", cfg, *as_folder, str(tmp_path / "missing")])
    assert "ImageFolder: root" in line and "missing" in line and "is not a directory" in line
    (tmp_path / "empty").mkdir()
    line = one_line_error(capsys, ["fit", "--config", cfg, *as_folder, str(tmp_path / "empty")])
    assert "no supported images found in" in line and "empty" in line
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("L", (20, 20), i * 40).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    line = one_line_error(capsys, ["fit", "--config", cfg, *as_folder, str(images), "--data.source.init_args.strict", "true"])
    assert "cannot read image file" in line and "broken.png" in line


def test_unwritable_logger_folder_is_one_line_and_a_failed_start_leaves_no_version_folder(tmp_path, capsys):
    folder = tmp_path / "run"
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    tb = ["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir"]
    line = one_line_error(capsys, ["fit", "--config", str(config(folder)), *tb, str(blocker / "runs")])
    assert line.startswith("infdiff fit: error: trainer.logger.save_dir: cannot write to the output folder")
    # a run that fails in set-up (after the logger folder was made) removes its empty version folder
    runs = tmp_path / "runs"
    one_line_error(capsys, ["fit", "--config", str(config(folder)), *tb, str(runs),
                            "--model.denoiser.init_args.num_classes", "10"])
    assert not list(runs.rglob("version_*")), list(runs.rglob("*"))


def test_yaml_syntax_errors_name_the_file(tmp_path, capsys):
    folder = tmp_path / "run"
    bad = tmp_path / "overlay.yaml"
    bad.write_text("data:\n  batch_size: [1,\n")
    line = one_line_error(capsys, ["fit", "--config", str(config(folder)), "--config", str(bad)])
    assert f"{bad}: not valid YAML at line 3, column 1" in line and "<unicode string>" not in line
    sweep = tmp_path / "sweep.yml"
    sweep.write_text("name: x\nbase: [a.yaml\naxes: {}\n")
    from lightning_infdiff import ablate

    assert ablate.main([str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"infdiff ablate: error: {sweep}: not valid YAML at line 3" in err and "Traceback" not in err


# ------------------------------------------------------------------ checkpoints named for what they are
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_random_bytes_are_called_corrupt_and_torchs_advice_is_not_relayed(tmp_path, capsys, command):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    verb = "resume from" if command == "fit" else "load"
    line = one_line_error(capsys, [command, "--config", str(config(tmp_path / "run")), "--ckpt_path", str(junk)])
    assert f"cannot {verb} '{junk}': the file is corrupt" in line
    assert "weights_only" not in line and "could run code" not in line
    line = one_line_error(capsys, ["sample", "--ckpt_path", str(junk), "--grid", "8", "--out", str(tmp_path / "o")])
    assert "the file is corrupt" in line and "weights_only" not in line


def test_validate_with_a_crafted_checkpoint_says_load_not_resume(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, evil)
    line = one_line_error(capsys, ["validate", "--config", str(config(tmp_path / "run")), "--ckpt_path", str(evil)])
    assert f"refusing to load '{evil}': it holds a pickled" in line and "resume" not in line
    assert "weights_only=False" not in line


def test_weights_only_false_needs_a_loud_opt_in(tmp_path, capsys, ckpt):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.ckpt"
    state = load_checkpoint(ckpt)
    state["payload"] = Evil()
    torch.save(state, evil)
    folder = tmp_path / "run"
    for command in ("fit", "validate"):
        line = one_line_error(capsys, [command, "--config", str(config(folder)), "--ckpt_path", str(evil),
                                       "--weights_only", "false"])
        assert "--weights_only false would unpickle arbitrary objects" in line
        assert "--unsafe_allow_checkpoint_code true" in line
    assert not marker.exists()  # nothing was unpickled
    # with the opt-in, a file of one's own loads unrestricted, and the command says so
    main(["fit", "--config", str(config(folder)), "--ckpt_path", str(ckpt), "--weights_only", "false",
          "--unsafe_allow_checkpoint_code", "true", "--trainer.max_steps", "2"])
    assert "WARNING: --unsafe_allow_checkpoint_code" in capsys.readouterr().err
    assert load_checkpoint(folder / "ckpt" / "last.ckpt")["global_step"] == 2
