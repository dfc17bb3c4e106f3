"""The CUDA check script in its tiny mode, on CPU: it cannot rot between GPU runs.

``benchmarks/gpu_check.py --tiny`` runs every section at tiny sizes; without CUDA the sections that
measure CUDA memory are skipped with the reason, and the tests marked ``cuda`` skip. The CUDA-only
sections' code is run here too, in-process on CPU, so that a change to the harness they share
breaks a test rather than the next GPU run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_tiny_gpu_check_reports_every_section_with_numbers_or_a_reason(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "report.md").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    sections = report["sections"]
    assert md.startswith("# GPU check (tiny: not figures)") and report["tiny"] is True
    assert list(sections) == list(gpu_check.SECTIONS)
    for i, (key, (title, *_)) in enumerate(gpu_check.SECTIONS.items(), 1):
        assert f"## {i}. {title}" in md
        assert sections[key]["status"] in ("ran", "skipped"), sections[key]
        if sections[key]["status"] == "skipped":
            assert sections[key]["reason"] in md
    if not torch.cuda.is_available():
        for key in ("infdiff", "grid"):
            assert sections[key]["status"] == "skipped" and "no CUDA device" in sections[key]["reason"]
        tests = sections["tests"]["result"]
        assert tests["counts"].get("skipped", 0) >= 20 and "passed" not in tests["counts"], tests
        assert any("no CUDA device" in note for note in tests["notes"]) and not tests["all_passed"]
    for row in sections["sampling"]["result"].values():
        assert math.isfinite(row["exponent"]) and all(s > 0 for s in row["s_per_image"].values())
    training = sections["training"]["result"]
    assert training["steps"] == 10
    assert [g["grid"] for g in training["grids"]] == ["16x16", "32x32", "64x64", "16x32"]  # 1x, 2x, 4x, wide
    for g in training["grids"]:
        assert (tmp_path / g["png"]).is_file() and g["png"] in md
    assert sections["machine"]["result"]["torch"] == torch.__version__


def test_cuda_only_sections_run_on_cpu_at_tiny_sizes(tmp_path: Path) -> None:
    """Sections 2 and 3 in-process on CPU (peak memory then is the process's, not a figure)."""
    a = argparse.Namespace(tiny=True, batch=1, out=tmp_path, left=lambda: 300.0)
    done = {}
    done["infdiff"], text = gpu_check.s_infdiff(a, done)
    assert [(r["res"], r["rate"]) for r in done["infdiff"]["rows"]] == [(16, 1), (16, 8), (32, 1), (32, 8)]
    assert all(r["step_s"] > 0 and "error" not in r for r in done["infdiff"]["rows"])
    assert len(done["infdiff"]["targets"]) == 2 and "∞-Diff, 8x vs 1x" in text
    grid, text = gpu_check.s_grid(a, done)
    assert [r["name"] for r in grid["rows"]] == ["U-Net", "U-ViT"]
    assert all(r["step_s"] > 0 and "error" not in r for r in grid["rows"]) and "vs operator 8x" in text
