"""``infdiff report``: one comparison table, plots and a TensorBoard HParams view of a sweep.

Reads the runs listed in ``<out>/sweep.json`` (written by ``infdiff ablate``), and for each run
``<out>/<run>/``:

* ``status.json``: done / failed / interrupted (from ``infdiff ablate``);
* ``logs/config.yaml``: the resolved config (denoiser, subsampling rate, process parts);
* ``logs/events.*``: the final ``val/loss`` and ``train/loss`` (TensorBoard's EventAccumulator);
* ``logs/val_loss_by_logsnr.jsonl``: the last loss-versus-noise-level curve;
* ``logs/throughput.json``: median step time, peak memory, sampling time per image, parameters
  (:class:`~lightning_infdiff.callbacks.Throughput`);
* ``eval/results.jsonl``: lines of ``infdiff evaluate`` (``metric``, ``resolution [H, W]``,
  ``value``, ...); each (metric, resolution) becomes a column ``<metric>@<H>x<W>`` (the last line
  per pair wins). Missing files leave empty cells; nothing is estimated. The real-data floors
  (``<metric>_floor`` lines, ``infdiff evaluate --floor true``) become one extra row,
  ``real data (floor)``, and a dashed line in the plots;
* ``eval/samples_<H>x<W>.png``: sample sheets (``infdiff evaluate --sheet N``).

Writes into ``<out>/report/``: ``table.csv``, ``table.md``, ``metric_vs_resolution.png`` (when
any run has evaluation results: one panel per metric, e.g. the offline Fréchet distance and the
artifact measure), ``samples.png`` (runs by grids, when the runs saved sheets),
``loss_vs_logsnr.png``, ``effective_weighting.png`` (each run's training weight over logSNR,
``p(lambda) w(lambda)`` on the epsilon-MSE scale: noise-level distribution, target and weighting
together), ``cost_vs_subsampling.png``, ``subsampling.md`` (the runs per subsampling
rate, grouped by the other axes, when an axis sets the rate) and ``hparams/`` (TensorBoard HParams:
``tensorboard --logdir <out>/report/hparams``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

__all__ = ["collect", "load_table", "main", "write_report", "write_weighting_plot", "process_from_overlays"]

FLOOR_ROW = "real data (floor)"
COST_COLUMNS = ["step_time_ms", "images_per_s", "train_peak_rss_mib", "train_peak_cuda_mib", "sample_s_per_image"]


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _short(class_path: Any) -> str | None:
    return str(class_path).rsplit(".", 1)[-1] if class_path else None


def _config_params(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved settings that ablations vary, from a run's ``config.yaml``."""
    model, data = config.get("model") or {}, config.get("data") or {}
    proc = (model.get("process") or {}).get("init_args") or {}
    sched = proc.get("schedule") or {}
    sched_args = sched.get("init_args") or {}
    ref = sched_args.get("reference") or (
        f"{sched_args['low_reference']}-{sched_args['high_reference']}" if "low_reference" in sched_args else None)
    return {
        "denoiser_class": _short((model.get("denoiser") or {}).get("class_path")),
        "subsample_rate": data.get("subsample_rate"),
        "strategy": data.get("strategy"),
        "resolution": data.get("resolution"),
        "parametrisation": proc.get("parametrisation"),
        "operator": _short((proc.get("operator") or {}).get("class_path")),
        "schedule": _short(sched.get("class_path")),
        "schedule_reference": ref,
        "max_steps": (config.get("trainer") or {}).get("max_steps"),
    }


