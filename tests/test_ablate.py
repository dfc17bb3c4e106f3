"""infdiff ablate + infdiff report: a real 2x2 sweep, resumption, failures, sweep-file checks."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_infdiff import ablate, report
from lightning_infdiff.cli import InfDiffCLI, main
from lightning_infdiff.data import FieldDataModule
from lightning_infdiff.lit import DiffusionModule

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "ablations").glob("*.yml"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _NoPopen:
    def __init__(self, *a, **k):
        raise AssertionError("a finished or failed run was launched again")


def _eval_lines(run_dir: Path, values: dict[tuple[int, int], float]) -> None:
    """What `infdiff evaluate` appends to <run>/eval/results.jsonl (one line per metric and grid)."""
    (run_dir / "eval").mkdir()
    with (run_dir / "eval" / "results.jsonl").open("w") as f:
        for (h, w), v in values.items():
            f.write(json.dumps({"checkpoint": "logs/checkpoints/last.ckpt", "metric": "fid_clip", "resolution": [h, w],
                                "value": v, "num_samples": 8, "sampler": "dpmpp_2m", "steps": 2, "seed": 0,
                                "wall_seconds": 1.0}) + "\n")


@pytest.mark.slow
def test_smoke_sweep_2x2_report_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "smoke"
    assert ablate.main([str(ROOT / "configs/ablations/smoke.yml"), "--out", str(out)]) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    names = [r["name"] for r in manifest["runs"]]
    assert names == ["denoiser-fno__rate-1", "denoiser-fno__rate-4", "denoiser-coord_mlp__rate-1", "denoiser-coord_mlp__rate-4"]
    lines = [ln for ln in (out / "commands.sh").read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == 4 and all(" fit --config " in ln for ln in lines)
    assert [f"--data.subsample_rate={n[-1]}" in ln for n, ln in zip(names, lines, strict=True)] == [True] * 4
    for name in names:
        run_dir = out / name
        assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
        tp = json.loads((run_dir / "logs" / "throughput.json").read_text())
        assert tp["steps_measured"] == 2 and tp["global_step"] == 2 and tp["sample_grid"] == [16, 16]
        assert tp["step_time_median_s"] > 0 and tp["sample_seconds_per_image"] > 0 and 50 < tp["train_peak_rss_mib"] <= tp["run_peak_rss_mib"]

    # no evaluation files yet: empty metric columns, the metric plot is skipped with a reason
    res = report.write_report(out)
    assert not any("@" in k for row in res["rows"] for k in row)
    assert "No evaluation results" in res["markdown"].read_text()
    assert res["plots"]["metric_vs_resolution"] == "no evaluation results"

    # evaluation results for three of the four runs
    for i, name in enumerate(names[:3]):
        _eval_lines(out / name, {(16, 16): 10.0 + i, (32, 32): 20.0 + i, (16, 32): 30.0 + i})
    res = report.write_report(out)
    rows = {r["run"]: r for r in report.load_table(res["csv"])}
    assert set(rows) == set(names)
    assert rows[names[1]]["fid_clip@32x32"] == 21.0 and rows[names[3]]["fid_clip@32x32"] is None
    for name in names:
        row, run_dir = rows[name], out / name
        curve = [json.loads(ln) for ln in (run_dir / "logs/val_loss_by_logsnr.jsonl").read_text().splitlines()][-1]["curve"]
        # one validation batch: val/loss (from the TensorBoard events) is the mean of the curve
        assert row["val_loss"] == pytest.approx(statistics.fmean(p["loss"] for p in curve), rel=1e-5)
        tp = json.loads((run_dir / "logs/throughput.json").read_text())
        assert row["step_time_ms"] == pytest.approx(1000 * tp["step_time_median_s"])
        assert row["subsample_rate"] == float(row["rate"]) and row["num_params"] == tp["num_params"]
    assert rows[names[0]]["denoiser_class"] == "FNODenoiser" and rows[names[2]]["denoiser_class"] == "CoordMLPDenoiser"
    header = res["markdown"].read_text().splitlines()[0]
    assert "fid_clip@16x16" in header and "fid_clip@16x32" in header and "sample_s_per_image" in header
    for key in ("metric_vs_resolution", "loss_vs_logsnr", "cost_vs_subsampling"):
        assert res["plots"][key].read_bytes()[:8] == PNG_MAGIC, key
    assert len(list(res["hparams"].glob("*/events.out.tfevents.*"))) == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(res["hparams"] / names[1]))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert acc.Scalars("hparam/fid_clip@32x32")[-1].value == 21.0

    # resuming launches nothing
    monkeypatch.setattr(ablate.subprocess, "Popen", _NoPopen)
    capsys.readouterr()
    assert ablate.main([str(ROOT / "configs/ablations/smoke.yml"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 4


def _failing_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "fail.yml"
    path.write_text(yaml.safe_dump({
        "base": [str(ROOT / "configs/base.yaml")],
        "axes": {"warmup": {"bad": ["--model.val_logsnr_bins=-1"], "ok": ["--model.val_logsnr_bins=0"]}},
    }))
    return path


def test_failed_run_is_recorded_reported_and_retried(tmp_path, monkeypatch, capsys):
    """A launcher that fails like a crashing run (return code 3, a traceback on stderr)."""
    crash = "import sys; sys.stderr.write('Traceback\\nValueError: invalid model.val_logsnr_bins=-1\\n'); sys.exit(3)"
    launcher = f"{sys.executable} -c \"{crash}\""
    out = tmp_path / "out"
    argv = [str(_failing_sweep(tmp_path)), "--out", str(out), "--launcher", launcher, "--only", "warmup-bad"]
    assert ablate.main(argv) == 1
    status = json.loads((out / "warmup-bad" / "status.json").read_text())
    assert status["status"] == "failed" and status["returncode"] == 3 and status["attempt"] == 1
    assert status["stderr_tail"][-1] == "ValueError: invalid model.val_logsnr_bins=-1"
    text = capsys.readouterr().out
    assert "FAILED warmup-bad: return code 3" in text and "invalid model.val_logsnr_bins=-1" in text
    assert not (out / "warmup-ok").exists()

    res = report.write_report(out)  # a failed run and a run never started: rows with empty cells
    rows = {r["run"]: r for r in res["rows"]}
    assert rows["warmup-bad"]["status"] == "failed" and rows["warmup-bad"]["returncode"] == 3
    assert rows["warmup-ok"]["status"] == "not run" and rows["warmup-ok"]["val_loss"] is None
    assert isinstance(res["plots"]["loss_vs_logsnr"], str)

    real_popen = subprocess.Popen
    monkeypatch.setattr(ablate.subprocess, "Popen", _NoPopen)
    assert ablate.main(argv) == 1  # failures are skipped, still reported
    assert "FAILED before (return code 3)" in capsys.readouterr().out
    monkeypatch.setattr(ablate.subprocess, "Popen", real_popen)
    assert ablate.main([*argv, "--retry-failed"]) == 1
    assert json.loads((out / "warmup-bad" / "status.json").read_text())["attempt"] == 2


def test_dry_run_and_cli_entry(tmp_path, capsys):
    out = tmp_path / "dry"
    # via the infdiff entry point (exit code 0: returns; otherwise SystemExit)
    main(["ablate", str(_failing_sweep(tmp_path)), "--out", str(out), "--dry-run", "--", "--trainer.max_steps=3"])
    text = capsys.readouterr().out
    assert text.count(" fit --config ") == 2 and "--trainer.max_steps=3 --trainer.default_root_dir=" in text
    assert not (out / "warmup-bad").exists() and (out / "commands.sh").is_file()


@pytest.mark.parametrize("spec, message", [
    ({"axes": {}}, "missing key 'base'"),
    ({"base": ["configs/base.yaml"], "axis": {}}, "unknown key"),
    ({"base": ["configs/nope.yaml"]}, "'configs/nope.yaml' not found"),
    ({"base": ["configs/base.yaml"], "overrides": ["--trainer.max_steps", "3"]}, "--key=value"),
    ({"base": ["configs/base.yaml"], "axes": {"a": {"x y": []}}}, "labels may use"),
    ({"base": ["configs/base.yaml"], "axes": {"a": {}}}, "non-empty"),
])
def test_bad_sweep_files_name_the_problem(tmp_path, spec, message):
    path = tmp_path / "s.yml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ablate.load_sweep(path)


class _ParseOnly(InfDiffCLI):
    """Parse and type-check a config without building the model (fast)."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_repository_sweeps_expand_and_parse(sweep, tmp_path):
    """Every run of every sweep in configs/ablations parses (keys and types checked)."""
    runs = ablate.load_sweep(sweep, tmp_path).runs
    assert runs and len({r.name for r in runs}) == len(runs)
    for run in runs:
        cli = _ParseOnly(DiffusionModule, FieldDataModule, run=False, args=run.args)
        assert cli.config["trainer"]["logger"]["init_args"]["version"] == "logs"


