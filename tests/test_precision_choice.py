"""Precision chosen by the hardware (issue 32): the resolver's decision table with the capability
queries faked, the CLI's resolution of ``trainer.precision: null``, and every inference path
going through :func:`lightning_infdiff.precision.inference_autocast`."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_lit import run_fit, tiny_config

from lightning_infdiff import precision as P
from lightning_infdiff.denoisers import SparseNeuralOperator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _forget_cached_capabilities():
    """The sparse conv caches the CPU's answer: a faked one must not outlive its test."""
    from lightning_infdiff.denoisers.layers.sparse_conv import _native_cpu_bf16

    _native_cpu_bf16.cache_clear()
    yield
    _native_cpu_bf16.cache_clear()


def fake(monkeypatch, cuda=None, cpu=(False, "this CPU has no native bf16 (faked)"), mps=False):
    """Fake the capability queries: ``cuda`` None (no device) or whether it has bf16; ``cpu`` the CPU answer."""
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: cuda is not None)
    monkeypatch.setattr(P, "cuda_bf16_support", lambda fork_safe=False: (bool(cuda), "Fake GPU"))
    monkeypatch.setattr(P, "cpu_bf16_support", lambda machine=None: cpu)
    mps_backend = getattr(torch.backends, "mps", None)
    if mps_backend is not None:
        monkeypatch.setattr(mps_backend, "is_available", lambda: mps)


# ------------------------------------------------------------------ the decision table
@pytest.mark.parametrize("accelerator,cuda,cpu,mps,expect", [
    ("auto", True, (False, "x"), False, "bf16-mixed"),      # CUDA with bf16
    ("gpu", True, (False, "x"), False, "bf16-mixed"),
    ("cuda", False, (True, "x"), False, "16-mixed"),        # CUDA without bf16
    ("auto", False, (True, "x"), False, "16-mixed"),
    ("auto", None, (True, "x"), False, "bf16-mixed"),       # CPU with native bf16
    ("cpu", True, (True, "x"), False, "bf16-mixed"),        # CPU asked for although CUDA is there
    ("cpu", True, (False, "x"), False, "32-true"),          # CPU without native bf16
    ("auto", None, (False, "x"), False, "32-true"),
    ("auto", None, (None, "cannot tell"), False, "32-true"),  # cannot tell: fp32
    ("auto", None, (True, "x"), True, "32-true"),           # Apple GPU: no rule, fp32
    ("mps", None, (True, "x"), True, "32-true"),
    ("cuda", None, (True, "x"), False, "32-true"),          # CUDA asked for, none visible
])
def test_resolver_decision_table(monkeypatch, accelerator, cuda, cpu, mps, expect):
    fake(monkeypatch, cuda=cuda, cpu=cpu, mps=mps)
    choice = P.resolve_precision(accelerator)
    assert choice.precision == expect
    assert choice.reason and str(choice) == f"precision {expect}: {choice.reason}"


def test_resolver_reasons_name_the_evidence(monkeypatch):
    fake(monkeypatch, cuda=False)
    assert "Fake GPU" in P.resolve_precision("auto").reason and "no bf16" in P.resolve_precision("auto").reason
    fake(monkeypatch, cpu=(None, "cannot tell whether this riscv64 CPU has native bf16"))
    assert P.resolve_precision("cpu").reason.startswith("cannot tell") and "fp32" in P.resolve_precision("cpu").reason


def test_resolver_reads_an_accelerator_object_or_class_path(monkeypatch):
    from jsonargparse import Namespace
    from lightning.pytorch.accelerators import CPUAccelerator

    fake(monkeypatch, cuda=True, cpu=(True, "x"))
    assert P.resolve_precision(CPUAccelerator()).precision == "bf16-mixed"
    assert P.resolve_precision(Namespace(class_path="lightning.pytorch.accelerators.CPUAccelerator")).precision == "bf16-mixed"
    fake(monkeypatch, cuda=True, cpu=(False, "x"))
    assert P.resolve_precision(CPUAccelerator()).precision == "32-true"


# ------------------------------------------------------------------ CPU capability detection
@pytest.mark.parametrize("flags,expect,word", [
    ({"avx2", "avx512f", "avx512bw"}, False, "no native bf16"),   # the Xeon without AVX512-BF16/AMX
    ({"avx2"}, False, "no native bf16"),                          # an AVX2-only EPYC
    ({"avx512f", "avx512_bf16"}, True, "AVX512-BF16"),             # the EPYC with AVX512-BF16
    ({"avx512f", "amx_bf16", "amx_tile"}, True, "AMX-BF16"),       # the Xeon with AMX
])
def test_cpu_flags_from_proc_cpuinfo(monkeypatch, flags, expect, word):
    monkeypatch.setattr(P, "_torch_cpu_capabilities", lambda: None)
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda path=None: flags)
    native, evidence = P.cpu_bf16_support("x86_64")
    assert native is expect and word in evidence and "/proc/cpuinfo" in evidence


