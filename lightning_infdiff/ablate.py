"""``infdiff ablate``: run the product of config overlays as separate, resumable training runs.

A sweep file is a small YAML::

    name: denoisers                       # optional, for messages
    base: [configs/base.yaml, configs/data/digits.yaml]   # config files every run starts from
    overrides: ["--trainer.max_time=00:00:05:00"]         # optional, appended to every run (they win)
    axes:                                 # each axis: label -> overlay files and/or --key=value
      denoiser:
        sparse_operator: [configs/denoisers/sparse_operator.yaml]
        fno: [configs/denoisers/fno.yaml]
      rate:
        "1": ["--data.subsample_rate=1"]
        "4": ["--data.subsample_rate=4"]

The product of the axes gives the runs (axis order, then label order). Run ``denoiser=fno,
rate=4`` is named ``denoiser-fno__rate-4`` and lives in ``<out>/<name>/``; its command is
``infdiff fit --config <base...> <axis items in axis order> <overrides> <run placement>``
where the run placement puts the TensorBoard logs in ``<out>/<name>/logs`` and adds the
:class:`~lightning_infdiff.callbacks.Throughput` callback. Every command is written to
``<out>/commands.sh`` (one line per run, each redirecting to the run's log files) so runs can
be started one per GPU or as cluster jobs; ``<out>/sweep.json`` records the runs for
``infdiff report``.

An optional ``evaluate:`` mapping holds arguments of ``infdiff evaluate`` (e.g. ``resolutions``,
``num_samples``, ``metrics``, ``floor``, ``sheet``): each finished run is then evaluated on its
``last.ckpt`` into ``<out>/<name>/eval/`` (``results.jsonl``, read by ``infdiff report``), once;
``<out>/<name>/eval/status.json`` records the arguments, and changing them evaluates again.

``--jobs N`` runs N runs at a time; ``--threads T`` gives each its own T cores (CPU affinity and
``OMP_NUM_THREADS``; job slot k gets cores ``kT .. kT+T-1``), so that side-by-side runs on a CPU
do not share cores and their step times stay comparable.

Relative paths in the sweep file are looked up in the current directory, then in the sweep
file's directory and its parents (so a sweep in ``configs/ablations/`` can say
``configs/denoisers/fno.yaml``); commands use absolute paths.

Resumability: a run is finished when ``<out>/<name>/status.json`` says ``done``; it is not run
again. A failed run keeps its return code and the last lines of its stderr in ``status.json``
and is listed at the end (exit code 1); it is re-run only with ``--retry-failed``. An unfinished
attempt's ``logs/`` folder is removed before the run starts again.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import yaml_error

__all__ = ["Run", "Sweep", "evaluate_run", "load_sweep", "main", "run_sweep"]

_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
_KEYS = {"name", "base", "overrides", "axes", "throughput", "evaluate"}
THROUGHPUT = "lightning_infdiff.callbacks.Throughput"
STDERR_TAIL = 30


@dataclass
class Run:
    """One combination of axis labels: its name, parameters and ``infdiff fit`` arguments."""

    name: str
    params: dict[str, str]
    args: list[str]
    directory: Path

    def command(self, launcher: list[str]) -> list[str]:
        """The full command (launcher + ``fit`` + arguments)."""
        return [*launcher, "fit", *self.args]

    @property
    def status_path(self) -> Path:
        """``<out>/<name>/status.json``, the completion marker."""
        return self.directory / "status.json"

    def status(self) -> dict[str, Any] | None:
        """The recorded status (``done``/``failed``/``interrupted``), or ``None`` if never run."""
        return _read_json(self.status_path)

    @property
    def checkpoint(self) -> Path:
        """The run's ``last.ckpt``."""
        return self.directory / "logs" / "checkpoints" / "last.ckpt"

    def evaluate_command(self, launcher: list[str], spec: dict[str, Any]) -> list[str]:
        """``infdiff evaluate`` of the run's last checkpoint into ``<run>/eval`` with ``spec``."""
        args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in spec.items()]
        return [*launcher, "evaluate", f"--ckpt_path={self.checkpoint}", f"--out={self.directory / 'eval'}", *args]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass
class Sweep:
    """A parsed sweep file with its runs under ``out``."""

    name: str
    path: Path
    out: Path
    runs: list[Run] = field(default_factory=list)
    evaluate: dict[str, Any] = field(default_factory=dict)


def _as_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError(f"{where}: expected a list of config files and/or --key=value strings, got {value!r}")
    return [str(v) for v in value]


def _resolve_file(item: str, sweep_path: Path, where: str) -> Path:
    p = Path(item).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p] + [d / p for d in [sweep_path.parent, *sweep_path.parent.parents]]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"{where}: config file {item!r} not found (looked in the current directory and "
                            f"in {sweep_path.parent} and its parents)")