def _scalars(log_dir: Path) -> dict[str, float]:
    """Last value of ``val/loss`` and ``train/loss`` and the last step, from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(log_dir.glob("events.out.tfevents.*")):
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, float] = {}
    tags = set(acc.Tags().get("scalars", []))
    for tag, key in (("val/loss", "val_loss"), ("train/loss", "train_loss")):
        if tag in tags:
            events = acc.Scalars(tag)
            out[key] = float(events[-1].value)
            out.setdefault("step", int(events[-1].step))
    return out


def collect(out: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per run of the sweep in ``out`` and the extra data the plots need.

    Returns:
        ``(rows, extra)`` where ``extra`` holds, per run, the loss curve (``curves``) and the
        evaluation results (``evals``: ``{(metric, H, W): value}``), plus the axis names.
    """
    out = Path(out)
    manifest_path = out / "sweep.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run 'infdiff ablate <sweep.yaml> --out {out}' first")
    manifest = json.loads(manifest_path.read_text())
    axes = list(manifest["runs"][0]["params"]) if manifest["runs"] else []
    reserved = {"run", "status", "returncode", "num_params", "steps", "val_loss", "train_loss", *COST_COLUMNS,
                *_config_params({})}
    bad = [a for a in axes if a in reserved]
    if bad:
        raise ValueError(f"{manifest_path}: axis name(s) {bad} clash with report columns; rename the axis")
    rows, curves, evals, floors, sheets, processes = [], {}, {}, {}, {}, {}
    for entry in manifest["runs"]:
        name, run_dir = entry["name"], Path(entry["directory"])
        if not run_dir.is_dir():
            run_dir = out / name  # the sweep folder was moved
        log_dir = run_dir / "logs"
        status = _json(run_dir / "status.json")
        config = yaml.safe_load((log_dir / "config.yaml").read_text()) if (log_dir / "config.yaml").is_file() else {}
        tp = _json(log_dir / "throughput.json")
        if status:
            state = status.get("status")
        elif tp:  # launched from commands.sh, outside infdiff ablate: training reached its end
            state = "done (no status.json)"
        else:
            state = "started, unfinished" if log_dir.is_dir() else "not run"
        row: dict[str, Any] = {"run": name, "status": state,
                               "returncode": status.get("returncode"), **entry["params"]}
        row.update(_config_params(config))
        row["num_params"] = tp.get("num_params")
        scalars = _scalars(log_dir)
        row["steps"] = tp.get("global_step", scalars.pop("step", None))
        row["val_loss"], row["train_loss"] = scalars.get("val_loss"), scalars.get("train_loss")
        median = tp.get("step_time_median_s")
        row.update({"step_time_ms": 1000 * median if median is not None else None,
                    "images_per_s": tp.get("images_per_s"), "train_peak_rss_mib": tp.get("train_peak_rss_mib"),
                    "train_peak_cuda_mib": tp.get("train_peak_cuda_mib"), "sample_s_per_image": tp.get("sample_seconds_per_image")})
        lines = _json_lines(log_dir / "val_loss_by_logsnr.jsonl")
        if lines:
            curves[name] = lines[-1]["curve"]
            if row["val_loss"] is None:
                row["val_loss"] = sum(p["loss"] for p in curves[name]) / len(curves[name])
        model, data = config.get("model") or {}, config.get("data") or {}
        if model.get("process"):
            processes[name] = (model["process"], int(data.get("resolution") or 32))
        run_evals = {}
        for rec in _json_lines(run_dir / "eval" / "results.jsonl"):
            h, w = (int(v) for v in rec["resolution"])
            metric = str(rec["metric"])
            if metric.endswith("_floor"):
                floors.setdefault((metric.removesuffix("_floor"), h, w), float(rec["value"]))
            else:
                run_evals[(metric, h, w)] = float(rec["value"])
        evals[name] = run_evals
        sheets[name] = {tuple(int(v) for v in p.stem.removeprefix("samples_").split("x")): p
                        for p in sorted((run_dir / "eval").glob("samples_*x*.png"))}
        rows.append(row)
    keys = sorted({k for e in evals.values() for k in e}, key=lambda k: (k[0], k[1] * k[2], k[1]))
    for row in rows:
        for metric, h, w in keys:
            row[f"{metric}@{h}x{w}"] = evals[row["run"]].get((metric, h, w))
    if floors:
        rows.append({"run": FLOOR_ROW, **{f"{m}@{h}x{w}": floors.get((m, h, w)) for m, h, w in keys}})
    return rows, {"curves": curves, "evals": evals, "axes": axes, "metric_keys": keys, "floors": floors,
                  "sheets": sheets, "processes": processes}


