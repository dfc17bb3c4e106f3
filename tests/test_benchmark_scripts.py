"""Benchmark scripts: the suite's helpers and reports."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_subsample_budget_prediction_ignores_skipped_and_failed_rows():
    """A skipped or failed rate-1 setting must not break the section (it crashed the suite once)."""
    import bench_subsample

    done = [dict(name="m", res=64, rate=1, wall_s=10.0), dict(name="m", res=128, rate=1, skipped="over budget"),
            dict(name="m", res=128, rate=1, error="boom", wall_s=1.0)]
    assert bench_subsample.predict(done, dict(name="m", res=128, rate=4)) == pytest.approx(10.0 * 2**2.6)
    assert bench_subsample.predict(done, dict(name="other", res=64, rate=1)) == 0.0


def test_subsample_full_plan_covers_every_denoiser_and_skips_only_rates_that_cannot_differ():
    """Section 1's full plan: every config at 64² and 128², the canvas models (and only they) at
    1/4/16x, and the operator models before the rest so a tight budget cannot cut them."""
    import bench_subsample
    from bench_denoisers import SMALL_CONFIGS

    plan = bench_subsample.settings(quick=False)
    canvas = set(bench_subsample.canvas_models())
    assert {"fno", "uno", "uvit", "unet", "siid"} <= canvas
    assert not canvas & {"sparse_operator", "coord_mlp", "coord_mlp_baseline"}
    for res in (64, 128):
        order = list(dict.fromkeys(s["name"] for s in plan if s["res"] == res))
        assert order[:4] == ["sparse_operator_infdiff", "sparse_operator", "fno", "uno"]
        assert set(order) == {"sparse_operator_infdiff", *SMALL_CONFIGS}
        for name in order:
            rates = [s["rate"] for s in plan if s["res"] == res and s["name"] == name]
            assert rates == list(bench_subsample.CANVAS_RATES if name in canvas else bench_subsample.RATES), name
    assert [s["res"] for s in plan] == sorted(s["res"] for s in plan)  # all of 64² before 128²


def test_sampling_budget_prediction_follows_a_model_that_grows_faster():
    import bench_sampling

    def row(*ms: float) -> dict:
        return {"per_nfe": {s: {"median": m / 1e3} for s, m in zip(bench_sampling.SAMPLER_NAMES, ms, strict=False)}}

    assert bench_sampling.predict_nfe_s({}, 64) == 0.0
    slow = {32: row(10.0), 64: row(20.0, 25.0)}  # below the assumed growth: the floor, from the slowest sampler
    assert bench_sampling.predict_nfe_s(slow, 128) == pytest.approx(0.025 * 2**2.6)
    steep = {64: row(56.0), 128: row(480.0), 256: {"skipped": "budget"}}  # 8.6x per doubling: kept
    assert bench_sampling.predict_nfe_s(steep, 256) == pytest.approx(0.480 * 480 / 56)
    assert bench_sampling.predict_nfe_s({"64": row(56.0), "128": row(480.0)}, 256) == pytest.approx(0.480 * 480 / 56)


def test_subsample_report_names_the_canvas_models_and_their_rates(tmp_path):
    import bench_report

    def row(name: str, rate: int, ms: float) -> dict:
        t = {"median": ms / 1e3, "q1": ms / 1e3, "q3": ms / 1e3, "min": ms / 1e3, "max": ms / 1e3, "n": 3}
        return {"name": name, "res": 64, "rate": rate, "n_points": 4096 // rate, "step": t, "peak_mb": 100.0,
                "speedup_vs_rate1": 1.0, "mem_reduction_vs_rate1": 1.0}

    rows = [row("coord_mlp", 1, 400.0), row("coord_mlp", 16, 40.0), row("siid", 1, 900.0), row("siid", 16, 880.0)]
    rec = {"section": 1, "title": "subsample", "threads": 2, "wall_s": 1.0, "loadavg_before": [0.5],
           "loadavg_after": [0.5], "result": {"rows": rows, "canvas_models": ["siid"], "canvas_rates": [1, 4, 16],
                                              "method": "m"}}
    lines, _ = bench_report.subsample(rec, tmp_path, [])
    assert any(ln.startswith("Canvas models (siid) run on the full canvas") and "at 1, 4, 16x only" in ln
               for ln in lines)
    assert "| siid | 64² | 16× | 256 | 880.0 [880.0-880.0] | 880-880 | 1.00× | 100 | 1.00× |" in lines
    quick = dict(rec, result=dict(rec["result"], canvas_models=[]))  # the quick plan has no canvas rule
    assert not any(ln.startswith("Canvas models") for ln in bench_report.subsample(quick, tmp_path, [])[0])


def test_kernel_measurements_write_a_report(tmp_path, monkeypatch):
    """bench_kernels.py runs every comparison once and writes the markdown table and its JSON."""
    import bench_kernels

    out = tmp_path / "kernels.md"
    monkeypatch.setattr(sys, "argv", ["bench_kernels.py", "--threads", "1", "--repeats", "1", "--out", str(out)])
    monkeypatch.setattr(bench_kernels, "median_ms", lambda fn, repeats, warmup=0: (fn(), 1.0)[1])
    bench_kernels.main()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    names = [r["name"] for r in rows]
    assert any(n.startswith("attention") for n in names) and any("weight gradient" in n for n in names)
    assert any("block-diagonal" in n for n in names)
    assert any("AdamW" in n for n in names) and any("add_" in n for n in names) and any("LN + FiLM" in n for n in names)
    assert {"SiLU 32x64x16x16: fp32 / bf16", "point matmul (16384, 32) @ (32, 64): fp32 / bf16"} <= set(names)
    assert out.read_text().count("\n| ") == len(rows) + 1  # header + one line per row


def test_kernel_measurements_run_a_chosen_subset(tmp_path, monkeypatch):
    """``--parts elementwise`` times only that group and says so in the report's command line;
    an unknown part is refused with the list of known ones."""
    import bench_kernels

    out = tmp_path / "k.md"
    monkeypatch.setattr(sys, "argv", ["bench_kernels.py", "--parts", "elementwise", "--repeats", "1", "--out", str(out)])
    monkeypatch.setattr(bench_kernels, "median_ms", lambda fn, repeats, warmup=0: (fn(), 1.0)[1])
    bench_kernels.main()
    names = [r["name"] for r in json.loads(out.with_suffix(".json").read_text())["rows"]]
    assert len(names) == 7 and all(n.endswith("fp32 / bf16") for n in names)
    assert "--parts elementwise`" in out.read_text()
    monkeypatch.setattr(sys, "argv", ["bench_kernels.py", "--parts", "elementwise,gemm"])
    with pytest.raises(SystemExit, match="choose from attention, .*elementwise; got 'elementwise,gemm'"):
        bench_kernels.main()


def test_paired_timing_alternates_the_two_kernels():
    import time

    import bench_kernels

    calls: list[str] = []

    def fa() -> None:
        calls.append("a")

    def fb() -> None:
        calls.append("b")
        time.sleep(0.002)

    a_ms, b_ms = bench_kernels.paired_ms(fa, fb, repeats=4, warmup=1)
    assert calls == ["a", "b"] * 5 and b_ms >= 2.0 > a_ms


def test_precision_report_shows_both_compiled_precisions_and_their_ratio(tmp_path):
    """Section 3's report: one row per compiled precision, the compiled and eager bf16/fp32 ratios
    of the compile child, no rows for the child's bookkeeping, and the target judged on eager."""
    import bench_report

    def st(ms: float) -> dict:
        return {"median": ms / 1e3, "q1": ms / 1e3, "q3": ms / 1e3, "min": ms / 1e3, "max": ms / 1e3, "n": 3}

    eager = {"fp32": st(240.0), "bf16": st(150.0)}
    comp = {"fp32": {"compile_s": 40.0, "eager": st(250.0), "compiled": st(200.0), "speedup": 1.25},
            "bf16": {"compile_s": 50.0, "eager": st(160.0), "compiled": st(125.0), "speedup": 1.28},
            "bf16_vs_fp32": {"eager": 250 / 160, "compiled": 200 / 125}, "wall_s": 99.0, "load_before": [1.0],
            "breakdown": {"fp32": {"dense conv (U-Net)": 0.09, "inductor fused kernels (compiled graphs)": 0.05},
                          "bf16": {"dense conv (U-Net)": 0.05, "inductor fused kernels (compiled graphs)": 0.04}},
            "breakdown_steps": 3, "breakdown_faults_per_step": {"fp32": 9000, "bf16": 2}}
    rec = {"section": 3, "title": "precision", "threads": 2, "wall_s": 1.0, "loadavg_before": [0.5],
           "loadavg_after": [0.5], "result": {"setting": {"res": 32, "batch": 32, "rate": 2, "repeats": 3},
                                              "model": "m", "eager": eager, "compile": comp,
                                              "ratios": {"bf16_speedup_vs_fp32": 240 / 150}}}
    lines, targets = bench_report.precision(rec, tmp_path, [])
    rows = [ln for ln in lines if ln.startswith("| torch.compile")]  # none for "breakdown" or the bookkeeping
    assert len(rows) == 2 and "1.25× vs eager fp32" in rows[0] and "1.28× vs eager bf16" in rows[1]
    assert any("1.60× compiled, 1.56× eager" in ln for ln in lines)
    # the compiled steps' op classes, after the eager ones (none here): fused kernels 50 -> 40 ms
    head = lines.index(next(ln for ln in lines if ln.startswith("Where the time goes, both under torch.compile (")))
    assert "median of 3 profiled steps" in lines[head]
    assert "| inductor fused kernels (compiled graphs) | 50.0 (36%) | 40.0 (44%) | 1.25× |" in lines[head:]
    assert "| **step** | 140.0 | 90.0 | 1.56× |" in lines[head:]
    assert any(ln.startswith("Minor page faults per profiled step: fp32 9000, bf16 2. WARNING: they differ by 8998")
               for ln in lines[head:])
    shown, met = targets["bf16 ≥ 1.6× faster than fp32 (default denoiser training step)"]
    assert shown == "1.60× eager; 1.60× both under torch.compile" and met is True


