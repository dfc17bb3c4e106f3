"""The benchmarks: one smoke run of the quick suite, and the numbers the committed reports state.

The report tests read the markdown in ``benchmarks/results/`` and check that each stated ratio is
what the report's own table gives, and that the README quotes the report; the link test checks
that every relative link of the README, the docs and the result pages resolves.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402


def number(cell: str) -> float:
    """The first number of a table cell (``"431.5 [417.1-493.1]"`` -> 431.5, ``"4.84×"`` -> 4.84)."""
    return float(re.match(r"[-\d.,]+", cell.strip()).group().replace(",", ""))


def test_quick_suite_runs_every_section_and_reports_tables(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    md = (tmp_path / "suite.md").read_text()
    assert md.startswith("# Benchmark suite (quick") and "Machine: " in md and "flags: " in md
    for i, title in enumerate(["Training cost against coordinate subsampling", "Sampling cost against resolution",
                               "Precision chosen by the hardware", "Data loading against training"], 1):
        assert f"## {i}. {title}" in md
    sub = harness.parse_table(md, "## 1.")
    assert [r["rate"] for r in sub] == ["1×", "8×"] and sub[0]["speed-up"] == "1.00×"
    assert number(sub[1]["speed-up"]) == pytest.approx(number(sub[0]["step ms"]) / number(sub[1]["step ms"]), abs=0.02)
    prec = {r["variant"]: r for r in harness.parse_table(md, "### Bare training step")}
    assert prec["32-true"]["ratio to 32-true"] == "1.000" and number(prec["bf16-mixed"]["median ms"]) > 0
    assert number(harness.parse_table(md, "## 4.")[0]["batches/s"]) > 0


def test_subsample_ratios_are_against_rate_1_of_the_same_resolution() -> None:
    import bench_subsample

    rows = bench_subsample.with_ratios([dict(res=64, rate=1, step_s=0.4, peak_mb=500.0),
                                        dict(res=64, rate=8, step_s=0.1, peak_mb=100.0),
                                        dict(res=128, rate=1, step_s=2.0, peak_mb=2000.0),
                                        dict(res=128, rate=8, step_s=0.5, peak_mb=250.0)])
    assert [(r["speedup"], r["memory"]) for r in rows] == [(1.0, 1.0), (4.0, 5.0), (1.0, 1.0), (4.0, 8.0)]
    cells = harness.parse_table("# t\n" + bench_subsample.table(rows), "# t")
    assert cells[3]["speed-up"] == "4.00×" and cells[3]["memory reduction"] == "8.00×"


def test_sampling_exponent_recovers_a_power_law() -> None:
    import bench_sampling

    per_nfe = {r: 1e-3 * (r * r) ** 0.75 for r in (32, 64, 128, 256)}
    assert bench_sampling.exponent(per_nfe) == pytest.approx(0.75)
    assert bench_sampling.exponent({32: 1.0}) is None


def test_precision_choice_report_ratios_follow_its_medians_and_the_readme_quotes_them() -> None:
    text = (RESULTS / "precision_choice" / "epyc_avx2.md").read_text()
    bf16 = []
    for heading in ("## Bare training step", "## `infdiff fit`"):
        rows = {r["variant"].split(" ")[0]: r for r in harness.parse_table(text, heading)}
        ref = number(rows["32-true"]["median ms"])
        for r in rows.values():
            assert number(r["ratio to 32-true"]) == pytest.approx(number(r["median ms"]) / ref, abs=1.5e-3)
        bf16.append(number(rows["bf16-mixed"]["ratio to 32-true"]))
    quoted = f"{bf16[0]:.1f}x (bare step) to {bf16[1]:.1f}x (`infdiff fit`)"
    assert quoted in (ROOT / "README.md").read_text()
    assert quoted in (ROOT / "docs" / "guide.md").read_text()


@pytest.mark.parametrize(("page", "heading", "name_col", "step_col", "peak_col", "mem_col"), [
    ("suite_epyc/suite.md", "## 1.", "denoiser", "step ms median [IQR]", "peak MB", "mem. reduction"),
    ("sparse_128_inner32.md", "# Sparse", "precision", "step (ms)", "peak (MB)", "mem. reduction"),
])
def test_subsampling_reports_ratios_follow_their_tables(page, heading, name_col, step_col, peak_col, mem_col) -> None:  # noqa: ANN001
    rows = harness.parse_table((RESULTS / page).read_text(), heading)
    checked = 0
    for r in rows:
        if not r[step_col][:1].isdigit():
            continue  # a skipped or failed setting
        ref = next(q for q in rows if q[name_col] == r[name_col] and q["data"] == r["data"] and q["rate"] == "1×")
        speed = number(ref[step_col]) / number(r[step_col])
        assert number(r["speed-up"]) == pytest.approx(speed, rel=0.01, abs=0.01), r
        assert number(r[mem_col]) == pytest.approx(number(ref[peak_col]) / number(r[peak_col]), rel=0.02), r
        checked += 1
    assert checked >= 8


def test_suite_target_row_is_the_infdiff_operator_at_128_and_8x() -> None:
    text = (RESULTS / "suite_epyc" / "suite.md").read_text()
    row = next(r for r in harness.parse_table(text, "## 1.")
               if r["denoiser"] == "sparse_operator_infdiff" and r["data"] == "128²" and r["rate"] == "8×")
    target = harness.parse_table(text, "## Targets")[0]["measured"]
    assert target == f"{row['speed-up']} faster, {row['mem. reduction']} less memory"


def test_subsampling_study_ratios_follow_its_table() -> None:
    text = (RESULTS / "studies.md").read_text()
    rows = harness.parse_table(text, "## Subsampling rate")
    base = rows[0]
    for r in rows:
        assert number(r["speed-up"]) == pytest.approx(number(base["step ms (32², 1 thread)"])
                                                      / number(r["step ms (32², 1 thread)"]), abs=0.006)
    stated = re.search(r"grows ([\d.]+)×, ([\d.]+)× and ([\d.]+)×", text).groups()
    for r, s in zip(rows[1:], stated, strict=True):
        assert float(s) == pytest.approx(number(r["FD 32²"]) / number(base["FD 32²"]), abs=0.006)


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md",
             *RESULTS.rglob("*.md")]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_parse_table_reads_what_table_writes() -> None:
    text = "# t\n\n## a\n\n" + harness.table(["x", "y"], [(1, 0.123456), ("b", "c")]) + "\n\ntext\n"
    assert harness.parse_table(text, "## a") == [{"x": "1", "y": "0.123"}, {"x": "b", "y": "c"}]
    assert math.isclose(harness.fit_exponent([1, 2, 4], [3, 6, 12]), 1.0)