def _build_process(config: dict[str, Any]) -> Any:
    """A :class:`GaussianProcess` from its config block (``class_path`` / ``init_args``)."""
    from jsonargparse import ArgumentParser

    from .processes import GaussianProcess

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--process", type=GaussianProcess)
    cfg = parser.parse_object({"process": config})
    make = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return make(cfg).process


def process_from_overlays(paths: list[str | Path]) -> Any:
    """The process that config overlays (``model.process`` blocks, later ones override) describe."""
    merged: dict[str, Any] = {"class_path": "lightning_infdiff.processes.GaussianProcess", "init_args": {}}
    for path in paths:
        block = ((yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}).get("process")
        if not block:
            raise ValueError(f"{path}: no model.process block")
        for key, value in (block.get("init_args") or {}).items():
            merged["init_args"][key] = value
    return _build_process(merged)


def write_weighting_plot(processes: dict[str, tuple[Any, int]], path: Path) -> Path | str:
    """``effective_weighting.png``: ``p(lambda) w_eps(lambda)`` per process on its training grid,
    each normalised to unit area so that shapes compare (Kingma & Gao 2023, fig. 2)."""
    if not processes:
        return "no run with a process in its config.yaml"
    import torch
    from matplotlib.figure import Figure

    from .noise_levels import effective_weighting

    lam = torch.linspace(-15.0, 15.0, 601, dtype=torch.float64)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    seen: dict[str, str] = {}
    for name, (process, res) in processes.items():
        process = _build_process(process) if isinstance(process, dict) else process
        w = effective_weighting(process, lam, (res, res))
        key = repr(process)
        if key in seen:  # the same objective as an earlier run: one curve
            continue
        seen[key] = name
        area = float(torch.trapezoid(w, lam))
        ax.plot(lam.numpy(), (w / area if area > 0 else w).numpy(), label=name)
    ax.set(xlabel="logSNR", ylabel="p(logSNR) w(logSNR), unit area", yscale="log",
           title="effective training weight (epsilon-MSE scale)")
    ax.set_ylim(1e-5, None)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    first = [c for c in cols if c not in COST_COLUMNS and "@" not in c]
    return first + [c for c in COST_COLUMNS if c in cols] + [c for c in cols if "@" in c]


def write_tables(rows: list[dict[str, Any]], dest: Path) -> tuple[Path, Path]:
    """``table.csv`` (raw numbers) and ``table.md`` (4 significant digits)."""
    cols = _columns(rows)
    csv_path, md_path = dest / "table.csv", dest / "table.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows([{c: ("" if r.get(c) is None else r.get(c)) for c in cols} for r in rows])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    if not any("@" in c for c in cols):
        md.append("\nNo evaluation results found (`<run>/eval/results.jsonl`, written by `infdiff evaluate`).")
    md_path.write_text("\n".join(md) + "\n")
    return csv_path, md_path