def test_throughput_summary_median_skip_and_images_per_second():
    from types import SimpleNamespace

    import torch

    from lightning_infdiff.callbacks import Throughput

    cb = Throughput(skip_steps=2, sample_num=0)
    cb.step_times = [9.0, 7.0, 0.2, 0.4, 0.3]  # the first two (warm-up) are left out
    module = SimpleNamespace(device=torch.device("cpu"), denoiser=torch.nn.Linear(3, 2))
    trainer = SimpleNamespace(global_step=5, datamodule=SimpleNamespace(batch_size=8, resolution=16))
    info = cb.summary(trainer, module)
    assert info["step_time_median_s"] == pytest.approx(0.3) and info["steps_measured"] == 3
    assert info["step_time_mean_s"] == pytest.approx(0.3) and info["images_per_s"] == pytest.approx(8 / 0.3)
    assert info["num_params"] == 3 * 2 + 2 and info["sample_seconds_per_image"] is None
    assert info["sample_grid"] == [16, 16] and info["train_peak_rss_mib"] is None
    cb.step_times = [5.0]  # fewer steps than skip_steps: use them all
    assert cb.summary(trainer, module)["step_time_median_s"] == 5.0
    with pytest.raises(ValueError, match="sample_grid"):
        Throughput(sample_grid=[16])