def test_precision_report_names_a_non_default_compile_mode(tmp_path):
    """A ``--compile-mode max-autotune`` record says so in its rows, its ratio line and the target."""
    import bench_report

    def st(ms: float) -> dict:
        return {"median": ms / 1e3, "q1": ms / 1e3, "q3": ms / 1e3, "min": ms / 1e3, "max": ms / 1e3, "n": 3}

    comp = {"mode": "max-autotune", "fp32": {"compile_s": 90.0, "eager": st(250.0), "compiled": st(220.0), "speedup": 250 / 220},
            "bf16": {"compile_s": 95.0, "eager": st(190.0), "compiled": st(160.0), "speedup": 190 / 160},
            "bf16_vs_fp32": {"eager": 250 / 190, "compiled": 220 / 160}}
    rec = {"section": 3, "title": "precision", "threads": 2, "wall_s": 1.0, "loadavg_before": [0.5],
           "loadavg_after": [0.5], "result": {"setting": {"res": 32, "batch": 32, "rate": 2, "repeats": 3},
                                              "model": "m", "eager": {"fp32": st(250.0), "bf16": st(190.0)},
                                              "compile": comp, "ratios": {"bf16_speedup_vs_fp32": 250 / 190}}}
    lines, targets = bench_report.precision(rec, tmp_path, [])
    rows = [ln for ln in lines if ln.startswith("| torch.compile")]
    assert len(rows) == 2 and all(r.startswith("| torch.compile mode=max-autotune (") for r in rows)
    assert any("max-autotune child" in ln and "1.38× compiled, 1.32× eager" in ln for ln in lines)
    shown, met = targets["bf16 ≥ 1.6× faster than fp32 (default denoiser training step)"]
    assert shown == "1.32× eager; 1.38× both under torch.compile mode=max-autotune" and met is False


