"""The benchmark suite: every cost figure of the README in one command, one report.

Runs, in this order, the training cost against subsampling (``bench_subsample.py``), sampling
cost against resolution (``bench_sampling.py``, with the operator families), the precision the
hardware picks (``bench_precision_choice.py``, bare steps) and data loading against training
(``bench_data.py``); ``--e2e`` adds ``make train`` (``bench_e2e.py``, 10+ minutes). Writes one
markdown report, ``<out>/suite.md``. ``--quick`` runs every section at tiny sizes in well under
a minute: the smoke test of the benchmarks (``tests/test_benchmarks.py``), not figures.

    python benchmarks/suite.py --out benchmarks/results/suite_<cpu>
    python benchmarks/suite.py --quick --out /tmp/suite
"""

from __future__ import annotations

import time
from pathlib import Path

import bench_data
import bench_e2e
import bench_precision_choice
import bench_sampling
import bench_subsample
import harness

SECTIONS = {
    "Training cost against coordinate subsampling": lambda q: bench_subsample.run(q),
    "Sampling cost against resolution": lambda q: bench_sampling.run(q, [] if q else ["sparse_operator", "fno", "uno"]),
    "Precision chosen by the hardware": lambda q: bench_precision_choice.run(q).replace("## ", "### "),
    "Data loading against training": lambda q: bench_data.run(q),
}


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--e2e", action="store_true", help="also run make train (10+ minutes)")
    args = ap.parse_args()
    harness.setup(args)
    sections = dict(SECTIONS, **({"End to end: make train": lambda q: bench_e2e.run(q, [])} if args.e2e else {}))
    body, t_all = [], time.perf_counter()
    for i, (title, fn) in enumerate(sections.items(), 1):
        print(f"[{i}] {title}", flush=True)
        t0 = time.perf_counter()
        text = fn(args.quick)
        body.append(f"## {i}. {title}\n\n{text.strip()}\n\n({time.perf_counter() - t0:.0f} s)\n")
    body.append(f"Suite wall time: {time.perf_counter() - t_all:.0f} s.")
    out = None if args.out is None else Path(args.out) / "suite.md"
    harness.report("Benchmark suite" + (" (quick: not figures)" if args.quick else ""), "\n".join(body), out)


if __name__ == "__main__":
    main()
