"""Every YAML in configs/ instantiates (on top of the default stack and in documented combinations)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lightning_infdiff.cli import InfDiffCLI
from lightning_infdiff.data import FieldDataModule
from lightning_infdiff.lit import DiffusionModule
from lightning_infdiff.operators import HeatKernelOperator
from lightning_infdiff.schedules import ShiftedSchedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OVERLAYS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.name != "base.yaml")
#: base.yaml holds the trainer, callbacks and optimiser; a run adds data and a denoiser
STACK = (CONFIGS / "base.yaml", CONFIGS / "data/digits.yaml", CONFIGS / "denoisers/sparse_operator.yaml")


def instantiate(*configs: Path, extra: tuple[str, ...] = ()) -> InfDiffCLI:
    args = []
    for c in configs:
        args += ["--config", str(c)]
    return InfDiffCLI(DiffusionModule, FieldDataModule, run=False, args=[*args, "--trainer.logger", "false", *extra])


def folder_args(tmp_path: Path, overlay: Path) -> tuple[str, ...]:
    if overlay.name != "folder.yaml":
        return ()
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 60, 10, 200)).save(tmp_path / f"{i}.png")
    return ("--data.source.init_args.root", str(tmp_path))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_overlay_instantiates(overlay, tmp_path):
    cli = instantiate(*STACK, overlay, extra=folder_args(tmp_path, overlay))
    assert isinstance(cli.model, DiffusionModule)
    assert cli.model.denoiser.in_channels == cli.datamodule.channels


def test_overlays_compose():
    cli = instantiate(
        CONFIGS / "base.yaml", CONFIGS / "data/animals.yaml", CONFIGS / "denoisers/sparse_operator.yaml",
        CONFIGS / "process/mollified.yaml", CONFIGS / "process/shifted.yaml", CONFIGS / "process/eps.yaml",
    )
    proc = cli.model.process
    assert isinstance(proc.operator, HeatKernelOperator) and proc.operator.width == pytest.approx(1 / 64)
    assert isinstance(proc.schedule, ShiftedSchedule) and proc.schedule.reference == 16
    assert proc.param.name == "eps"


def test_folder_overlay_needs_a_root():
    with pytest.raises((SystemExit, ValueError, FileNotFoundError)):
        instantiate(*STACK, CONFIGS / "data/folder.yaml")


DENOISERS = sorted((CONFIGS / "denoisers").glob("*.yaml"))


@pytest.mark.parametrize("overlay", DENOISERS, ids=lambda p: p.stem)
def test_each_denoiser_config_fast_dev_run(overlay, tmp_path):
    """fit with fast_dev_run (one training and one validation batch, with sampling) per denoiser."""
    cli = InfDiffCLI(
        DiffusionModule, FieldDataModule,
        args=["fit", "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "data/blobs.yaml"),
              "--config", str(CONFIGS / "denoisers/sparse_operator.yaml"),  # the autoencoder composes after it
              "--config", str(overlay), "--trainer.fast_dev_run", "true", "--trainer.precision", "32-true",
              "--trainer.default_root_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false", "--data.batch_size", "4", "--data.val_size", "4",
              "--data.num_workers", "0", "--data.source.init_args.length", "16",
              "--samples.num_samples", "1", "--model.sampling.steps", "1",
              "--samples.grids", "[[32, 32], [24, 40]]"],
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 1


def test_base_holds_only_trainer_callbacks_and_optimiser():
    """Configs without copies: the model and the data come from overlays, each block in one file."""
    import yaml

    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    assert set(base["model"]) == {"optimizer", "lr_scheduler"} and set(base["data"]) == {"num_workers"}
    blocks: dict[str, Path] = {}
    for path in CONFIGS.rglob("*.yaml"):
        denoiser = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("denoiser") or {}
        args = denoiser.get("init_args") or {}
        if len(args) >= 8:  # a full denoiser block: no other file may hold the same one
            key = repr(sorted(args.items()))
            assert key not in blocks, f"{path} copies the denoiser block of {blocks[key]}"
            blocks[key] = path


def test_main_job_stack_resolves():
    from lightning_infdiff.quickstart import MAIN_JOB

    cli = instantiate(*MAIN_JOB)
    assert type(cli.model.denoiser).__name__ == "SparseNeuralOperator" and cli.model.denoiser.num_classes == 10
    assert type(cli.model.process.operator).__name__ == "HeatKernelOperator" and cli.datamodule.sampler.rate == 2


def test_no_project_file_is_ignored_by_git():
    """CI runs on a clean checkout: a config, module or test that .gitignore matches exists only
    on the machine that wrote it (a bare ``ablations/`` pattern once hid configs/ablations/denoisers/)."""
    import shutil
    import subprocess

    root = CONFIGS.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    dirs = ["configs", "lightning_infdiff", "tests", "benchmarks", "notebooks"]
    files = [str(p.relative_to(root)) for d in dirs for p in (root / d).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc"}]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=root, input="\n".join(files),
                          capture_output=True, text=True)
    ignored = [f for f in proc.stdout.splitlines() if f]
    assert not ignored, f"project files matched by .gitignore (they would not reach CI): {ignored[:10]}"
