"""Every YAML in configs/ instantiates (alone on top of base.yaml and in documented combinations)."""

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
    cli = instantiate(CONFIGS / "base.yaml", overlay, extra=folder_args(tmp_path, overlay))
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
        instantiate(CONFIGS / "base.yaml", CONFIGS / "data/folder.yaml")


DENOISERS = sorted((CONFIGS / "denoisers").glob("*.yaml"))


@pytest.mark.parametrize("overlay", DENOISERS, ids=lambda p: p.stem)
def test_each_denoiser_config_fast_dev_run(overlay, tmp_path):
    """fit with fast_dev_run (one training and one validation batch, with sampling) per denoiser."""
    cli = InfDiffCLI(
        DiffusionModule, FieldDataModule,
        args=["fit", "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "data/blobs.yaml"),
              "--config", str(overlay), "--trainer.fast_dev_run", "true", "--trainer.precision", "32-true",
              "--trainer.enable_progress_bar", "false", "--data.batch_size", "4", "--data.val_size", "4",
              "--data.num_workers", "0", "--data.source.init_args.length", "16",
              "--model.num_samples", "1", "--model.sample_steps", "1",
              "--model.sample_grids", "[[32, 32], [24, 40]]"],
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 1


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