def _items_to_args(items: list[str], sweep_path: Path, where: str) -> list[str]:
    args: list[str] = []
    for item in items:
        if item.startswith("--"):
            if "=" not in item:
                raise ValueError(f"{where}: override {item!r} must be written as --key=value")
            args.append(item)
        else:
            args += ["--config", str(_resolve_file(item, sweep_path, where))]
    return args


def _placement(directory: Path, throughput: dict[str, Any] | None) -> list[str]:
    """Arguments that put the run's logs in ``directory/logs`` and add the throughput callback."""
    args = [
        f"--trainer.default_root_dir={directory}",
        f"--trainer.logger.init_args.save_dir={directory}",
        "--trainer.logger.init_args.name=",
        "--trainer.logger.init_args.version=logs",
    ]
    if throughput is not None:
        args.append(f"--trainer.callbacks+={THROUGHPUT}")
        args += [f"--trainer.callbacks.init_args.{k}={json.dumps(v)}" for k, v in throughput.items()]
    return args


def load_sweep(path: str | Path, out: str | Path | None = None, extra: list[str] | None = None) -> Sweep:
    """Parse and check a sweep file; expand the product of its axes into runs.

    Args:
        path: the sweep YAML.
        out: output folder (default ``ablations/<sweep file stem>``).
        extra: ``--key=value`` overrides appended to every run after the sweep's own overrides.

    Raises:
        ValueError / FileNotFoundError: naming the key or file that is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from err
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a sweep file is a mapping with keys base, axes (and optional name, overrides, throughput)")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(_KEYS)}")
    if "base" not in spec:
        raise ValueError(f"{path}: missing key 'base' (the list of config files every run starts from)")
    base = _items_to_args(_as_list(spec["base"], f"{path}: base"), path, f"{path}: base")
    common = _items_to_args(_as_list(spec.get("overrides") or [], f"{path}: overrides"), path, f"{path}: overrides")
    common += _items_to_args(_as_list(extra or [], "extra overrides"), path, "extra overrides")
    throughput = spec.get("throughput", {})
    if throughput is False:
        throughput = None
    elif not isinstance(throughput, dict):
        raise ValueError(f"{path}: throughput must be a mapping of Throughput arguments or false, got {throughput!r}")
    evaluate = spec.get("evaluate") or {}
    if not isinstance(evaluate, dict):
        raise ValueError(f"{path}: evaluate must be a mapping of 'infdiff evaluate' arguments, got {evaluate!r}")
    bad = sorted(set(evaluate) - _evaluate_keys()) if evaluate else []
    if bad:
        raise ValueError(f"{path}: evaluate: unknown argument(s) {bad}; expected some of {sorted(_evaluate_keys())}")
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict):
        raise ValueError(f"{path}: axes must map axis names to {{label: [overlays]}}, got {axes!r}")
    choices: list[list[tuple[str, str, list[str]]]] = []
    for axis, labels in axes.items():
        axis = str(axis)
        if not _NAME.match(axis) or not isinstance(labels, dict) or not labels:
            raise ValueError(f"{path}: axis {axis!r} must be a name of letters, digits, '_' or '.' mapping "
                             f"to a non-empty {{label: [overlays]}}")
        options = []
        for label, items in labels.items():
            label = str(label)
            where = f"{path}: axes.{axis}.{label}"
            if not re.match(r"^[A-Za-z0-9_.+-]+$", label):
                raise ValueError(f"{where}: labels may use letters, digits and _ . + - only")
            options.append((axis, label, _items_to_args(_as_list(items, where), path, where)))
        choices.append(options)
    out_dir = Path(out) if out is not None else Path("ablations") / path.stem
    sweep = Sweep(str(spec.get("name") or path.stem), path.resolve(), out_dir.resolve(), evaluate=dict(evaluate))
    for combo in itertools.product(*choices):
        name = "__".join(f"{axis}-{label}" for axis, label, _ in combo) or "base"
        directory = sweep.out / name
        args = list(base)
        for _, _, items in combo:
            args += items
        args += common + _placement(directory, throughput)
        sweep.runs.append(Run(name, {axis: label for axis, label, _ in combo}, args, directory))
    return sweep


def _evaluate_keys() -> set[str]:
    from .evaluate import evaluate_command

    return set(inspect.signature(evaluate_command).parameters) - {"ckpt_path", "out"}


def _launcher(text: str | None) -> list[str]:
    return shlex.split(text) if text else [sys.executable, "-m", "lightning_infdiff"]


def write_manifest(sweep: Sweep, launcher: list[str]) -> None:
    """Write ``commands.sh`` (one launchable line per run) and ``sweep.json`` (for the report)."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    lines = ["#!/usr/bin/env bash", f"# {len(sweep.runs)} runs of sweep {sweep.name!r} ({sweep.path});",
             "# each line is independent: run them one per GPU (CUDA_VISIBLE_DEVICES=k) or one per cluster job."]
    for run in sweep.runs:
        cmd = shlex.join(run.command(launcher))
        lines.append(f"mkdir -p {shlex.quote(str(run.directory))} && {cmd} "
                     f"> {shlex.quote(str(run.directory / 'train.log'))} 2> {shlex.quote(str(run.directory / 'train.err'))}")
    (sweep.out / "commands.sh").write_text("\n".join(lines) + "\n")
    manifest = {"name": sweep.name, "sweep_file": str(sweep.path), "launcher": launcher,
                "runs": [{"name": r.name, "params": r.params, "directory": str(r.directory),
                          "command": r.command(launcher)} for r in sweep.runs]}
    (sweep.out / "sweep.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def _cores(slot: int | None, threads: int | None) -> list[int] | None:
    """The cores of job ``slot`` when each job gets its own ``threads`` cores (else ``None``)."""
    if slot is None or not threads:
        return None
    return sorted(os.sched_getaffinity(0))[slot * threads : (slot + 1) * threads]


def _subprocess(cmd: list[str], log: Path, err: Path, slot: int | None, threads: int | None) -> int:
    cores = _cores(slot, threads)
    env = None if cores is None else dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as out, err.open("w") as errf:
        proc = subprocess.Popen(cmd, stdout=out, stderr=errf, env=env)
        if cores is not None:  # at once, before the child starts its thread pools (a pre-exec hook is unsafe in threads)
            try:
                os.sched_setaffinity(proc.pid, cores)
            except ProcessLookupError:  # it has already finished
                pass
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise


def execute(run: Run, launcher: list[str], slot: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run one training subprocess (on job ``slot``'s cores when ``threads``); write and return its status."""
    if (run.directory / "logs").exists():  # an unfinished earlier attempt
        shutil.rmtree(run.directory / "logs")
    run.directory.mkdir(parents=True, exist_ok=True)
    previous = run.status() or {}
    cmd = run.command(launcher)
    (run.directory / "command.sh").write_text(shlex.join(cmd) + "\n")
    status: dict[str, Any] = {"name": run.name, "params": run.params, "attempt": int(previous.get("attempt", 0)) + 1,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": cmd}
    t0 = time.perf_counter()
    try:
        rc = _subprocess(cmd, run.directory / "train.log", run.directory / "train.err", slot, threads)
    except KeyboardInterrupt:
        status.update(status="interrupted", returncode=None, wall_seconds=time.perf_counter() - t0)
        run.status_path.write_text(json.dumps(status, indent=2) + "\n")
        raise
    status.update(status="done" if rc == 0 else "failed", returncode=rc, wall_seconds=time.perf_counter() - t0)
    if rc != 0:
        status["stderr_tail"] = _tail(run.directory / "train.err", STDERR_TAIL)
    run.status_path.write_text(json.dumps(status, indent=2) + "\n")
    return status


def evaluate_run(run: Run, launcher: list[str], spec: dict[str, Any], slot: int | None = None,
                 threads: int | None = None) -> dict[str, Any]:
    """Evaluate a finished run with ``spec`` unless ``<run>/eval/status.json`` says it was done with it."""
    eval_dir = run.directory / "eval"
    previous = _read_json(eval_dir / "status.json") or {}
    if previous.get("status") == "done" and previous.get("spec") == spec:
        return previous
    eval_dir.mkdir(parents=True, exist_ok=True)
    if previous.get("spec") != spec and (eval_dir / "results.jsonl").exists():  # other arguments: start afresh
        (eval_dir / "results.jsonl").rename(eval_dir / f"results.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    cmd = run.evaluate_command(launcher, spec)
    t0 = time.perf_counter()
    rc = _subprocess(cmd, eval_dir / "eval.log", eval_dir / "eval.err", slot, threads)
    status = {"status": "done" if rc == 0 else "failed", "returncode": rc, "spec": spec, "command": cmd,
              "wall_seconds": time.perf_counter() - t0}
    if rc != 0:
        status["stderr_tail"] = _tail(eval_dir / "eval.err", STDERR_TAIL)
    (eval_dir / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    return status


def run_sweep(
    sweep: Sweep, launcher: list[str] | None = None, dry_run: bool = False, retry_failed: bool = False,
    only: list[str] | None = None, echo: bool = True, jobs: int = 1, threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the sweep's runs (``jobs`` at a time, each on its own ``threads`` cores when given) and
    evaluate each finished one when the sweep has an ``evaluate:`` section; return ``{run name: status}``.

    Finished runs are skipped; failed runs are skipped unless ``retry_failed``; ``only``
    restricts to the named runs. With ``dry_run`` only ``commands.sh`` and ``sweep.json`` are
    written and the commands printed.
    """
    launcher = launcher or _launcher(None)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None:
        cores = len(os.sched_getaffinity(0))
        if threads < 1 or jobs * threads > cores:
            raise ValueError(f"--jobs {jobs} x --threads {threads} needs {jobs * threads} cores; this process may use {cores}")
    write_manifest(sweep, launcher)
    say = print if echo else (lambda *a, **k: None)
    names = {r.name for r in sweep.runs}
    for n in only or []:
        if n not in names:
            raise ValueError(f"--only {n!r}: no such run in {sweep.path}; runs: {sorted(names)}")
    selected = [r for r in sweep.runs if not only or r.name in only]
    results: dict[str, dict[str, Any]] = {}
    slots = list(range(jobs))
    lock = threading.Lock()

    def one(item: tuple[int, Run]) -> None:
        i, run = item
        head = f"[{i}/{len(selected)}] {run.name}"
        status = run.status()
        if dry_run:
            say(f"{head}: {shlex.join(run.command(launcher))}")
            results[run.name] = status or {"status": "pending"}
            return
        if status and status.get("status") == "failed" and not retry_failed:
            say(f"{head}: FAILED before (return code {status.get('returncode')}), skipped; --retry-failed re-runs it")
            results[run.name] = status
            return
        with lock:
            slot = slots.pop(0)
        try:
            if status and status.get("status") == "done":
                changed = "command" in status and status["command"] != run.command(launcher)
                say(f"{head}: done before, skipped" + (" (WARNING: its command has changed since; delete "
                                                      f"{run.directory} to run it again)" if changed else ""))
            else:
                say(f"{head}: running, log {run.directory / 'train.log'} / train.err", flush=True)
                status = execute(run, launcher, slot if threads else None, threads)
                outcome = "done" if status["status"] == "done" else f"FAILED (return code {status['returncode']})"
                say(f"{head}: {outcome} in {status['wall_seconds']:.1f} s", flush=True)
            if status["status"] == "done" and sweep.evaluate:
                ev = evaluate_run(run, launcher, sweep.evaluate, slot if threads else None, threads)
                if ev["status"] == "done":
                    say(f"{head}: evaluated ({run.directory / 'eval' / 'results.md'})", flush=True)
                else:
                    say(f"{head}: evaluation FAILED (return code {ev['returncode']}); see {run.directory / 'eval'}/eval.err",
                        flush=True)
                    status = dict(status, status="failed", returncode=ev["returncode"],
                                  stderr_tail=ev.get("stderr_tail", []))
            results[run.name] = status
        finally:
            with lock:
                slots.append(slot)
                slots.sort()

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, enumerate(selected, 1)))
    results = {r.name: results[r.name] for r in selected if r.name in results}
    failed = {k: v for k, v in results.items() if v.get("status") == "failed"}
    done = sum(v.get("status") == "done" for v in results.values())
    if not dry_run:
        say(f"{sweep.name}: {done}/{len(selected)} runs done, {len(failed)} failed (outputs in {sweep.out})")
    for name, st in failed.items():
        say(f"  FAILED {name}: return code {st.get('returncode')}; last stderr lines:")
        for line in st.get("stderr_tail", [])[-8:]:
            say(f"    {line}")
    return results


def main(argv: list[str] | None = None) -> int:
    """``infdiff ablate SWEEP.yaml [--out DIR] [--dry-run] [--retry-failed] [--only NAME] [-- --key=value ...]``."""
    parser = argparse.ArgumentParser(prog="infdiff ablate", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep YAML (base, axes, optional overrides)")
    parser.add_argument("--out", default=None, help="output folder (default: ablations/<sweep file stem>)")
    parser.add_argument("--dry-run", action="store_true", help="write commands.sh and sweep.json, print the commands, run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this run (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="cores per run: each job gets its own (CPU affinity and OMP_NUM_THREADS)")
    parser.add_argument("--launcher", default=None,
                        help="command before 'fit' (default: '<this python> -m lightning_infdiff')")
    parser.epilog = "Arguments after '--' are --key=value overrides appended to every run."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        sweep = load_sweep(args.sweep, args.out, extra)
        results = run_sweep(sweep, _launcher(args.launcher), args.dry_run, args.retry_failed, args.only,
                            jobs=args.jobs, threads=args.threads)
    except (ValueError, FileNotFoundError) as err:
        print(f"infdiff ablate: error: {err}", file=sys.stderr)
        return 2
    return 1 if any(v.get("status") == "failed" for v in results.values()) else 0