def test_throughput_measures_validation_time_within_training(tmp_path):
    """Validation runs are timed (a 0.1 s pause per validation batch must show), and their share of
    the training wall time is their sum over it."""
    import time

    import lightning as L
    from test_metrics_callback import tiny_dm, tiny_module

    from lightning_infdiff.callbacks import Throughput

    class Pause(L.Callback):
        def on_validation_batch_end(self, *args, **kwargs):
            time.sleep(0.1)

    cb = Throughput(skip_steps=0, sample_num=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb, Pause()],
                        default_root_dir=tmp_path)
    trainer.fit(tiny_module(), datamodule=tiny_dm())
    info = json.loads((tmp_path / "throughput.json").read_text())
    assert info["validation_runs"] == 2 and info["validation_s"] >= 0.2
    assert info["train_wall_s"] > info["validation_s"]
    assert info["validation_share"] == pytest.approx(info["validation_s"] / info["train_wall_s"])


FAKE_INFDIFF = '''
import json, os, sys, time
from pathlib import Path
cmd, args = sys.argv[1], sys.argv[2:]
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
record = {"cmd": cmd, "cores": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS"), "args": args}
log = Path(os.environ["FAKE_LOG"])
with log.open("a") as f:
    f.write(json.dumps(record) + "\\n")
time.sleep(0.3)  # long enough for two jobs to overlap
if cmd == "evaluate":
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    for res in json.loads(opts["resolutions"]):
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps({"metric": "fid_offline", "resolution": [res, res], "value": 1.0}) + "\\n")
'''


