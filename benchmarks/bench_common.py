"""Shared helpers of the benchmark suite: machine record, robust statistics, child processes.

Every figure of the suite is a median over repeats with its spread (interquartile range and
min-max); every child process measures its own peak memory as the ``ru_maxrss`` high-water
mark above the baseline after set-up (see ``benchmarks/bench_sparse.py`` for why RSS).

A section module ``benchmarks/bench_X.py`` exposes ``run(quick, threads, budget_s) -> dict``;
settings that need a fresh process (memory) call :func:`run_child` on a script whose
``--child JSON`` mode prints one JSON line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


#: ``torch.compile`` modes the precision section can time (``suite.py --compile-mode``); the
#: CUDA-graph mode "reduce-overhead" is left out, these are CPU benchmarks.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune")

def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The vector-unit flags that matter for matmul throughput (avx2, avx512*, amx*)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx2", "avx512", "amx")))
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """CPU model, cores, torch version and thread settings of this process."""
    import torch

    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "loadavg": list(os.getloadavg()),
    }


def spread(times: list[float]) -> dict:
    """Median, quartiles (inclusive method), min, max and count of a list of seconds."""
    if not times:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return {"median": statistics.median(times), "q1": q1, "q3": q3, "min": min(times), "max": max(times),
            "n": len(times)}


def choose_subset(flag: str, text: str, known) -> list[str]:  # noqa: ANN001 - any iterable of names
    """The names of a comma-separated ``--flag`` value, in the given order; exits with the known
    names when one is unknown or none is given."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - set(known):
        raise SystemExit(f"{flag}: choose from {', '.join(known)}; got {text!r}")
    return names


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def minor_faults() -> int:
    """Minor page faults of this process so far (``ru_minflt``; 0 where not reported)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                faults: dict[str, list[int]] | None = None) -> dict[str, list[float]]:
    """Time several variants round-robin (``a b c a b c ...``), so drifting machine load hits
    every variant alike and their ratios stay meaningful.

    If ``faults`` is given, it receives each timed call's minor page faults per variant: a
    variant whose allocations keep faulting in fresh pages pays for it in time (see
    :func:`pin_malloc`), and the count shows whether that happened.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    if faults is not None:
        faults.update({k: [] for k in fns})
    for _ in range(repeats):
        for k, fn in fns.items():
            f0 = minor_faults()
            t0 = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t0)
            if faults is not None:
                faults[k].append(minor_faults() - f0)
    return out


# glibc's malloc thresholds: the package pins them in its entry points (lightning_infdiff/malloc.py,
# which explains why); every benchmark process pins them too, so a step's page faults do not depend
# on what the process ran before (issue 10: an fp32 step took 278 ms with ~8,000 faults per step in a
# process that also held a bf16 model, 178 ms with ~630 pinned, which made bf16 read 2.05x faster
# instead of 1.31x).
from lightning_infdiff.malloc import (  # noqa: E402, F401 - re-exported for the benchmarks
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    PINNED_MMAP_THRESHOLD,
    PINNED_TRIM_THRESHOLD,
    pin_malloc,
)