def test_cpu_capabilities_from_torch_win_over_cpuinfo(monkeypatch):
    monkeypatch.setattr(P, "_torch_cpu_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda path=None: set())
    native, evidence = P.cpu_bf16_support("x86_64")
    assert native is True and "AMX-BF16" in evidence and "torch.cpu.get_capabilities" in evidence


def test_cpu_cannot_tell_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(P, "_torch_cpu_capabilities", lambda: None)
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda path=None: None)
    assert P.cpu_bf16_support("x86_64")[0] is None
    assert P.cpu_bf16_support("riscv64")[0] is None
    assert P.cpu_bf16_support("aarch64")[0] is None


def test_arm_bf16_feature(monkeypatch):
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda path=None: {"fp", "asimd", "bf16", "i8mm"})
    assert P.cpu_bf16_support("aarch64")[0] is True
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda path=None: {"fp", "asimd"})
    assert P.cpu_bf16_support("aarch64")[0] is False


def test_cpuinfo_parser_reads_x86_and_arm_files(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags : fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert P._cpuinfo_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert P._cpuinfo_flags(arm) == {"fp", "asimd", "bf16"}
    assert P._cpuinfo_flags(tmp_path / "missing") is None


def test_this_machine_gives_an_answer_consistent_with_its_flags():
    """No fake: whatever this CPU is, the answer agrees with /proc/cpuinfo where that exists."""
    native, evidence = P.cpu_bf16_support()
    flags = P._cpuinfo_flags()
    if flags is not None and P.platform.machine().lower() in ("x86_64", "amd64"):
        assert native is bool({"avx512_bf16", "amx_bf16"} & flags), evidence


# ------------------------------------------------------------------ inference precision
def test_inference_precision_auto_follows_the_rule_and_explicit_values_win(monkeypatch):
    fake(monkeypatch, cpu=(True, "native (faked)"))
    assert P.inference_precision("cpu").dtype is torch.bfloat16
    assert P.inference_precision("cpu", "32").dtype is None
    fake(monkeypatch, cpu=(False, "none (faked)"))
    assert P.inference_precision("cpu").dtype is None
    assert P.inference_precision("cpu", "bf16").dtype is torch.bfloat16
    assert P.inference_precision("cpu", "bf16-mixed").precision == "bf16-mixed"
    assert P.inference_precision("cpu", "32-true").dtype is None
    with pytest.raises(ValueError, match="fp16 autocast.*CUDA"):
        P.inference_precision("cpu", "16")
    with pytest.raises(ValueError, match="precision must be one of auto, 32, bf16, 16"):
        P.inference_precision("cpu", "fp8")


def test_inference_autocast_enables_autocast_only_for_reduced_precision(monkeypatch):
    fake(monkeypatch, cpu=(True, "native (faked)"))
    said = []
    with P.inference_autocast("cpu", announce=said.append):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
    assert said == ["precision bf16-mixed: native (faked)"]
    fake(monkeypatch, cpu=(False, "none (faked)"))
    with P.inference_autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


# ------------------------------------------------------------------ training: the CLI resolves null
def test_cli_resolves_an_unset_precision_records_and_prints_it(tmp_path, monkeypatch, caplog):
    fake(monkeypatch, cpu=(False, "this CPU has no native bf16 (faked)"))
    with caplog.at_level("INFO"):
        cli = run_fit(tiny_config(tmp_path, **{"trainer.precision": None, "trainer.max_steps": 1,
                                               "samples.every_n_val": 0}))
    assert cli.trainer.precision == "32-true"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision ")]
    assert said == ["precision 32-true: this CPU has no native bf16 (faked)"]
    log_dir = Path(cli.trainer.logger.log_dir)
    assert yaml.safe_load((log_dir / "config.yaml").read_text())["trainer"]["precision"] == "32-true"
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["precision"] == "32-true" and hparams["precision_reason"] == "this CPU has no native bf16 (faked)"


def test_cli_picks_bf16_on_a_native_cpu_and_an_explicit_value_wins(tmp_path, monkeypatch):
    from lightning_infdiff.cli import InfDiffCLI
    from lightning_infdiff.data import FieldDataModule
    from lightning_infdiff.lit import DiffusionModule

    fake(monkeypatch, cpu=(True, "native (faked)"))
    cfg = tiny_config(tmp_path, **{"trainer.precision": None})
    cli = InfDiffCLI(DiffusionModule, FieldDataModule, args=["--config", str(cfg)], run=False)
    assert cli.trainer.precision == "bf16-mixed" and cli.precision_choice.reason == "native (faked)"
    cli = InfDiffCLI(DiffusionModule, FieldDataModule, args=["--config", str(cfg), "--trainer.precision", "32-true"],
                     run=False)
    assert cli.trainer.precision == "32-true" and cli.precision_choice.reason == "set by trainer.precision"


def test_the_shipped_configs_leave_precision_to_the_hardware():
    base = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    assert base["trainer"]["precision"] is None
    for path in (ROOT / "configs").rglob("*.yaml"):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
        assert "precision" not in trainer or path.name == "base.yaml", f"{path} fixes the precision"


# ------------------------------------------------------------------ every inference path uses the helper
TORCH_AUTOCAST = {"torch.autocast", "autocast", "torch.amp.autocast", "torch.cpu.amp.autocast", "torch.cuda.amp.autocast"}


def _autocast_calls_with_a_dtype(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in TORCH_AUTOCAST:
            if any(k.arg == "dtype" for k in node.keywords) or len(node.args) > 1:
                lines.append(node.lineno)
    return lines


def test_no_inference_path_hard_codes_an_autocast_dtype():
    """Only lightning_infdiff/precision.py may pick an autocast dtype (others may only turn it off)."""
    offenders = []
    for path in sorted((ROOT / "lightning_infdiff").rglob("*.py")):
        if path.name == "precision.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n in _autocast_calls_with_a_dtype(ast.parse(path.read_text()))]
    assert offenders == []


def test_every_notebook_cell_that_samples_enters_the_helper():
    calls = ("generate(", "sample(", "inpaint(", "superres(", "progressive_sample(")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] != "code":
                continue
            assert _autocast_calls_with_a_dtype(ast.parse(src)) == [], path
            sampling = [c for c in calls if c in src.replace("def show(", "")]
            if sampling:
                assert "inference_autocast(" in src, f"{path.name}: a cell calls {sampling} outside inference_autocast"


@pytest.fixture
def seen(monkeypatch):
    """Record the autocast state the denoiser's forward runs under."""
    states: list[torch.dtype | None] = []
    forward = SparseNeuralOperator.forward

    def spy(self, *args, **kwargs):
        states.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SparseNeuralOperator, "forward", spy)
    return states


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    cli = run_fit(tiny_config(tmp_path_factory.mktemp("prec"), **{"trainer.max_steps": 1, "samples.every_n_val": 0}))
    return cli.trainer.checkpoint_callback.last_model_path