def test_precision_section_rejects_an_unknown_compile_mode():
    import bench_precision

    with pytest.raises(ValueError, match="compile_mode must be one of .*'max-autotune'.*got 'fastest'"):
        bench_precision.run(quick=True, threads=1, budget_s=10.0, compile_mode="fastest")


@pytest.mark.parametrize(("bf16_fixed", "bf16_per", "expect"), [
    (0.040, 0.0035, "the fixed cost is what keeps this small model's step below 1.6×."),  # per-example 1.71x
    (0.020, 0.0040, "bounds it as well as the fixed cost."),  # per-example 1.5x
    (0.010, 0.0030, "× with no fixed cost at all."),  # step 2.1x: the target is met, no excuse
])
def test_batch_sweep_text_follows_the_numbers(bf16_fixed, bf16_per, expect):
    """The fixed / per-example paragraph states the step's gain and explains a shortfall only
    when there is one, naming the cause the fit shows."""
    import bench_report

    def line(fixed: float, per: float) -> dict:
        return {"fixed_s": fixed, "per_example_s": per}

    fits = {"fp32": line(0.030, 0.006), "bf16": line(bf16_fixed, bf16_per)}
    sw = {"fit": fits, "per_example_speedup": 0.006 / bf16_per,
          "step_s": {p: {str(b): f["fixed_s"] + f["per_example_s"] * b for b in (4, 32)} for p, f in fits.items()}}
    text = bench_report._sweep(sw, 32)[-1]
    step = (0.030 + 0.006 * 32) / (bf16_fixed + bf16_per * 32)
    assert f"the step gains {step:.2f}×" in text and text.endswith(expect)
    assert ("1.6×" in text) == (step < 1.6)  # a shortfall is explained only when there is one
    assert ("adds autocast's weight casts" in text) == (bf16_fixed > 0.030)
    assert ("but not the fixed cost" in text) == (0.030 / bf16_fixed < 1.1)


def _counted(fn) -> int:  # noqa: ANN001 - a zero-argument closure
    import bench_flops

    counter = bench_flops.flop_counter()
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_flop_counter_counts_grouped_conv_backward_per_group(groups):
    """Forward, input gradient and weight gradient each take B·H'·W'·C_out·(C_in/g)·k² MACs."""
    import torch

    b, c, h, w, k = 2, 8, 6, 5, 3
    conv = torch.nn.Conv2d(c, c, k, padding=1, groups=groups, bias=False)
    macs = b * h * w * c * (c // groups) * k * k
    x = torch.randn(b, c, h, w, requires_grad=True)
    assert _counted(lambda: conv(x).sum().backward()) == 2 * 3 * macs
    x.requires_grad_(False)  # weight gradient only
    assert _counted(lambda: conv(x).sum().backward()) == 2 * 2 * macs
    # transposed: the MACs run over the input's spatial positions
    tconv = torch.nn.ConvTranspose2d(c, c, k, stride=2, groups=groups, bias=False)
    xt = torch.randn(b, c, h, w, requires_grad=True)
    assert _counted(lambda: tconv(xt).sum().backward()) == 2 * 3 * b * h * w * c * (c // groups) * k * k


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flop_counter_sees_the_dense_sparse_conv(dtype):
    """The sparse level's custom conv ops count 2·B·C·H·W·k² FLOPs each (forward, both gradients),
    also for the bf16 weight gradient, whose block-diagonal grouped conv does more products."""
    import torch

    from lightning_infdiff.denoisers.layers.sparse_conv import PointLattice, SparseDepthwiseConv2d

    b, c, res, k, n = 2, 8, 8, 3, 40
    conv = SparseDepthwiseConv2d(c, k, train_resolution=res)
    idx = torch.stack([torch.randperm(res * res)[:n] for _ in range(b)])
    lat = PointLattice.build(idx, (res, res), k, res, "dense")
    x = torch.randn(b, n, c, dtype=getattr(torch, dtype), requires_grad=True)
    assert _counted(lambda: conv(x, lat).float().sum().backward()) == 3 * 2 * b * c * res * res * k * k


def test_run_child_adds_environment_variables(tmp_path):
    """``run_child(env=...)`` reaches the child (section 3 gives its compile child an empty inductor cache)."""
    from bench_common import run_child

    script = tmp_path / "child.py"
    script.write_text("import json, os, sys\nspec = json.loads(sys.argv[2])\n"
                      "print(json.dumps({'cache': os.environ.get('TORCHINDUCTOR_CACHE_DIR'), 'threads': os.environ['OMP_NUM_THREADS'], **spec}))\n")
    out = run_child(script, {"x": 1}, threads=1, timeout=60, env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "c")})
    assert out["cache"] == str(tmp_path / "c") and out["threads"] == "1" and out["x"] == 1
    assert run_child(script, {}, threads=1, timeout=60)["cache"] in (None, os.environ.get("TORCHINDUCTOR_CACHE_DIR"))