def test_sweep_evaluates_each_finished_run_once_and_pins_jobs_to_their_own_cores(tmp_path, monkeypatch):
    import os

    fake = tmp_path / "fake_infdiff.py"
    fake.write_text(FAKE_INFDIFF)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    sweep = tmp_path / "s.yml"
    spec = {"base": [str(ROOT / "configs/base.yaml")], "evaluate": {"resolutions": [32, 64], "num_samples": 8, "floor": True},
            "axes": {"warmup": {"a": ["--model.val_logsnr_bins=0"], "b": ["--model.val_logsnr_bins=1"]}}}
    sweep.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    jobs = ["--jobs", "2", "--threads", "1"] if len(os.sched_getaffinity(0)) >= 2 else []
    assert ablate.main([str(sweep), "--out", str(out), "--launcher", f"{sys.executable} {fake}", *jobs]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(c["cmd"] for c in calls) == ["evaluate", "evaluate", "fit", "fit"]
    for c in calls:
        if c["cmd"] == "evaluate":
            assert "--resolutions=[32, 64]" in c["args"] and "--num_samples=8" in c["args"] and "--floor=true" in c["args"]
            ckpt = next(a for a in c["args"] if a.startswith("--ckpt_path="))
            assert ckpt.endswith("logs/checkpoints/last.ckpt")
    if jobs:  # each job on its own core, one thread
        fits = [c for c in calls if c["cmd"] == "fit"]
        assert {tuple(c["cores"]) for c in fits} == {(c,) for c in sorted(os.sched_getaffinity(0))[:2]}
        assert all(c["omp"] == "1" for c in calls)
    for name in ("warmup-a", "warmup-b"):
        assert json.loads((out / name / "eval" / "status.json").read_text())["status"] == "done"
    # evaluated once: a second call launches nothing
    monkeypatch.setattr(ablate.subprocess, "Popen", _NoPopen)
    assert ablate.main([str(sweep), "--out", str(out)]) == 0
    # other evaluation arguments: evaluated again (the earlier results are kept aside)
    monkeypatch.undo()
    monkeypatch.setenv("FAKE_LOG", str(log))
    sweep.write_text(yaml.safe_dump({**spec, "evaluate": {"resolutions": [32], "num_samples": 8}}))
    assert ablate.main([str(sweep), "--out", str(out), "--launcher", f"{sys.executable} {fake}"]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["cmd"] for c in calls[4:]] == ["evaluate", "evaluate"]
    rows = {r["run"]: r for r in report.collect(out)[0]}
    assert rows["warmup-a"]["fid_offline@32x32"] == 1.0 and "fid_offline@64x64" not in rows["warmup-a"]
    assert len(list((out / "warmup-a" / "eval").glob("results.*.jsonl"))) == 1


def test_bad_evaluate_section_and_too_many_cores(tmp_path):
    import os

    path = tmp_path / "s.yml"
    path.write_text(yaml.safe_dump({"base": [str(ROOT / "configs/base.yaml")], "evaluate": {"resolution": [32]}}))
    with pytest.raises(ValueError, match=r"evaluate: unknown argument\(s\) \['resolution'\]"):
        ablate.load_sweep(path)
    path.write_text(yaml.safe_dump({"base": [str(ROOT / "configs/base.yaml")]}))
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=f"needs {cores + 1} cores"):
        ablate.run_sweep(ablate.load_sweep(path, tmp_path / "o"), jobs=cores + 1, threads=1, echo=False)


def test_report_floor_row_and_sample_sheets(tmp_path):
    """Floors become one row and a dashed line; the runs' sheets become samples.png."""
    from lightning_infdiff.images import save_grid

    out = tmp_path / "sweep"
    runs = []
    for i, name in enumerate(("denoiser-a", "denoiser-b")):
        run_dir = out / name
        (run_dir / "eval").mkdir(parents=True)
        with (run_dir / "eval" / "results.jsonl").open("w") as f:
            for (h, w), v in {(16, 16): 10.0, (16, 32): 30.0}.items():
                for metric, value in (("fid_offline", v + i), ("fid_offline_floor", v / 10), ("artifacts", 1.0 + i)):
                    f.write(json.dumps({"metric": metric, "resolution": [h, w], "value": value}) + "\n")
        for h, w in ((16, 16), (16, 32)):
            save_grid(torch.zeros(4, 1, h, w), run_dir / "eval" / f"samples_{h}x{w}.png", nrow=4)
        runs.append({"name": name, "params": {"denoiser": name[-1]}, "directory": str(run_dir), "command": []})
    (out / "sweep.json").write_text(json.dumps({"name": "t", "runs": runs}))
    res = report.write_report(out)
    rows = {r["run"]: r for r in res["rows"]}
    assert rows[report.FLOOR_ROW]["fid_offline@16x32"] == 3.0 and rows["denoiser-b"]["fid_offline@16x32"] == 31.0
    assert "fid_offline_floor@16x16" not in rows["denoiser-a"] and rows["denoiser-b"]["artifacts@16x16"] == 2.0
    assert report.FLOOR_ROW in res["markdown"].read_text()
    for key in ("metric_vs_resolution", "samples"):
        assert res["plots"][key].read_bytes()[:8] == PNG_MAGIC, key