@pytest.fixture
def image(tmp_path) -> str:
    from PIL import Image

    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy()).save(tmp_path / "img.png")
    return str(tmp_path / "img.png")


def _commands(ckpt: str, image: str, out: Path) -> dict[str, list[str]]:
    return {
        "sample": ["sample", "--ckpt_path", ckpt, "--grid", "8", "--num", "1", "--steps", "1", "--out", str(out)],
        "inpaint": ["inpaint", "--ckpt_path", ckpt, "--image", image, "--num", "1", "--steps", "1", "--out", str(out)],
        "superres": ["superres", "--ckpt_path", ckpt, "--image", image, "--scale", "2", "--num", "1", "--steps", "1",
                     "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["sample", "inpaint", "superres"])
@pytest.mark.parametrize("native", [True, False])
def test_commands_follow_the_rule_and_say_which_precision(ckpt, image, tmp_path, monkeypatch, seen, capsys, command,
                                                          native):
    from lightning_infdiff.cli import main

    fake(monkeypatch, cpu=(native, "faked"))
    main(_commands(ckpt, image, tmp_path / "out")[command])
    want = torch.bfloat16 if native else None
    assert seen and set(seen) == {want}
    assert f"precision {'bf16-mixed' if native else '32-true'}: faked" in capsys.readouterr().err
    seen.clear()
    main([*_commands(ckpt, image, tmp_path / "out2")[command], "--precision", "32"])
    assert set(seen) == {None}


@pytest.mark.parametrize("native", [True, False])
def test_evaluate_and_quickstart_follow_the_rule(ckpt, tmp_path, monkeypatch, seen, capsys, native):
    from lightning_infdiff import quickstart
    from lightning_infdiff.checkpoint import load_module
    from lightning_infdiff.cli import main
    from lightning_infdiff.metrics import classifier as clf

    monkeypatch.setenv("LIGHTNING_INFDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(clf, "train_classifier", lambda name: (clf.SmallClassifier(10), 0.5))
    fake(monkeypatch, cpu=(native, "faked"))
    want = {torch.bfloat16 if native else None}
    main(["evaluate", "--ckpt_path", ckpt, "--out", str(tmp_path / "eval"), "--num_samples", "2", "--steps", "1",
          "--metrics", "[offline]"])
    assert set(seen) == want and "precision " in capsys.readouterr().err
    seen.clear()
    quickstart.evaluate_digits(load_module(ckpt), [(8, 8)], tmp_path / "q", per_class=1, steps=1)
    assert set(seen) == want


@pytest.mark.parametrize("precision,want", [("bf16-mixed", torch.bfloat16), ("32-true", None)])
def test_fid_callback_samples_in_the_trainers_precision(tmp_path, monkeypatch, seen, precision, want):
    """Training steps run under the trainer's autocast; the FID samples (outside the step) must too."""
    from test_metrics_callback import offline_features, tiny_dm, tiny_module, trainer

    from lightning_infdiff.callbacks import FIDCallback

    fake(monkeypatch, cpu=(want is None, "faked the other way"))  # "auto" would pick the other precision
    fid = FIDCallback([offline_features()], resolutions=[[8, 8]], num_samples=2, steps=1, cache=str(tmp_path))
    calls = []
    monkeypatch.setattr(fid, "evaluate", lambda *a, **k: calls.append(len(seen)) or FIDCallback.evaluate(fid, *a, **k))
    trainer([fid], precision=precision).fit(tiny_module(), datamodule=tiny_dm())
    assert calls and len(seen) > calls[0] and set(seen) == {want}


def test_torch_capabilities_may_come_as_a_read_only_mapping(monkeypatch):
    """torch returns a mappingproxy: it must be read, not mistaken for 'torch cannot tell'."""
    from types import MappingProxyType

    monkeypatch.setattr(P.torch.cpu, "get_capabilities", lambda: MappingProxyType({"avx512_bf16": True, "amx_bf16": False}),
                        raising=False)
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda path=None: None)
    native, evidence = P.cpu_bf16_support("x86_64")
    assert native is True and "torch.cpu.get_capabilities" in evidence


# ------------------------------------------------------------------ the main job's entry points
def test_entry_points_pin_malloc_unless_told_not_to(monkeypatch):
    from lightning_infdiff.malloc import pin_malloc

    monkeypatch.setenv("LIGHTNING_INFDIFF_MALLOC", "system")
    assert pin_malloc(respect_env=True) == {"pinned": False, "why": "LIGHTNING_INFDIFF_MALLOC=system"}
    assert pin_malloc()["pinned"] in (True, False)  # benchmarks pin regardless (False only without glibc)


def test_quickstart_reports_steps_precision_and_validation_share(tmp_path, monkeypatch):
    """The main job end to end at tiny settings: the summary has what the README quotes, and the
    final sample sheets are in TensorBoard."""
    from lightning_infdiff import quickstart
    from lightning_infdiff.metrics import classifier as clf

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(clf, "load_classifier", lambda name, retrain=False: (clf.SmallClassifier(10).eval(), 0.5))
    fake(monkeypatch, cpu=(False, "no native bf16 (faked)"))
    quickstart.main([
        "--config", str(ROOT / "configs" / "data" / "blobs.yaml"), "--model.denoiser.init_args.num_classes=0",
        "--model.sampling.guidance_scale=1.0", "--data.resolution=8", "--model.denoiser.init_args.train_resolution=8",
        "--model.denoiser.init_args.inner_resolution=4", "--model.denoiser.init_args.channels=8",
        "--model.denoiser.init_args.inner_channels=8", "--model.denoiser.init_args.channel_mult=[1]",
        "--model.denoiser.init_args.attention_resolutions=[]", "--model.denoiser.init_args.head_channels=8",
        "--model.denoiser.init_args.emb_dim=16", "--model.denoiser.init_args.depth=1", "--data.batch_size=4",
        "--data.val_size=4", "--data.num_workers=0", "--data.source.init_args.length=16",
        "--trainer.max_steps=4", "--trainer.max_time=null", "--trainer.val_check_interval=2",
        "--model.sampling.steps=1", "--samples.grids=[[8, 8]]", "--trainer.enable_progress_bar=false",
    ])
    summary = json.loads(next(tmp_path.rglob("quickstart_summary.json")).read_text())
    assert summary["steps"] == 4 and summary["precision"] == "32-true"
    assert summary["precision_reason"] == "no native bf16 (faked)"
    assert summary["validation_runs"] == 2 and 0 < summary["validation_s"] < summary["train_wall_s"]
    assert summary["validation_share"] == pytest.approx(summary["validation_s"] / summary["train_wall_s"])
    assert [g["grid"] for g in summary["grids"]] == ["8x8", "16x16", "32x32", "8x16"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(summary["log_dir"]))).Reload()
    assert {f"quickstart/{g}" for g in ("8x8", "16x16", "32x32", "8x16")} <= set(events.Tags()["images"])