def test_run_forked_returns_results_errors_and_timeouts():
    """Section 1's settings run in processes forked from a preloaded server: the child's result,
    its traceback, or a time-out come back as a dict, never as an exception."""
    from bench_common import run_forked

    spec = dict(name="fno", res=16, rate=1, batch=1, repeats=2, warmup=1, precision="fp32", quick=True)
    ok = run_forked("bench_subsample", spec, 1, timeout=120)
    assert "error" not in ok, ok.get("error")
    assert ok["step"]["n"] == 2 and ok["peak_mb"] >= 0 and ok["wall_s"] > 0 and ok["name"] == "fno"
    bad = run_forked("bench_subsample", dict(spec, name="no_such_denoiser"), 1, timeout=120)
    assert "KeyError" in bad["error"] and "no_such_denoiser" in bad["error"]
    slow = run_forked("bench_subsample", dict(spec, repeats=10**6), 1, timeout=1.0)
    assert slow["error"].startswith("timed out") and slow["wall_s"] < 30


def test_interleaved_counts_each_variants_page_faults():
    """The fault counts belong to the variant that caused them: one variant maps and touches a
    fresh 4 MiB region per call (at least one fault per 4 KiB page), the other touches nothing."""
    import mmap

    from bench_common import interleaved

    size = 4 << 20

    def touch() -> None:
        region = mmap.mmap(-1, size)
        for off in range(0, size, mmap.PAGESIZE):
            region[off] = 1
        region.close()

    faults: dict = {}
    times = interleaved({"touch": touch, "idle": lambda: None}, repeats=3, warmup=1, faults=faults)
    assert [len(v) for v in times.values()] == [3, 3] and [len(v) for v in faults.values()] == [3, 3]
    assert min(faults["touch"]) >= size // mmap.PAGESIZE and max(faults["idle"]) < 64


_MALLOC_STEP = """
import ctypes, json, sys
sys.path.insert(0, sys.argv[1])
from bench_common import minor_faults, pin_malloc
info = pin_malloc() if sys.argv[2] == "pin" else {"pinned": False}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
n = 12 << 20
def step():
    bufs = [libc.malloc(n) for _ in range(3)]
    for b in bufs:
        libc.memset(b, 1, n)
    for b in bufs:
        libc.free(b)
for _ in range(3):
    step()
per_step = []
for _ in range(10):
    f0 = minor_faults()
    step()
    per_step.append(minor_faults() - f0)
print(json.dumps({"info": info, "per_step": sorted(per_step)[len(per_step) // 2]}))
"""


def test_pin_malloc_keeps_a_step_from_faulting_in_fresh_pages():
    """A step that holds three 12 MiB buffers at once and frees them, as a training step does
    with its activations. With glibc's dynamic thresholds the first free raises the mmap
    threshold to 12 MiB and the trim threshold to 24 MiB, so the buffers come from the heap and
    freeing 36 MiB at its top trims it back every step: each step faults in (36 MiB - 128 KiB
    top pad) / 4 KiB = 9,184 pages afresh. With the thresholds pinned (trim 1 GiB) the heap is
    kept and the median step faults none. Driven through libc directly so no other allocation
    moves the heap top; each case in its own process, since the pin lasts for the process."""
    import subprocess

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    res = {}
    for mode in ("pin", "dynamic"):
        out = subprocess.run([sys.executable, "-c", _MALLOC_STEP, bench, mode], capture_output=True, text=True,
                             check=False)
        if out.returncode:
            pytest.skip(f"libc malloc not drivable here: {out.stderr[-300:]}")
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["pin"]["info"]["pinned"]:
        pytest.skip(f"not glibc: {res['pin']['info']}")
    assert res["pin"]["info"]["mmap_threshold"] == 32 << 20
    assert res["pin"]["per_step"] < 50, res
    assert res["dynamic"]["per_step"] > 0.9 * 3 * (12 << 20) / 4096, res


@pytest.mark.parametrize(("faults", "expect"), [
    ({"fp32": 640, "bf16": 600}, "differ by 40, so faulting does not skew"),
    ({"fp32": 8000, "bf16": 600}, "WARNING: the variants' page faults per step differ by 7400 (about 74 ms"),
])
def test_precision_report_flags_a_fault_gap(faults, expect):
    import bench_report

    lines = bench_report._fault_check({"pinned": True, "mmap_threshold": 32 << 20, "trim_threshold": 1 << 30},
                                      faults, 0.18)
    assert "pinned (mmap 32 MiB, trim 1024 MiB)" in lines[-1] and expect in lines[-1]
    assert "NOT pinned" in bench_report._fault_check({"pinned": False, "why": "no glibc"}, faults, 0.18)[-1]


def _e2e_record(path: Path, run: dict) -> Path:
    path.write_text(json.dumps({"sections": {"e2e": {
        "machine": {"date_utc": "2026-12-02 15:19:37", "torch": "2.13.0+cpu"},
        "result": {"run": run}}}}))
    return path