def test_report_subsampling_table_groups_each_family_by_rate():
    """An axis that sets the subsampling rate gives subsampling.md: per family, one row per rate."""
    rows = []
    for family, base in (("unet", 40.0), ("fno", 50.0)):
        for points, rate in (("all", 1), ("quarter", 4)):
            rows.append({"run": f"denoiser-{family}__points-{points}", "denoiser": family, "points": points,
                         "subsample_rate": rate, "steps": 100 * rate, "step_time_ms": 500.0 / rate,
                         "val_loss": 0.1, "fid_offline@32x32": base + rate})
    rows.append({"run": report.FLOOR_ROW, "fid_offline@32x32": 5.0})
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = report.write_subsampling_table(rows, ["denoiser", "points"], Path(d))
        lines = path.read_text().splitlines()
    assert lines[0] == "| denoiser | subsample_rate | steps | step_time_ms | val_loss | fid_offline@32x32 |"
    assert lines[2:6] == ["| fno | 1 | 100 | 500 | 0.1 | 51 |", "| fno | 4 | 400 | 125 | 0.1 | 54 |",
                          "| unet | 1 | 100 | 500 | 0.1 | 41 |", "| unet | 4 | 400 | 125 | 0.1 | 44 |"]
    assert lines[6].startswith(f"| *{report.FLOOR_ROW}* |") and lines[6].endswith("| 5 |")
    # no axis that decides the rate: no table
    same = [dict(r, subsample_rate=1) for r in rows[:-1]]
    assert report.write_subsampling_table(same, ["denoiser", "points"], Path("/nonexistent")) == \
        "no axis sets the subsampling rate"


def test_report_fills_runs_missing_from_the_folder_from_an_earlier_table(tmp_path):
    """--also: an earlier report's table.csv fills the runs that are not in the folder, marked as such."""
    out = tmp_path / "sweep"
    runs = []
    for name in ("denoiser-a__points-all", "denoiser-a__points-quarter"):
        runs.append({"name": name, "params": {"denoiser": "a", "points": name.rsplit("-", 1)[1]},
                     "directory": str(out / name), "command": []})
    (out / "denoiser-a__points-quarter" / "eval").mkdir(parents=True)
    (out / "denoiser-a__points-quarter" / "status.json").write_text(json.dumps({"status": "done"}))
    with (out / "denoiser-a__points-quarter" / "eval" / "results.jsonl").open("w") as f:
        f.write(json.dumps({"metric": "fid_offline", "resolution": [16, 16], "value": 50.0}) + "\n")
    (out / "sweep.json").write_text(json.dumps({"name": "t", "runs": runs}))
    earlier = tmp_path / "table.csv"
    earlier.write_text("run,status,denoiser,points,steps,fid_offline@16x16\n"
                       "denoiser-a__points-all,done,a,all,1334,24.2\n"
                       "denoiser-a__points-quarter,done,a,quarter,10,99.0\n")
    rows = {r["run"]: r for r in report.write_report(out, also=[earlier])["rows"]}
    assert rows["denoiser-a__points-all"]["fid_offline@16x16"] == 24.2
    assert rows["denoiser-a__points-all"]["status"] == f"earlier report: {earlier}"
    assert rows["denoiser-a__points-quarter"]["fid_offline@16x16"] == 50.0  # a run in the folder wins
    assert rows["denoiser-a__points-quarter"]["status"] == "done"
    # the plot shows both runs: the earlier one from its table columns
    extra = {"evals": {"denoiser-a__points-quarter": {("fid_offline", 16, 16): 50.0}},
             "metric_keys": [("fid_offline", 16, 16)]}
    report.evals_of_earlier(list(rows.values()), extra)
    assert extra["evals"] == {"denoiser-a__points-all": {("fid_offline", 16, 16): 24.2},
                              "denoiser-a__points-quarter": {("fid_offline", 16, 16): 50.0}}
