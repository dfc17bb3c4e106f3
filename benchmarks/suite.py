"""The benchmark suite: one command for every performance figure of lightning_infdiff.

    python benchmarks/suite.py                 # full suite (about 30 min on 2 idle cores)
    python benchmarks/suite.py --quick         # CI smoke run (tiny settings, well under a minute)
    python benchmarks/suite.py --sections 2,4 --threads 2 --section-threads 1=1
    python benchmarks/suite.py --estimate      # print the time plan and exit
    python benchmarks/suite.py --sections 6 --e2e   # also run `make train` (8+ minutes) for section 6
    python benchmarks/suite.py --sections 3 --compile-mode max-autotune --budget-scale 1.5

Sections (one fresh process each; settings whose memory is measured get their own process):

1. training step time and peak memory vs subsampling rate 1..16x, every denoiser, 64² and 128²;
2. sampling time per image per network evaluation vs resolution 32²..256², every denoiser and
   sampler, fitted growth exponent;
3. fp32 vs bf16 autocast, channels_last, torch.compile on the default (quickstart) denoiser;
4. achieved FLOP/s of a training step vs the measured matmul peak (fp32, bf16);
5. data-loading throughput vs the training step rate;
6. end to end: ``make train`` split into set-up, training, sampling.

Every figure is a median over repeats with its spread (IQR and min-max); comparisons are ratios
measured in the same run (variants interleaved round-robin where they share a process). The
record of the machine (CPU model, cores, torch version, thread count, load average before and
after each section) is in the JSON. Writes ``<out>/suite.json``, ``<out>/suite.md`` and
``<out>/suite_*.png`` (``--out``, default ``benchmarks/results``). Each section has a wall-clock
budget: it does not start a setting predicted to overrun it and reports the setting as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import BENCH, COMPILE_MODES, ROOT, child_env, machine_info  # noqa: E402

SECTIONS = {
    1: ("subsample", "bench_subsample", "training step time and peak memory vs subsampling rate"),
    2: ("sampling", "bench_sampling", "sampling time per image vs resolution, per sampler"),
    3: ("precision", "bench_precision", "fp32 / bf16 / channels_last / torch.compile (default denoiser)"),
    4: ("flops", "bench_flops", "achieved FLOP/s vs measured matmul peak"),
    5: ("loading", "bench_loading", "data loading throughput vs training consumption"),
    6: ("e2e", "bench_e2e", "end to end: make train split into set-up, training, sampling"),
}
#: Wall-clock budgets (s) of the full run on 2 idle cores; settings predicted past them are skipped.
#: Sections 4-6 take 8-17 s (both machines, 2026-12); section 3's compile child about 250 s.
BUDGET_FULL = {1: 600, 2: 680, 3: 360, 4: 30, 5: 30, 6: 30}
BUDGET_QUICK = {1: 60, 2: 20, 3: 20, 4: 20, 5: 20, 6: 10}
#: Fixed cost per section process (interpreter, torch and package imports), seconds.
START_S = 8


def parse_threads(default: int, spec: str) -> dict[int, int]:
    out = {k: default for k in SECTIONS}
    for item in filter(None, spec.split(",")):
        try:
            k, v = item.split("=")
            out[int(k)] = int(v)
        except ValueError as err:
            raise SystemExit(f"--section-threads: expected items like '1=1,3=2', got {item!r}") from err
    return out


def run_section(num: int, args: argparse.Namespace) -> None:
    """Inside the section's fresh process: run it and write its JSON record."""
    import importlib

    import torch

    torch.set_num_threads(args.threads)
    name, module, _ = SECTIONS[num]
    before = machine_info()
    t0 = time.perf_counter()
    kwargs = dict(e2e=args.e2e, out=Path(args.out), e2e_args=args.e2e_args) if num == 6 else {}
    if num == 3:
        kwargs = dict(compile_mode=args.compile_mode)
    result = importlib.import_module(module).run(args.quick, args.threads, args.budget, **kwargs)
    record = {"section": num, "name": name, "title": SECTIONS[num][2], "machine": before,
              "threads": args.threads, "wall_s": time.perf_counter() - t0, "loadavg_before": before["loadavg"],
              "loadavg_after": list(os.getloadavg()), "result": result}
    Path(args.json_out).write_text(json.dumps(record, indent=1, default=str))


