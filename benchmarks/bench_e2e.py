"""Suite section 6: end to end, the README's main command (``make train``).

``make train`` runs ``python -m lightning_infdiff.quickstart``: 8 minutes of wall-bounded
training, then sampling at 32², 64², 128² and 32x64 with classifier scoring. The quickstart
itself times ``train`` (LightningCLI construction: imports of the config's classes, model and
data set-up, plus ``fit``) and ``sample`` (sampling and scoring all grids) and writes them to
its ``quickstart_summary.json``. This section:

* by default (no new run) reports the last committed full ``--e2e`` measurement,
  ``benchmarks/results/suite_e2e/suite.json`` (total, set-up, training, sampling, with the date
  and torch version it was measured with); without it, the quickstart's own record
  ``benchmarks/results/quickstart/summary.json``, whose set-up is unknown because it has no
  total wall time;
* with ``--e2e`` runs the command in a fresh process (working directory under the output
  folder, so ``runs/`` lands there), measures its total wall time, parses the summary it
  prints, and reports ``set-up = total - train - sample`` (interpreter start, imports,
  checkpoint reload, classifier load). Extra quickstart arguments (e.g. a shorter
  ``--trainer.max_time``) go through ``--e2e-args``.

The import time of ``lightning_infdiff.quickstart`` in a fresh interpreter is measured either
way (median of 3) as the part of set-up that needs no training.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, child_env, spread

RECORD = ROOT / "benchmarks" / "results" / "quickstart" / "summary.json"
E2E_RECORD = ROOT / "benchmarks" / "results" / "suite_e2e" / "suite.json"


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def last_e2e_run(path: Path) -> dict | None:
    """The ``run`` of the last full ``--e2e`` measurement recorded at ``path``, or None.

    Only a complete measurement counts: one with a total wall time and no error. Its source names
    the file and the date and torch version of the machine it ran on, since it is not re-measured.
    """
    if not path.exists():
        return None
    try:
        sec = json.loads(path.read_text())["sections"]["e2e"]
        run = sec["result"]["run"]
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    if run.get("error") or run.get("total_s") is None or "train_s" not in run:
        return None
    m = sec.get("machine", {})
    return dict(run, source=f"recorded: last full --e2e run, {_shown(path)} "
                            f"({m.get('date_utc', 'date unknown')} UTC, torch {m.get('torch', '?')})")


def import_time(threads: int, repeats: int = 3) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import lightning_infdiff.quickstart"], env=child_env(threads),
                       check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return spread(times)


def from_summary(summary: dict, total_s: float | None) -> dict:
    train, sample = float(summary["train_seconds"]), float(summary["sample_seconds"])
    steps = summary.get("steps")
    return {"total_s": total_s, "train_s": train, "sample_s": sample,
            "setup_s": None if total_s is None else total_s - train - sample,
            "steps": steps, "steps_per_s": steps / train if steps else None,
            "sample_seconds_per_image": {g["grid"]: g["seconds_per_image"] for g in summary.get("grids", [])},
            "accuracy_vs_requested_digit": {g["grid"]: g.get("accuracy_vs_requested_digit")
                                            for g in summary.get("grids", [])}}


def run_e2e(out: Path, threads: int, extra: list[str]) -> dict:
    work = out / "e2e_run"
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lightning_infdiff.quickstart", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=child_env(threads), capture_output=True, text=True, check=False)
    total = time.perf_counter() - t0
    (work / "stdout.txt").write_text(proc.stdout)
    (work / "stderr.txt").write_text(proc.stderr)
    if proc.returncode:
        return {"command": shlex.join(cmd), "error": proc.stderr[-2000:], "total_s": total}
    m = re.search(r"^summary: (.+)$", proc.stdout, re.MULTILINE)
    if m is None:
        return {"command": shlex.join(cmd), "error": "no 'summary:' line in the quickstart's output", "total_s": total}
    path = Path(m.group(1).strip())
    summary = json.loads((path if path.is_absolute() else work / path).read_text())
    trained = re.search(r"trained (\d+) steps", proc.stdout)
    if trained and "steps" not in summary:
        summary["steps"] = int(trained.group(1))
    return dict(from_summary(summary, total), command=shlex.join(cmd), source="measured now (--e2e)")


def run(quick: bool, threads: int, budget_s: float, e2e: bool = False, out: Path | None = None,
        e2e_args: str = "") -> dict:
    res: dict = {"command": "make train  (= python -m lightning_infdiff.quickstart)",
                 "method": "wall times printed by the quickstart (train includes CLI/model/data set-up and fit; "
                           "sample includes sampling and scoring every grid); set-up = total - train - sample"}
    if e2e:
        res["run"] = run_e2e(out or ROOT / "benchmarks" / "results", threads, shlex.split(e2e_args))
    elif (last := last_e2e_run(E2E_RECORD)) is not None:
        res["run"] = last
    elif RECORD.exists():
        summary = json.loads(RECORD.read_text())
        res["run"] = dict(from_summary(summary, None), source=f"recorded: {_shown(RECORD)}",
                          machine_note=summary.get("machine"))
    else:
        res["run"] = {"error": f"no record at {RECORD} and --e2e not given"}
    res["import_s"] = {"skipped": "quick mode"} if quick else import_time(threads)
    r = res["run"]
    if "train_s" in r:
        setup = "unknown" if r["setup_s"] is None else f"{r['setup_s']:.0f} s"
        print(f"  train {r['train_s']:.0f} s, sample {r['sample_s']:.0f} s, set-up {setup} ({r['source']})", flush=True)
    return res