def test_e2e_section_reports_the_last_complete_full_run(tmp_path, monkeypatch):
    """Without --e2e, section 6 reports the last full measurement (with its total and set-up and
    where and when it ran); an incomplete or failed one is not used, and the quickstart's own
    record (no total, so set-up unknown) is the fallback."""
    import bench_e2e

    full = {"total_s": 588.4, "train_s": 498.6, "sample_s": 84.5, "setup_s": 5.3, "steps": 1906,
            "steps_per_s": 3.82, "sample_seconds_per_image": {}, "accuracy_vs_requested_digit": {}}
    rec = bench_e2e.last_e2e_run(_e2e_record(tmp_path / "ok.json", full))
    assert rec["setup_s"] == 5.3 and "2026-12-02 15:19:37 UTC, torch 2.13.0+cpu" in rec["source"]
    assert bench_e2e.last_e2e_run(_e2e_record(tmp_path / "err.json", {"error": "boom", "total_s": 3.0})) is None
    assert bench_e2e.last_e2e_run(tmp_path / "missing.json") is None

    summary = {"train_seconds": 504.3, "sample_seconds": 87.6, "steps": 1547, "grids": []}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setattr(bench_e2e, "RECORD", tmp_path / "summary.json")
    monkeypatch.setattr(bench_e2e, "E2E_RECORD", tmp_path / "ok.json")
    run = bench_e2e.run(quick=True, threads=1, budget_s=1.0)["run"]
    assert run["setup_s"] == 5.3 and run["source"].startswith("recorded: last full --e2e run")
    monkeypatch.setattr(bench_e2e, "E2E_RECORD", tmp_path / "err.json")
    run = bench_e2e.run(quick=True, threads=1, budget_s=1.0)["run"]
    assert run["train_s"] == 504.3 and run["total_s"] is None and run["setup_s"] is None
    assert run["source"] == f"recorded: {tmp_path / 'summary.json'}"


class _FakeEvent:
    def __init__(self, key: str, ms: float, shapes: list) -> None:
        self.key, self.self_cpu_time_total, self.input_shapes = key, ms * 1e3, shapes  # profiler: microseconds


def test_op_breakdown_takes_the_median_of_the_profiled_steps(monkeypatch):
    """Each class's time is the median over the profiled steps (a step caught by a load spike
    does not move it; a class missing from a step counts as zero there), and convolutions are
    split into the sparse level's grouped ones and the U-Net's dense ones by their shapes."""
    import bench_precision

    steps = [  # per profiled step: (op, self ms, input shapes)
        [("aten::mm", 2.0, [[8, 4], [4, 4]]), ("aten::convolution", 5.0, [[2, 8, 4, 4], [8, 1, 3, 3]])],
        [("aten::mm", 90.0, [[8, 4], [4, 4]]), ("aten::convolution", 50.0, [[2, 8, 4, 4], [8, 1, 3, 3]]),
         ("aten::add", 7.0, [[8], [8]])],
        [("aten::mm", 3.0, [[8, 4], [4, 4]]), ("aten::addmm", 1.0, [[4], [8, 4], [4, 4]]),
         ("aten::convolution", 6.0, [[2, 8, 4, 4], [8, 1, 3, 3]]),
         ("aten::convolution", 4.0, [[2, 8, 4, 4], [16, 8, 3, 3]]), ("python_function", 9.0, []),
         ("## Call CompiledFxGraph f3abc ##", 8.0, [])],
    ]
    calls = iter(steps)

    class FakeProfile:
        def __init__(self, **kwargs) -> None:
            self.events = [_FakeEvent(*e) for e in next(calls)]

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc) -> None:
            return None

        def key_averages(self, group_by_input_shape: bool = False) -> list:
            return self.events

    monkeypatch.setattr(bench_precision.torch.profiler, "profile", FakeProfile)
    counts = iter([0, 5, 5, 5, 10, 30])  # the process's fault counter before and after each step
    monkeypatch.setattr(bench_precision, "minor_faults", lambda: next(counts))
    ran, faults = [], []
    out = bench_precision.op_breakdown(lambda: ran.append(1), steps=3, faults=faults)
    assert len(ran) == 3 and faults == [5, 0, 20]
    assert out == pytest.approx({
        "matmul / attention": 4.0e-3,  # median of 2, 90 and 3 + 1 ms (not the 32 ms mean)
        "depthwise conv (sparse level)": 6.0e-3,  # of 5, 50, 6
        "dense conv (U-Net)": 0.0,  # of 0, 0, 4: present in one step only
        "other (elementwise, optimiser, autograd)": 0.0,  # of 0, 7, 0 (python_function is not an op)
        "inductor fused kernels (compiled graphs)": 0.0,  # of 0, 0, 8: a compiled graph's own kernels
    })


def test_bf16_probe_changes_keep_the_function_or_change_only_the_dtype():
    """The what-if probes change how the step computes, not what: a 1x1 conv as a channels-last
    matmul equals the convolution (values and gradients); held-bf16 weights are the autocast casts."""
    import bench_bf16_probes as probes
    import torch
    from torch import nn

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1)
    net = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), conv, nn.Conv2d(5, 5, 1, groups=5), nn.Dropout(0.2))
    ref = {k: v.clone() for k, v in conv.state_dict().items()}
    x = torch.randn(3, 6, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    want = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    g_want = torch.autograd.grad(want.square().sum(), (x, conv.weight))
    assert probes.pointwise_as_matmul(net) == 1  # the 3x3 and the grouped 1x1 are left alone
    assert type(net[1]) is probes.PointwiseMatmulConv2d and type(net[2]) is nn.Conv2d
    got = net[1](x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got.square().sum(), (x, conv.weight)), g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1](x.contiguous()), want, rtol=1e-5, atol=1e-6)  # other layouts: the conv
    assert all(torch.equal(conv.state_dict()[k], v) for k, v in ref.items())
    assert probes.drop_dropout(net) == 1 and net[3].p == 0.0
    assert probes.hold_bf16_weights(net) == 6  # three convs, weight and bias each
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    assert torch.equal(conv.weight, ref["weight"].to(torch.bfloat16))


