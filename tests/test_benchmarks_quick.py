"""Smoke test of the benchmark suite's quick mode: it runs, and its report has the promised shape.

Runs ``python benchmarks/suite.py --quick --out <tmp>`` in a subprocess (one thread, tiny
settings) and checks the JSON schema (machine record, every section present with load
averages and a result, medians with spreads, ratios), the markdown report and the PNG plots.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _is_spread(st: dict) -> bool:
    keys = {"median", "q1", "q3", "min", "max", "n"}
    return keys <= set(st) and st["n"] >= 1 and st["min"] <= st["q1"] <= st["median"] <= st["q3"] <= st["max"]


def test_suite_quick_mode(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["schema"] == "lightning_infdiff.suite/1" and suite["quick"] is True
    m = suite["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and m["torch"]
    names = ["subsample", "sampling", "precision", "flops", "loading", "e2e"]
    assert list(suite["sections"]) == names
    for name in names:
        rec = suite["sections"][name]
        assert "error" not in rec, (name, rec.get("error"))
        assert rec["threads"] == 1 and len(rec["loadavg_before"]) == 3 and len(rec["loadavg_after"]) == 3
        assert rec["machine"]["torch_threads"] == 1

    rows = suite["sections"]["subsample"]["result"]["rows"]
    measured = [r for r in rows if "step" in r]
    assert measured and all(_is_spread(r["step"]) and r["peak_mb"] >= 0 for r in measured)
    rate1 = [r for r in measured if r["rate"] == 1]
    assert rate1 and all(math.isclose(r["speedup_vs_rate1"], 1.0) for r in rate1)

    samp = suite["sections"]["sampling"]["result"]
    assert samp["samplers"] == ["ddpm", "ddim", "dpmpp_2m"]
    for row in samp["denoisers"].values():
        cells = [c for c in row["by_res"].values() if "per_nfe" in c]
        assert cells and all(_is_spread(st) for c in cells for st in c["per_nfe"].values())
        assert set(row["exponent"]) == set(samp["samplers"])

    prec = suite["sections"]["precision"]["result"]
    assert set(prec["eager"]) == {"fp32", "bf16", "fp32+channels_last", "bf16+channels_last"}
    for p in ("fp32", "bf16"):  # the op-class breakdown found the convs and matmuls of the step
        bd = prec["breakdown"][p]
        assert bd["dense conv (U-Net)"] > 0 and bd["depthwise conv (sparse level)"] > 0 and bd["matmul / attention"] > 0
    assert math.isclose(prec["ratios"]["bf16_speedup_vs_fp32"],
                        prec["eager"]["fp32"]["median"] / prec["eager"]["bf16"]["median"])
    sweep = prec["batch_sweep"]  # quick: batches 1 and 2, so the fitted line passes through both
    for p in ("fp32", "bf16"):
        fit, pts = sweep["fit"][p], sweep["step_s"][p]
        assert set(pts) == {"1", "2"} and pts["2"] == prec["eager"][p]["median"]  # batch 2: the main measurement
        for b, t in pts.items():
            assert math.isclose(fit["fixed_s"] + fit["per_example_s"] * int(b), t, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(sweep["per_example_speedup"], sweep["fit"]["fp32"]["per_example_s"] / sweep["fit"]["bf16"]["per_example_s"])
    orc = prec["oracle"]  # the per-op oracle timed the same step's ops in both precisions
    assert orc["repeats"] == 2 and orc["conv_matmul"]["fp32_s"] > 0 and orc["rest"]["fp32_s"] > 0
    assert orc["oracle_s"] <= min(orc["fp32_s"], orc["bf16_s"] - orc["bf16_only_s"]) + 1e-12
    assert orc["bf16_only_s"] > 0  # autocast's casts exist only in the bf16 step
    assert orc["matmul"]["gain"] > 0
    for p in ("fp32", "bf16"):  # the raw per-op medians are recorded and add up to the totals
        assert math.isclose(sum(orc["op_times_s"][p].values()), orc[f"{p}_s"], rel_tol=1e-9)

    flops = suite["sections"]["flops"]["result"]
    for p in ("fp32", "bf16"):
        r = flops["by_precision"][p]
        assert r["flops_per_step"] > 0 and flops["peak"][p]["flops_per_s"] > 0
        assert math.isclose(r["fraction_of_peak"], r["achieved_flops_per_s"] / flops["peak"][p]["flops_per_s"])
        assert 0.0 < r["matmul_like_share"] < 1.0 and r["top_ops"] and r["faults_per_step"] >= 0
    assert flops["malloc"]["pinned"] in (True, False)

    load = suite["sections"]["loading"]["result"]
    assert load["training_steps_per_s"] > 0 and all(r["batches_per_s"] > 0 for r in load["loaders"].values())
    assert "train_s" in suite["sections"]["e2e"]["result"]["run"]

    md = (tmp_path / "suite.md").read_text()
    assert md.startswith("# Benchmark suite") and "## 1." in md and "## 6." in md and m["cpu_model"] in md
    assert "| depthwise conv (sparse level) |" in md and "Bound:" in md and "Fixed and per-example cost" in md
    assert "| oracle: every op in its faster precision, no casts |" in md
    pngs = sorted(tmp_path.glob("suite_*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