def estimate(sections: list[int], budgets: dict[int, float]) -> float:
    return sum(budgets[s] + START_S for s in sections)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke run on tiny settings (not for figures)")
    ap.add_argument("--sections", default=",".join(map(str, SECTIONS)), help="comma-separated subset of 1-6")
    ap.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default 2; 1 with --quick)")
    ap.add_argument("--section-threads", default="", help="per-section threads, e.g. '1=1,2=2'")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    ap.add_argument("--out", default=str(BENCH / "results"), help="output folder for suite.{json,md} and PNGs")
    ap.add_argument("--e2e", action="store_true", help="section 6 runs `make train` itself (8+ minutes)")
    ap.add_argument("--e2e-args", default="", help="extra arguments for the quickstart in --e2e mode")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                    help="torch.compile mode of section 3 (max-autotune compiles for minutes: add --budget-scale 1.5)")
    ap.add_argument("--estimate", action="store_true", help="print the time plan and exit")
    ap.add_argument("--run-section", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_section is not None:
        run_section(args.run_section, args)
        return
    try:
        sections = sorted({int(s) for s in args.sections.split(",") if s.strip()})
    except ValueError as err:
        raise SystemExit(f"--sections: expected numbers 1-6 separated by commas, got {args.sections!r}") from err
    if not sections or any(s not in SECTIONS for s in sections):
        raise SystemExit(f"--sections: choose from {sorted(SECTIONS)}, got {args.sections!r}")
    threads = parse_threads(args.threads or (1 if args.quick else 2), args.section_threads)
    budgets = {k: v * args.budget_scale for k, v in (BUDGET_QUICK if args.quick else BUDGET_FULL).items()}
    est = estimate(sections, budgets) + (600 if args.e2e and 6 in sections else 0)
    print(f"plan: sections {sections}, threads {[threads[s] for s in sections]}; estimated at most "
          f"{est / 60:.1f} min (section budgets {', '.join(f'{s}: {budgets[s]:.0f} s' for s in sections)}"
          f"{' + about 10 min for make train' if args.e2e and 6 in sections else ''})", flush=True)
    if args.estimate:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, t_all = {}, time.perf_counter()
    for s in sections:
        name = SECTIONS[s][0]
        print(f"[{s}] {SECTIONS[s][2]} ({threads[s]} thread(s), budget {budgets[s]:.0f} s)", flush=True)
        tmp = out / f".suite_section_{s}.json"
        cmd = [sys.executable, __file__, "--run-section", str(s), "--threads", str(threads[s]),
               "--budget", str(budgets[s]), "--json-out", str(tmp), "--out", str(out)]
        cmd += ["--quick"] * args.quick + ["--e2e"] * args.e2e + [f"--e2e-args={args.e2e_args}"]
        cmd += ["--compile-mode", args.compile_mode]
        t0, load0 = time.perf_counter(), os.getloadavg()
        timeout = 2 * budgets[s] + 300 + (3600 if args.e2e and s == 6 else 0)
        try:
            proc = subprocess.run(cmd, env=child_env(threads[s]), cwd=ROOT, timeout=timeout, check=False,
                                  stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
            err = proc.stderr[-3000:] if proc.returncode else None
        except subprocess.TimeoutExpired:
            err = f"section process timed out after {timeout:.0f} s"
        if err is None and tmp.exists():
            records[name] = json.loads(tmp.read_text())
            tmp.unlink()
        else:
            records[name] = {"section": s, "name": name, "title": SECTIONS[s][2], "error": err or "no record written",
                             "loadavg_before": list(load0), "loadavg_after": list(os.getloadavg())}
            print(f"  section {s} failed: {(err or '')[-600:]}", flush=True)
        records[name]["parent_wall_s"] = time.perf_counter() - t0
    import torch

    suite = {"schema": "lightning_infdiff.suite/1", "quick": args.quick, "sections_run": sections,
             "threads": {str(s): threads[s] for s in sections}, "budgets_s": {str(s): budgets[s] for s in sections},
             "estimate_s": est, "wall_s": time.perf_counter() - t_all,
             "machine": machine_info() | {"torch_threads": None}, "torch": torch.__version__,
             "command": " ".join(["python", "benchmarks/suite.py", *sys.argv[1:]]), "sections": records}
    (out / "suite.json").write_text(json.dumps(suite, indent=1, default=str))
    from bench_report import write_report

    write_report(suite, out)
    print(f"wrote {out / 'suite.json'}, {out / 'suite.md'} and plots in {suite['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