def test_bf16_film_probe_computes_the_same_block_and_keeps_the_map_bf16():
    """The probe's ResBlock (FiLM in the map's dtype) equals the package's in fp32, to rounding;
    under bf16 autocast the package's SiLU and dropout see an fp32 map (promoted by the fp32
    scale and shift), the probe's a bf16 one."""
    import bench_bf16_probes as probes
    import torch
    from torch import nn

    from lightning_infdiff.denoisers.layers.adm import ResBlock

    torch.manual_seed(0)
    net = nn.ModuleList([ResBlock(8, 8, 16), nn.Conv2d(8, 8, 1)])
    block = net[0]
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)  # conv2 and the FiLM start at zero otherwise
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 16)
    want = block(x, emb)
    seen = []
    block.drop.register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16 = block(x.bfloat16(), emb)
    assert seen == [torch.float32]
    assert probes.bf16_film(net) == 1 and type(block) is probes.BF16FiLMResBlock
    torch.testing.assert_close(block(x, emb), want, rtol=1e-5, atol=1e-5)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = block(x.bfloat16(), emb)
    assert seen == [torch.bfloat16] and out16.dtype == ref16.dtype == torch.bfloat16
    assert (out16.float() - want).abs().max() < 0.05 * want.abs().max()  # bf16 rounding only


def test_count_ops_counts_each_dispatched_op_backward_included():
    import bench_bf16_probes as probes
    import torch

    x = torch.ones(3, requires_grad=True)

    def fn() -> None:
        x.mul(2).add(1).sum().backward()

    counts = probes.count_ops(fn)
    assert counts["add"] == 1 and counts["sum"] == 1  # the forward's
    # the backward's: the seed gradient, sum's (the scalar spread over x), and mul's (times 2)
    assert counts["ones_like"] == 1 and counts["expand"] == 1 and counts["mul"] == 2
    assert probes.count_ops(lambda: None) == {}


def test_bf16_probes_write_a_report(tmp_path):
    """bench_bf16_probes.py --quick times every probe against the unchanged step and writes the
    table (one line per probe) and its JSON; an unknown probe is refused with the known ones."""
    import bench_bf16_probes as probes

    out = tmp_path / "probes.md"
    probes.main(["--quick", "--repeats", "2", "--threads", "1", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["probe"] for r in data["rows"]] == list(probes.PROBES)
    assert {"base fp32", "base bf16", "bf16_weights bf16", "no_dropout fp32"} <= set(data["times_s"])
    assert "bf16_weights fp32" not in data["times_s"]  # that probe is bf16-only
    for r in data["rows"]:
        assert r["bf16_speedup"]["n"] == 2 and r["bf16_speedup"]["median"] > 0
    assert list(data["phases"]) == list(probes.PHASES)
    for v in data["phases"].values():  # the timed rounds only, not the warm-up calls
        assert v["fp32"]["n"] == v["bf16"]["n"] == v["fp32_over_bf16"]["n"] == 2
    # the phases add up to (most of) the step: only the batch's creation is outside them
    for prec in ("fp32", "bf16"):
        phases = sum(v[prec]["median"] for v in data["phases"].values())
        assert 0.5 * data["times_s"][f"base {prec}"]["median"] < phases <= 1.1 * data["times_s"][f"base {prec}"]["max"]
    ops = data["ops"]  # autocast adds casts (of the weights, and of their gradients back to fp32)
    assert ops["bf16"]["casts"] > ops["fp32"]["casts"] and ops["bf16"]["total"] > ops["fp32"]["total"]
    assert ops["fp32"]["total"] == sum(ops["fp32"]["by_op"].values()) and ops["fp32"]["by_op"]["convolution"] > 0
    text = out.read_text()
    assert text.count("\n| ") == len(probes.PROBES) + len(probes.PHASES) + 2 and "--quick" in text
    assert f"fp32 {ops['fp32']['total']}, bf16 {ops['bf16']['total']}" in text
    with pytest.raises(SystemExit, match="choose from bf16_weights, pointwise_matmul, no_dropout, bf16_film; "
                                         "got 'fp8'"):
        probes.main(["--probes", "fp8"])


def _oracle_times(conv16: float, add16: float) -> tuple[dict, dict]:
    """fp32 and bf16 op times (s) of a made-up step: a conv, an add, and a bf16-only cast."""
    conv, add, cast = "aten.convolution.default|((2, 3, 8, 8),)", "aten.add.Tensor|((4,), (4,))", "aten._to_copy.default|((3,),)"
    return {conv: 0.100, add: 0.050}, {conv: conv16, add: add16, cast: 0.010}


def test_precision_oracle_bound_matches_the_closed_form():
    """Totals, the oracle (each op in its faster precision, casts dropped), the split, and the
    required conv/matmul gain g = M32 / (T32 / 1.6 - R_best), worked out by hand."""
    import precision_oracle as po

    t32, t16 = _oracle_times(conv16=0.050, add16=0.060)
    b = po.bound(t32, t16)
    assert b["fp32_s"] == pytest.approx(0.150) and b["bf16_s"] == pytest.approx(0.120)
    assert b["ratio"] == pytest.approx(1.25) and b["bf16_only_s"] == pytest.approx(0.010)
    assert b["oracle_s"] == pytest.approx(0.100) and b["oracle_ratio"] == pytest.approx(1.5)  # conv in bf16, add in fp32
    assert b["conv_matmul"]["gain"] == pytest.approx(2.0) and b["conv_matmul"]["share_fp32"] == pytest.approx(2 / 3)
    assert b["rest"]["fp32_s"] == pytest.approx(0.050) and b["rest"]["bf16_s"] == pytest.approx(0.070)
    assert b["rest"]["oracle_s"] == pytest.approx(0.050)
    assert b["required_conv_matmul_gain"] == pytest.approx(0.100 / (0.150 / 1.6 - 0.050))  # 2.2857
    assert b["conv_matmul_share_reaching_required"] == 0.0  # the conv gains 2.0 < 2.29
    assert [r["op"] for r in b["slower_in_bf16"]] == ["aten.add.Tensor|((4,), (4,))"]
    # a conv that gains 2.5x reaches the requirement; a rest slower than T32 / 1.6 makes it unreachable
    assert po.bound(*_oracle_times(conv16=0.040, add16=0.060))["conv_matmul_share_reaching_required"] == 1.0
    unreachable = po.bound(t32, t16, target=3.5)  # 0.150 / 3.5 = 0.043 < the rest's 0.050
    assert unreachable["required_conv_matmul_gain"] is None


def test_precision_oracle_times_each_op_once_and_matches_keys_across_precisions():
    """Keys are op and input shapes (no dtype), so the same matmul matches in fp32 and under bf16
    autocast; a custom op is timed as one op (its inner convolution is not counted again); the
    backward's ops are seen; and ops are classed as convolution/matmul or not."""
    import precision_oracle as po
    import torch

    from lightning_infdiff.denoisers.layers.sparse_conv import depthwise_same_conv

    x, w = torch.randn(4, 8), torch.randn(8, 2, requires_grad=True)
    canvas, kernel = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3)

    def step(bf16: bool):  # noqa: ANN202
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                (x @ w).float().sum().backward()
            depthwise_same_conv(canvas, kernel, 1, 1)
        return run

    times = po.op_times({"fp32": step(False), "bf16": step(True)}, repeats=2)
    mm = "aten.mm.default|((4, 8), (8, 2))"
    assert mm in times["fp32"] and mm in times["bf16"]
    for t in times.values():
        assert any(k.startswith("aten.mm.default|((8, 4), (4, 2))") for k in t)  # the backward's x.T @ grad
        assert "lightning_infdiff.depthwise_same_conv.default|((1, 2, 6, 6), (2, 1, 3, 3))" in t
        assert not any(po.op_name(k) == "convolution" for k in t)  # inside the custom op: not counted twice
    assert any(po.op_name(k) == "_to_copy" for k in set(times["bf16"]) - set(times["fp32"]))  # autocast's casts
    assert po.conv_or_matmul(mm) and po.conv_or_matmul("lightning_infdiff.depthwise_same_conv_weight_grad.default|()")
    assert po.conv_or_matmul("aten.convolution_backward.default|()") and not po.conv_or_matmul("aten.add.Tensor|()")
    assert not po.conv_or_matmul("aten.mul.Tensor|()") and po.op_name("aten.bmm.default|((1,),)") == "bmm"


