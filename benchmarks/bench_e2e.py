"""End to end: the README's main command, ``make train``, split into set-up, training and sampling.

Runs ``python -m lightning_infdiff.quickstart`` (extra arguments are passed on, e.g.
``--trainer.max_time 00:00:01:00`` for a short run) in a fresh process in a scratch folder,
measures its wall time and reads the ``quickstart_summary.json`` it writes: training (CLI,
model and data set-up, then ``fit``) and sampling and scoring seconds, the steps trained, and per
grid the classifier's agreement with the requested digit. Set-up is the rest of the wall time
(interpreter, imports, checkpoint reload). The main job's committed record is
``results/precision_choice/main_job_epyc_avx2.md``.

    python benchmarks/bench_e2e.py --out benchmarks/results/e2e.md
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

QUICK_ARGS = ["--trainer.max_steps=2", "--trainer.max_time=null", "--trainer.limit_val_batches=0"]


def split(summary: dict, total_s: float) -> dict:
    """Set-up, training and sampling seconds from the quickstart's summary and the total wall time."""
    train, sample = float(summary["train_seconds"]), float(summary["sample_seconds"])
    return {"total_s": total_s, "train_s": train, "sample_s": sample, "setup_s": total_s - train - sample}


def run(quick: bool, extra: list[str]) -> str:
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as work:
        cmd = [sys.executable, "-m", "lightning_infdiff.quickstart", *(QUICK_ARGS if quick else []), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
        total = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"the quickstart failed:\n{proc.stderr[-3000:]}")
        path = Path(re.search(r"^summary: (.+)$", proc.stdout, re.MULTILINE).group(1).strip())
        summary = json.loads((path if path.is_absolute() else Path(work) / path).read_text())
    s = split(summary, total)
    rows = [[k.removesuffix("_s"), f"{v:.1f}"] for k, v in s.items()]
    grids = [[g["grid"], g.get("accuracy_vs_requested_digit", "-"), g.get("seconds_per_image", "-")]
             for g in summary.get("grids", [])]
    return (f"`{' '.join(['python -m lightning_infdiff.quickstart', *extra])}`, {summary.get('steps', '?')} "
            f"training steps.\n\n{harness.table(['part', 'seconds'], rows)}\n\n"
            f"{harness.table(['grid', 'agrees with the requested digit', 's per image'], grids)}\n")


if __name__ == "__main__":
    args, extra = harness.parser(__doc__).parse_known_args()
    harness.report("End to end: make train", run(args.quick, extra), args.out)