def load_table(path: str | Path) -> list[dict[str, Any]]:
    """Read ``table.csv`` back: numbers as floats, empty cells as ``None``."""
    def conv(v: str) -> Any:
        if v == "":
            return None
        try:
            return float(v)
        except ValueError:
            return v
    with Path(path).open(newline="") as f:
        return [{k: conv(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_plots(rows: list[dict[str, Any]], extra: dict[str, Any], dest: Path) -> dict[str, Path | str]:
    """The PNG plots; a plot without data is skipped with the reason as the dict value."""
    try:  # Figure objects, not pyplot: no global backend switch (safe inside notebooks)
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("infdiff report draws its plots with matplotlib: pip install matplotlib") from err

    made: dict[str, Path | str] = {}
    keys = extra["metric_keys"]
    metrics = sorted({k[0] for k in keys})
    path = dest / "metric_vs_resolution.png"
    if metrics:
        fig = Figure(figsize=(5 * len(metrics), 4))
        axs = fig.subplots(1, len(metrics), squeeze=False)
        for ax, metric in zip(axs[0], metrics, strict=True):
            for name, ev in extra["evals"].items():
                pts = sorted((h * w, f"{h}x{w}", v) for (m, h, w), v in ev.items() if m == metric)
                if pts:
                    ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=name)
            floor = sorted((h * w, v) for (m, h, w), v in extra.get("floors", {}).items() if m == metric)
            if floor:
                ax.plot([p[0] for p in floor], [p[1] for p in floor], "k--", label=FLOOR_ROW)
            ticks = sorted({(h * w, f"{h}x{w}") for (m, h, w) in keys if m == metric})
            ax.set_xscale("log", base=2)
            ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks])
            ax.set(title=metric, xlabel="sampling grid (by pixel count)", ylabel=metric,
                   yscale="log" if all(v > 0 for ev in extra["evals"].values() for (m, _, _), v in ev.items()
                                       if m == metric) else "linear")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        made["metric_vs_resolution"] = path
    else:
        made["metric_vs_resolution"] = "no evaluation results"
    made["samples"] = write_sheets(extra.get("sheets", {}), dest / "samples.png")
    path = dest / "loss_vs_logsnr.png"
    if extra["curves"]:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for name, curve in extra["curves"].items():
            ax.plot([p["logsnr"] for p in curve], [p["loss"] for p in curve], "o-", label=name, ms=3)
        ax.set(xlabel="logSNR", ylabel="validation loss", yscale="log", title="loss vs noise level (last validation)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        made["loss_vs_logsnr"] = path
    else:
        made["loss_vs_logsnr"] = "no val_loss_by_logsnr.jsonl"
    made["effective_weighting"] = write_weighting_plot(extra.get("processes", {}), dest / "effective_weighting.png")
    path = dest / "cost_vs_subsampling.png"
    pts = [r for r in rows if r.get("subsample_rate") is not None and r.get("step_time_ms") is not None]
    if pts:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        other = [a for a in extra["axes"] if not _sets_rate(pts, a)]
        for r in pts:
            groups[", ".join(f"{a}={r.get(a)}" for a in other) or "all runs"].append(r)
        fig = Figure(figsize=(10, 4))
        axs = fig.subplots(1, 2)
        for label, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["subsample_rate"])
            mem = [r["train_peak_cuda_mib"] if r.get("train_peak_cuda_mib") is not None else r.get("train_peak_rss_mib")
                   for r in rs]
            axs[0].plot([r["subsample_rate"] for r in rs], [r["step_time_ms"] for r in rs], "o-", label=label)
            axs[1].plot([r["subsample_rate"] for r in rs], mem, "o-", label=label)
        axs[0].set(xlabel="subsampling rate", ylabel="median training step (ms)", title="speed")
        axs[1].set(xlabel="subsampling rate", ylabel="training peak memory (MiB)", title="memory (CUDA allocated, else process RSS)")
        rates = sorted({r["subsample_rate"] for r in pts})
        for ax in axs:
            ax.set_xscale("log", base=2)
            ax.set_xticks(rates, [f"{r:g}x" for r in rates])
            ax.minorticks_off()
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        made["cost_vs_subsampling"] = path
    else:
        made["cost_vs_subsampling"] = "no run with throughput.json and a subsample_rate"
    return made


def write_subsampling_table(rows: list[dict[str, Any]], axes: list[str], dest: Path) -> Path | str:
    """``subsampling.md``: the runs side by side per subsampling rate, grouped by the other axes
    (e.g. per denoiser family: steps, step time, validation loss and every evaluation column), so
    the cost of subsampling for each group reads along its rows."""
    runs = [r for r in rows if r.get("run") != FLOOR_ROW and r.get("subsample_rate") is not None]
    rate_axes = [a for a in axes if _sets_rate(runs, a)]
    if not rate_axes or len({r["subsample_rate"] for r in runs}) < 2:
        return "no axis sets the subsampling rate"
    other = [a for a in axes if a not in rate_axes]
    evals = [c for c in _columns(rows) if "@" in c]
    cols = [*other, "subsample_rate", "steps", "step_time_ms", "val_loss", *evals]
    runs = sorted(runs, key=lambda r: (*(str(r.get(a)) for a in other), r["subsample_rate"]))
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in runs]
    floor = next((r for r in rows if r.get("run") == FLOOR_ROW), None)
    if floor is not None:
        md.append("| " + " | ".join(f"*{FLOOR_ROW}*" if i == 0 else _fmt(floor.get(c)) if "@" in c else ""
                                    for i, c in enumerate(cols)) + " |")
    path = dest / "subsampling.md"
    path.write_text("\n".join(md) + "\n")
    return path