@pytest.mark.parametrize(("conv16", "add16", "target", "expect"), [
    (0.050, 0.060, 1.6, "No choice of precision per op reaches 1.6× with these kernels: the best, 1.50×"),
    (0.050, 0.060, 1.4, "A choice of precision per op could reach 1.50× of op time"),
    (0.050, 0.060, 3.5, "no speed-up of the convolutions and matmuls could reach it"),
])
def test_precision_report_states_what_the_oracle_rules_out(conv16, add16, target, expect):
    import bench_report
    import precision_oracle as po

    o = po.bound(*_oracle_times(conv16, add16), target=target)
    o.update(repeats=3, matmul={"n": 2048, "gain": 2.3})
    lines = bench_report._oracle(o)
    assert "| oracle: every op in its faster precision, no casts | 150.0 | 100.0 | 1.50× |" in lines
    assert "| convolutions and matmuls | 100.0 (67%) | 50.0 | 2.00× |" in lines
    text = " ".join(lines)
    assert expect in text
    if target == 1.6:
        assert "would have to gain 2.29× on average; they gain 2.00× here" in text and "gains 2.30×" in text
    assert "`aten.add.Tensor|((4,), (4,))` 50.00 -> 60.00 ms" in text
    assert bench_report._oracle(None) == []


def test_classify_ops_sorts_per_op_times_into_the_breakdown_classes():
    """The eager breakdown sums the oracle's per-op times by class: convolutions split into the
    sparse level's grouped ones (and its custom depthwise ops) and the U-Net's dense ones by
    their shapes, the rest by op name."""
    import bench_precision

    times = {
        "aten.mm.default|((8, 4), (4, 4))": 2e-3,
        "aten.addmm.default|((4,), (8, 4), (4, 4))": 1e-3,
        "aten.convolution.default|((2, 8, 4, 4), (8, 1, 3, 3), (8,))": 3e-3,  # groups = 8: depthwise
        "lightning_infdiff.depthwise_same_conv_weight_grad.default|((2, 8, 4, 4), (2, 8, 4, 4), (8, 1, 3, 3))": 4e-3,
        "aten.convolution_backward.default|((2, 16, 4, 4), (2, 8, 4, 4), (16, 8, 3, 3))": 5e-3,  # dense
        "aten.native_layer_norm.default|((2, 4),)": 6e-3,
        "aten._to_copy.default|((3,),)": 7e-3,
        "aten.index_add.default|((4, 2), (3,), (3, 2))": 8e-3,
        "aten.add.Tensor|((8,), (8,))": 9e-3,
        "aten._fused_adamw_.default|()": 1e-3,
    }
    assert bench_precision.classify_ops(times) == pytest.approx({
        "matmul / attention": 3e-3, "depthwise conv (sparse level)": 7e-3, "dense conv (U-Net)": 5e-3,
        "normalisation": 6e-3, "copies / casts": 7e-3, "index / gather / scatter / sort": 8e-3,
        "other (elementwise, optimiser, autograd)": 10e-3,
    })


