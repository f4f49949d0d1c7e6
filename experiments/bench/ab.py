"""Is a change in ``make bench``'s training figure real? Time one configuration of two checkouts,
interleaved on the same machine.

    git worktree add /tmp/wt-old <commit>
    python -m experiments.bench.ab --old /tmp/wt-old [--method rerank-lab] [--negatives 4] [--repeats 3]
        [--model scaled2b] [--families T2T,I2T] [--json out.json]

Each repeat runs the old checkout's bench worker and then this checkout's (a fresh interpreter each,
one thread, ``PYTHONPATH`` pointing at the checkout), on one model folder and one data folder built
by this checkout, so the two differ only in the code that trains. Prints both sides' pairs/s per
repeat, the per-repeat ratio new/old and its median, with the load average after each run. Works
for any old commit whose ``python -m experiments.bench --worker SPEC`` accepts the same spec (every
commit since the benchmark measured per-family MRB mixes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from datamodules.exit_codes import program
from datamodules.files import write_json
from experiments.bench.mix import CPU_WORKLOAD
from experiments.bench.models import prepare_arch

HERE = Path(__file__).resolve().parents[2]


def time_checkout(checkout: Path, spec: dict) -> dict:
    """One timing run of ``spec`` with the code of ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    command = [sys.executable, "-m", "experiments.bench", "--worker", json.dumps(spec), "--threads", "1"]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{checkout}: worker failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    return {"pairs_per_s": result["pairs_per_s"], "load_average": round(os.getloadavg()[0], 2)}


def compare(old: Path, spec: dict, repeats: int) -> dict:
    """Old then new, ``repeats`` times; the median of the per-repeat ratios new/old."""
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for repeat in range(repeats):
        for side, checkout in (("old", old), ("new", HERE)):
            runs[side].append(time_checkout(checkout, spec))
            print(f"ab: repeat {repeat} {side}: {runs[side][-1]}", flush=True)
    ratios = [n["pairs_per_s"] / o["pairs_per_s"] for o, n in zip(runs["old"], runs["new"], strict=True)]
    return {"runs": runs, "ratios_new_over_old": ratios, "median_ratio": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench.ab"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--old", type=Path, required=True, help="a checkout (git worktree) of the old commit")
    parser.add_argument("--method", default="rerank-lab")
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="scaled2b")
    parser.add_argument("--families", default=None, help="comma-separated task families (default: all nine)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = CPU_WORKLOAD
    if args.families:
        work = dataclasses.replace(work, families=tuple(args.families.split(",")))
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        folder = prepare_arch(args.model, Path(scratch) / "models", None, work.image_side)
        spec = {"arch": args.model, "folder": str(folder), "data": str(Path(scratch) / "data")}
        spec |= {"work": work.__dict__, "kind": "train", "method": args.method}
        spec |= {"negatives": args.negatives, "measure": "time"}
        result = compare(args.old.resolve(), spec, args.repeats) | {"spec": spec}
    print(json.dumps({k: v for k, v in result.items() if k != "spec"}))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