def write_sheets(sheets: dict[str, dict[tuple[int, int], Path]], path: Path) -> Path | str:
    """``samples.png``: one row per run, one column per grid, from the runs' ``eval/samples_*.png``."""
    from matplotlib.figure import Figure
    from PIL import Image

    sheets = {name: s for name, s in sheets.items() if s}
    if not sheets:
        return "no eval/samples_*.png (infdiff evaluate --sheet N)"
    grids = sorted({g for s in sheets.values() for g in s}, key=lambda g: (g[0] * g[1], g[0]))
    fig = Figure(figsize=(3.2 * len(grids), 0.6 + 1.6 * len(sheets)))
    axs = fig.subplots(len(sheets), len(grids), squeeze=False)
    for i, (name, sheet) in enumerate(sheets.items()):
        for j, g in enumerate(grids):
            ax = axs[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if g in sheet:
                with Image.open(sheet[g]) as im:
                    ax.imshow(im.convert("L"), cmap="gray", vmin=0, vmax=255)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(f"{g[0]}x{g[1]}", fontsize=9)
    fig.suptitle("the same seeds for every run", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _sets_rate(rows: list[dict[str, Any]], axis: str) -> bool:
    """Whether ``axis`` decides the subsampling rate (each of its labels has one rate, and they differ)."""
    by_label: dict[Any, set[Any]] = defaultdict(set)
    for r in rows:
        by_label[r.get(axis)].add(r.get("subsample_rate"))
    return all(len(v) == 1 for v in by_label.values()) and len({next(iter(v)) for v in by_label.values()}) > 1


def write_hparams(rows: list[dict[str, Any]], dest: Path) -> Path:
    """TensorBoard HParams view: one ``add_hparams`` record per run in ``dest/hparams/<run>``."""
    from torch.utils.tensorboard import SummaryWriter

    root = dest / "hparams"
    if root.exists():
        shutil.rmtree(root)
    metric_cols = {"val_loss", "train_loss", *COST_COLUMNS}
    with SummaryWriter(log_dir=str(root)) as writer:
        for row in rows:
            if row["run"] == FLOOR_ROW:
                continue
            hp = {k: v for k, v in row.items()
                  if k not in metric_cols and "@" not in k and isinstance(v, (str, int, float, bool))}
            metrics = {f"hparam/{k}": float(v) for k, v in row.items()
                       if (k in metric_cols or "@" in k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
            writer.add_hparams(hp, metrics, run_name=row["run"])
    return root


def merge_earlier(rows: list[dict[str, Any]], tables: list[str | Path]) -> list[dict[str, Any]]:
    """Fill the rows of runs that are not in the sweep folder (``not run``) from earlier reports'
    ``table.csv`` of the same sweep, marked ``earlier report: <file>``. Their ``<metric>@<H>x<W>``
    columns go into the metric-against-resolution plot (:func:`evals_of_earlier`); their sheets and
    loss curves cannot be redrawn."""
    earlier: dict[str, dict[str, Any]] = {}
    for table in tables:
        for row in load_table(table):
            if row.get("run") != FLOOR_ROW:
                earlier.setdefault(str(row["run"]), {**row, "status": f"earlier report: {table}"})
    merged = []
    for row in rows:
        old = earlier.get(str(row.get("run")))
        merged.append(old if old is not None and row.get("status") == "not run" else row)
    return merged


def evals_of_earlier(rows: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """Put the metric columns of rows filled by :func:`merge_earlier` into ``extra["evals"]`` (in
    the rows' order) and ``extra["metric_keys"]``, so the plot shows every run of the table."""
    evals: dict[str, dict[tuple[str, int, int], float]] = {}
    for row in rows:
        name = str(row.get("run"))
        if name == FLOOR_ROW:
            continue
        if not str(row.get("status", "")).startswith("earlier report"):
            evals[name] = extra["evals"].get(name, {})
            continue
        evals[name] = {}
        for key, value in row.items():
            metric, _, grid = str(key).partition("@")
            if grid and isinstance(value, (int, float)) and value == value:
                h, w = (int(v) for v in grid.split("x"))
                evals[name][(metric, h, w)] = float(value)
    extra["evals"] = evals
    extra["metric_keys"] = sorted({k for e in evals.values() for k in e} | set(extra["metric_keys"]),
                                  key=lambda k: (k[0], k[1] * k[2], k[1]))


def write_report(out: str | Path, dest: str | Path | None = None, also: list[str | Path] | None = None) -> dict[str, Any]:
    """Collect the runs of ``out`` (plus ``also``: earlier reports' ``table.csv``, see
    :func:`merge_earlier`) and write the tables, plots and HParams view into ``dest``."""
    rows, extra = collect(out)
    if also:
        rows = merge_earlier(rows, also)
        evals_of_earlier(rows, extra)
    dest = Path(dest) if dest is not None else Path(out) / "report"
    dest.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_tables(rows, dest)
    plots = write_plots(rows, extra, dest)
    plots["subsampling_table"] = write_subsampling_table(rows, extra["axes"], dest)
    return {"rows": rows, "csv": csv_path, "markdown": md_path, "plots": plots,
            "hparams": write_hparams(rows, dest)}


def main(argv: list[str] | None = None) -> int:
    """``infdiff report OUT [--dest DIR] [--also TABLE ...]`` or ``infdiff report --weighting LABEL=A.yaml[,B.yaml] ...``."""
    parser = argparse.ArgumentParser(prog="infdiff report", description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", help="sweep output folder (with sweep.json)")
    parser.add_argument("--dest", default=None, help="report folder (default: <out>/report)")
    parser.add_argument("--also", action="append", default=None, metavar="TABLE",
                        help="an earlier report's table.csv of this sweep: fills the rows of runs not in OUT (repeatable)")
    parser.add_argument("--weighting", action="append", default=None, metavar="LABEL=A.yaml[,B.yaml]",
                        help="plot the effective weighting of the process these overlays describe (repeatable; "
                        "no sweep needed), e.g. edm=configs/process/edm.yaml")
    parser.add_argument("--resolution", type=int, default=32, help="training grid side for --weighting")
    args = parser.parse_args(argv)
    if args.weighting:
        try:
            procs = {}
            for spec in args.weighting:
                label, _, files = spec.partition("=")
                if not files:
                    raise ValueError(f"--weighting {spec!r}: expected LABEL=A.yaml[,B.yaml]")
                procs[label] = (process_from_overlays(files.split(",")), args.resolution)
            dest = Path(args.dest or ".")
            dest.mkdir(parents=True, exist_ok=True)
            print(f"wrote {write_weighting_plot(procs, dest / 'effective_weighting.png')}")
        except (OSError, ValueError, yaml.YAMLError) as err:
            print(f"infdiff report: error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.out is None:
        parser.error("give a sweep folder, or --weighting")
    try:
        res = write_report(args.out, args.dest, args.also)
    except (FileNotFoundError, ValueError) as err:
        print(f"infdiff report: error: {err}", file=sys.stderr)
        return 2
    print(res["markdown"].read_text())
    print(f"wrote {res['csv']}, {res['markdown']} and the TensorBoard HParams view {res['hparams']}")
    for name, p in res["plots"].items():
        print(f"  {name}: {p if isinstance(p, Path) else 'skipped (' + p + ')'}")
    failed = [r["run"] for r in rows_failed(res["rows"])]
    if failed:
        print(f"failed runs: {', '.join(failed)}")
    return 0


def rows_failed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose run failed."""
    return [r for r in rows if r.get("status") == "failed"]