def test_precision_report_says_where_the_eager_breakdown_comes_from(tmp_path):
    """An eager breakdown from the op timer says so (and that it leaves out Python and autograd);
    an older, profiled record keeps its profiler wording."""
    import bench_report

    bd = {"fp32": {"dense conv (U-Net)": 0.08, "normalisation": 0.02}, "bf16": {"dense conv (U-Net)": 0.04, "normalisation": 0.02}}
    timer = bench_report._breakdown(bd, 7, source="op timer")
    assert any("from the per-op timings of the oracle below, median of 7 steps" in ln for ln in timer)
    assert "| **step** | 100.0 | 60.0 | 1.67× |" in timer
    profiled = bench_report._breakdown(bd, 3)
    assert any("median of 3 profiled steps; profiling adds overhead" in ln for ln in profiled)


@pytest.mark.parametrize("share_key", ["matmul_like_share", "matmul_like_share_of_self_time"])
def test_flops_report_reads_the_op_timer_share_and_older_profiled_records(tmp_path, share_key):
    """Section 4's share of the step in matmul-like ops: from the per-op timer (current records)
    or from profiled self time (records written before); the table and the bound quote it."""
    import bench_report

    st = {"median": 0.2, "q1": 0.2, "q3": 0.2, "min": 0.2, "max": 0.2, "n": 3}
    r = {"flops_per_step": 4e9, "step_s": st, "achieved_flops_per_s": 2e10, "fraction_of_peak": 0.05,
         share_key: 0.4, "matmul_like_flops_per_s": 5e10, "matmul_like_fraction_of_peak": 0.125,
         "top_ops": [("aten.convolution_backward.default|((2,),)", 30.0)]}
    rec = {"section": 4, "title": "flops", "threads": 2, "wall_s": 1.0, "loadavg_before": [0.5], "loadavg_after": [0.5],
           "result": {"peak": {"bf16": {"flops_per_s": 4e11, "n": 2048}}, "by_precision": {"bf16": r}}}
    lines, _ = bench_report.flops(rec, tmp_path, [])
    assert any(ln.startswith("| bf16 | 400 (2048²) | 4.00 |") and ln.endswith("| 5.0% | 40% | not recorded |")
               for ln in lines)
    assert any("Within their 40% of the bf16 step" in ln for ln in lines)
    assert any(("largest ops by time" if share_key == "matmul_like_share" else "largest self-time ops") in ln
               for ln in lines)


def test_flops_report_shows_page_faults_and_the_malloc_pin(tmp_path):
    """Section 4 pins malloc as section 3 does and reports each step's page faults, flagging a gap."""
    import bench_report

    st = {"median": 0.2, "q1": 0.2, "q3": 0.2, "min": 0.2, "max": 0.2, "n": 3}

    def row(faults: int) -> dict:
        return {"flops_per_step": 4e9, "step_s": st, "achieved_flops_per_s": 2e10, "fraction_of_peak": 0.05,
                "matmul_like_share": 0.4, "top_ops": [], "faults_per_step": faults}

    res = {"peak": {p: {"flops_per_s": 4e11, "n": 2048} for p in ("fp32", "bf16")},
           "by_precision": {"fp32": row(13280), "bf16": row(0)},
           "malloc": {"pinned": True, "mmap_threshold": 32 << 20, "trim_threshold": 1 << 30}}
    rec = {"section": 4, "title": "flops", "threads": 2, "wall_s": 1.0, "loadavg_before": [0.5], "loadavg_after": [0.5],
           "result": res}
    lines, _ = bench_report.flops(rec, tmp_path, [])
    assert any(ln.startswith("| fp32 |") and ln.endswith("| 40% | 13280 |") for ln in lines)
    assert any("malloc thresholds pinned" in ln and "WARNING: the variants' page faults per step differ by 13280" in ln
               for ln in lines)


def test_precision_choice_benchmark_times_three_variants_and_reports_ratios(monkeypatch):
    """bench_precision_choice: the bare steps of the resolved default, 32-true and bf16-mixed
    (tiny model), and the report's ratios to 32-true; the fit commands name the resolved default
    by leaving trainer.precision unset."""
    import bench_precision_choice as bpc

    times = bpc.step_times(quick=True, repeats=1, default="32-true")
    assert set(times) == set(bpc.VARIANTS) and all(t["n"] == 1 and t["median"] > 0 for t in times.values())
    args = bpc.fit_args("default", 5, Path("/tmp/x"), quick=True)
    assert not any(a.startswith("--trainer.precision") for a in args) and "--trainer.max_steps=5" in args
    assert "--trainer.precision=bf16-mixed" in bpc.fit_args("bf16-mixed", 5, Path("/tmp/x"), quick=False)

    def stats(ms):
        return {"median": ms / 1e3, "q1": ms / 1e3, "q3": ms / 1e3, "min": ms / 1e3, "max": ms / 1e3, "n": 1}

    rec = {"command": "python benchmarks/bench_precision_choice.py", "fit_steps": 5,
           "machine": {"cpu_model": "Test CPU", "cpu_flags": ["avx2"], "torch_threads": 2, "torch": "2.x",
                       "date_utc": "now", "loadavg": [0.1]},
           "choice": {"precision": "32-true", "reason": "faked"}, "cpu_bf16": "False (faked)",
           "malloc": {"pinned": True},
           "step": {"default": stats(100), "32-true": stats(100), "bf16-mixed": stats(150)},
           "fit": {v: {"step": stats(ms), "wall": stats(ms * 10)} for v, ms in
                   (("default", 102), ("32-true", 100), ("bf16-mixed", 160))}}
    text = bpc.report(rec)
    assert "**Resolved default: 32-true** (faked)" in text
    assert "| default (32-true) | 100.0 | 100.0-100.0 | 1.000 |" in text
    assert "| bf16-mixed | 150.0 | 150.0-150.0 | 1.500 |" in text
    assert "| default (32-true) | 102.0 | 102.0-102.0 | 1.020 |" in text and "bf16-mixed 1.6 s" in text