def fit_exponent(pixels: list[int], times: list[float]) -> float:
    """Least-squares slope ``p`` of ``log time = p log pixels + c``."""
    pts = [(math.log(p), math.log(t)) for p, t in zip(pixels, times, strict=True) if t > 0 and math.isfinite(t)]
    if len(pts) < 2:
        return math.nan
    mx, my = statistics.fmean(p for p, _ in pts), statistics.fmean(t for _, t in pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_env(threads: int) -> dict:
    """Environment of a child: worktree first on the path, ``threads`` OpenMP threads, offline hub."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(BENCH)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_child(script: Path, spec: dict, threads: int, timeout: float | None = None,
              env: dict[str, str] | None = None) -> dict:
    """Run ``script --child JSON`` in a fresh interpreter; return its last stdout line as JSON.
    ``env`` adds variables to the child's environment (:func:`child_env`).

    Adds the 1-minute load average before/after and the child's wall time (import included).
    Failures and time-outs come back as ``{"error": ...}`` rather than raising, so one broken
    setting is reported instead of losing a whole section.
    """
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)], capture_output=True,
                             text=True, env=dict(child_env(threads), **(env or {})), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timed out after {timeout:.0f} s", wall_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    if out.returncode:
        return dict(spec, error=out.stderr.strip()[-1500:], wall_s=wall)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(wall_s=wall, load_before=load0, load_after=os.getloadavg()[0])
    return result


_FORKSERVERS: dict[tuple[str, ...], object] = {}


def _forked_main(module: str, spec: dict, threads: int, conn) -> None:  # noqa: ANN001 - a Connection
    """Body of a :func:`run_forked` child: run ``module.child(spec)``, send the result or the error."""
    import importlib
    import traceback

    try:
        import torch

        torch.set_num_threads(threads)
        conn.send(("ok", importlib.import_module(module).child(spec)))
    except BaseException:  # noqa: BLE001 - reported to the parent, not hidden
        conn.send(("error", traceback.format_exc()[-1500:]))
    finally:
        conn.close()


def run_forked(module: str, spec: dict, threads: int, timeout: float | None = None,
               preload: tuple[str, ...] = ("torch",)) -> dict:
    """``module.child(spec)`` in a fresh process forked from a server that has ``preload`` imported.

    Like :func:`run_child` (a fresh process per setting, errors and time-outs returned as
    ``{"error": ...}``, wall time and load averages added), but the children skip the
    interpreter start, the imports (about 1.1 s for torch and the package here) and the
    interpreter teardown: the suite's section 1 runs about a hundred settings. Each child is
    still its own process, so ``ru_maxrss`` above a baseline taken after its set-up is its own
    peak (a forked child's high-water mark starts at the server's resident size, which only
    imported modules and is below any child's baseline).
    """
    import multiprocessing

    ctx = _FORKSERVERS.get(preload)
    if ctx is None:
        ctx = multiprocessing.get_context("forkserver")
        # "__main__" too: the server imports the main script once (the suite's, guarded by
        # ``if __name__ == "__main__"``), so children do not re-run it
        ctx.set_forkserver_preload(["__main__", *preload])
        _FORKSERVERS[preload] = ctx
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_main, args=(module, spec, threads, send), daemon=True)
    proc.start()
    send.close()
    try:
        msg = recv.recv() if recv.poll(timeout) else None
    except EOFError:  # the child died without a word (killed, crashed in C)
        msg = None
    proc.join(5 if msg is not None else 0)  # a timed-out child is killed at once
    if proc.is_alive():
        proc.kill()
        proc.join()
    wall = time.perf_counter() - t0
    if msg is None:
        why = f"timed out after {timeout:.0f} s" if proc.exitcode in (None, -9) else f"exit code {proc.exitcode}"
        return dict(spec, error=why, wall_s=wall)
    status, result = msg
    if status != "ok":
        return dict(spec, error=result, wall_s=wall)
    result.update(wall_s=wall, load_before=load0, load_after=os.getloadavg()[0])
    return result


class Budget:
    """Wall-clock budget of a section: settings predicted to overrun it are skipped (and say so)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, predicted_s: float) -> bool:
        return predicted_s <= self.left()


def child_main(child: Callable[[dict], dict]) -> bool:
    """If ``--child JSON`` is on the command line, run ``child`` on it, print JSON and return True."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(child(spec)))
        return True
    return False


def quickstart_config() -> dict:
    """The main job's configuration: ``configs/quickstart.yaml`` merged over ``configs/base.yaml``
    (mappings merged key by key, as LightningCLI merges stacked configs of the same classes)."""
    import yaml

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    configs = [yaml.safe_load((ROOT / "configs" / name).read_text()) for name in ("base.yaml", "quickstart.yaml")]
    return merge(*configs)


def default_denoiser(in_channels: int = 1):  # noqa: ANN201 - returns the configured nn.Module
    """The README's default denoiser: ``configs/quickstart.yaml``'s ``model.denoiser`` (digits: 1 channel)."""
    import importlib

    cfg = quickstart_config()["model"]["denoiser"]
    module, cls = cfg["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(in_channels=in_channels, **cfg["init_args"])


def default_optimizer(params):  # noqa: ANN001, ANN201 - parameters in, torch optimiser out
    """The training optimiser of the README's main command: ``configs/base.yaml``'s ``model.optimizer``
    (AdamW with the fused update), so a benchmarked step costs what a training step costs."""
    import importlib

    cfg = base_config()["model"]["optimizer"]
    module, cls = cfg["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(params, **cfg.get("init_args", {}))


def base_config() -> dict:
    """``configs/base.yaml`` (trainer, optimiser and callbacks of every run) of the source tree
    ``lightning_infdiff`` is imported from (``bench_optim.py`` runs older trees side by side)."""
    import yaml

    import lightning_infdiff

    tree = Path(lightning_infdiff.__file__).resolve().parents[1] / "configs" / "base.yaml"
    return yaml.safe_load((tree if tree.exists() else ROOT / "configs" / "base.yaml").read_text())


def default_process():  # noqa: ANN201 - returns a GaussianProcess
    """The quickstart's process: heat-kernel mollifier of the configured width, v-parametrisation."""
    from lightning_infdiff.operators import HeatKernelOperator
    from lightning_infdiff.processes import GaussianProcess

    cfg = quickstart_config()["model"]["process"]["init_args"]
    return GaussianProcess(operator=HeatKernelOperator(**cfg["operator"]["init_args"]),
                           parametrisation=cfg["parametrisation"])
