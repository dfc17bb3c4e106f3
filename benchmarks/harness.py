"""The one harness every benchmark script shares.

Timing is a median over repeats (variants timed round-robin, so drifting load hits them alike);
the machine is described by its CPU model and the flags that decide bf16 speed; reports are
markdown tables; every script takes ``--quick`` (tiny sizes, a smoke run whose numbers are not
figures) and ``--out`` (where the markdown report goes).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: CPU flags that decide how fast bf16 and wide fp32 run (``/proc/cpuinfo``).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> str:
    """``"<model name> (flags: avx2, ...)"``: the CPU and which of :data:`FLAGS` it has."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags]
    return f"{model} (flags: {', '.join(have) or 'none of ' + '/'.join(FLAGS)})"


def machine() -> str:
    """One line for a report's header: CPU, cores, threads, torch, date, load."""
    import torch

    return (f"{cpu()}; {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads; "
            f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
            f"1-min load {os.getloadavg()[0]:.2f}")


def timed(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each variant: ``warmup`` untimed calls each, then ``repeats``
    rounds calling the variants in turn (``a b c a b c ...``)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def ratios(medians: dict[str, float], ref: str) -> dict[str, float]:
    """Each median divided by the reference variant's (above 1: slower than the reference)."""
    return {k: v / medians[ref] for k, v in medians.items()}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats are shown with 3 significant figures."""
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def parse_table(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first markdown table after the line starting with ``heading``, as dicts
    keyed by the header (what the tests read committed reports with)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    block = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            break
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in r.strip("|").split("|")), strict=True)) for r in block[2:]]


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """``p`` of ``y ∝ x^p``, least squares in log-log space."""
    import math

    return statistics.linear_regression([math.log(x) for x in xs], [math.log(y) for y in ys])[0]


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every script shares: ``--quick``, ``--out``, ``--threads``."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a figure")
    ap.add_argument("--out", type=Path, default=None, help="markdown report (it is printed either way)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return ap


def report(title: str, body: str, out: Path | None) -> str:
    """Header (title, command, machine) + body; printed, and written to ``out`` if given."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    command = " ".join(["python", shown.as_posix(), *sys.argv[1:]])
    text = f"# {title}\n\nCommand: `{command}`\n\nMachine: {machine()}\n\n{body.strip()}\n"
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def setup(args: argparse.Namespace) -> None:
    """Threads and glibc's malloc thresholds (pinned, as the package's entry points do)."""
    import torch

    from lightning_infdiff.malloc import pin_malloc

    if args.threads:
        torch.set_num_threads(args.threads)
    pin_malloc()


def main_config() -> dict:
    """The main job's configuration: its configs (``lightning_infdiff.quickstart.MAIN_JOB``)
    merged key by key, as LightningCLI merges stacked configs."""
    import yaml

    from lightning_infdiff.quickstart import MAIN_JOB

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    out: dict = {}
    for path in MAIN_JOB:
        out = merge(out, yaml.safe_load(path.read_text()))
    return out


def instantiate(cfg: dict, *args: object, **kwargs: object) -> object:
    """Build ``class_path`` with ``init_args`` (plus ``kwargs``), as LightningCLI does."""
    module, cls = cfg["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(*args, **{**cfg.get("init_args", {}), **kwargs})


def main_denoiser(quick: bool = False):  # noqa: ANN201 - an nn.Module
    """The main job's denoiser (1-channel digits); with ``quick`` a tiny sparse operator."""
    if quick:
        from lightning_infdiff.denoisers.sparse_operator import SparseNeuralOperator

        return SparseNeuralOperator(in_channels=1, num_classes=10, train_resolution=16, channels=8, depth=1,
                                    kernel_size=3, inner_resolution=8, inner_channels=8, channel_mult=(1,),
                                    num_res_blocks=1, attention_resolutions=(), head_channels=8, emb_dim=16)
    return instantiate(main_config()["model"]["denoiser"], in_channels=1)


def main_process():  # noqa: ANN201 - a GaussianProcess
    """The main job's process (heat-kernel mollifier; the process's defaults otherwise)."""
    from lightning_infdiff.processes import GaussianProcess

    cfg = main_config()["model"]["process"]["init_args"]
    return GaussianProcess(operator=instantiate(cfg["operator"]), parametrisation=cfg.get("parametrisation", "v"))


def train_step(model, res: int, batch: int, rate: int, bf16: bool = False, seed: int = 0):  # noqa: ANN001, ANN201
    """A closure doing one training step of the main job's recipe on a fresh random batch:
    ``res``² digits-like images, ``1/rate`` of the pixels, its process, clipping and optimiser."""
    import torch

    cfg = main_config()
    process = main_process()
    opt = instantiate(cfg["model"]["optimizer"], model.parameters())
    clip = float(cfg["trainer"].get("gradient_clip_val") or 0.0)
    gen = torch.Generator().manual_seed(seed)
    n = res * res // rate
    model.train()

    def step() -> None:
        x0 = torch.rand(batch, 1, res, res, generator=gen) * 2 - 1
        idx = torch.stack([torch.randperm(res * res, generator=gen)[:n] for _ in range(batch)])
        cond = torch.randint(0, 10, (batch,), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = process.loss(model, x0, idx, cond=cond).mean()
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step
