"""Evaluator speed: MRB-scale scoring (40 tasks x 1,000 queries x 100 candidates) on the CPU.

    python -m experiments.bench.eval [--json runs/bench/eval.json]

Target (issue: MRB evaluation): the whole benchmark scored in under 5 s. Runs and qrels are
random but MRB-shaped (3-4 judged documents per query, graded 0-3, one relevant document outside
the candidate list); building them is not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from datamodules.exit_codes import program
from datamodules.files import write_json
from datamodules.metrics import evaluate_run

TARGET_SECONDS = 5.0


def make_tasks(n_tasks: int, n_queries: int, n_candidates: int, seed: int = 0) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(seed)
    tasks = []
    for _ in range(n_tasks):
        run, qrels = {}, {}
        for q in range(n_queries):
            ids = [f"doc{i}" for i in rng.choice(100_000, n_candidates, replace=False)]
            run[f"q{q}"] = dict(zip(ids, rng.normal(size=n_candidates).tolist(), strict=True))
            judged = [ids[i] for i in rng.choice(n_candidates, 3, replace=False)] + [f"doc{q}x"]
            qrels[f"q{q}"] = dict(zip(judged, rng.integers(0, 4, size=4).tolist(), strict=True))
        tasks.append((run, qrels))
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench.eval"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    tasks = make_tasks(args.tasks, args.queries, args.candidates)
    timings = {}
    for metric in ("ndcg@10", "recall@5", "mrr@10"):
        start = time.perf_counter()
        for run, qrels in tasks:
            evaluate_run(run, qrels, metric)
        timings[metric] = round(time.perf_counter() - start, 3)
    result = {
        "benchmark": "evaluate",
        "shape": f"{args.tasks} tasks x {args.queries} queries x {args.candidates} candidates",
        "seconds": timings,
        "target_seconds": TARGET_SECONDS,
        "meets_target": max(timings.values()) < TARGET_SECONDS,
        "device": f"CPU ({platform.processor() or platform.machine()})",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
