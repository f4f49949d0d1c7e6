"""The peer benchmark's orchestration: which runs, in which order, and ``<out>/peers.json`` / ``<out>/peers.md``.

Every run is a fresh interpreter (one torch thread), one at a time. The two sides alternate
(rerank-lab, sentence-transformers, rerank-lab, ... over the seeds), so a neighbour that slows the
machine for a while slows both sides' runs of one repeat, and each speed-up is the median over
repeats of the ratio of two runs made back to back. The load average is recorded before and after
every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datamodules.exit_codes import program
from datamodules.exit_codes import report as report_error
from datamodules.extras import require
from datamodules.files import write_json, write_text
from experiments.bench.peers.report import markdown, summarize

SIDES = ("rerank-lab", "sentence-transformers")
DEFAULT_MODEL = "runs/real_v2/smollm2-135m"
DEFAULT_DATA = "runs/real_v2/data"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one peer-benchmark run.

    Attributes:
        negatives: the N of the 1 + N training groups.
        objectives: rerank-lab objectives (each against its sentence-transformers loss).
        seeds: training seeds; each is one repeat of the alternating pair of runs.
        steps: optimizer steps (= groups) per training run.
        dev_queries: dev queries whose top-``dev_top_k`` candidates score the trained models.
        dev_top_k: candidates reranked per dev query (the real task's 10).
        infer_queries: dev queries of the inference timing.
        infer_repeats: alternating repeats of the inference pair of runs.
        max_length: token cap per pair on both sides (no pair of the task reaches it).
    """

    negatives: tuple[int, ...] = (3, 7)
    objectives: tuple[str, ...] = ("sft", "cl")
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 40
    dev_queries: int = 150
    dev_top_k: int = 10
    infer_queries: int = 40
    infer_repeats: int = 3
    max_length: int = 256


QUICK = Plan(objectives=("sft",), steps=6, dev_queries=5, infer_queries=5, infer_repeats=2)


def run_worker(spec: dict) -> dict:
    """Run one measurement in a fresh process; its result with the load average around it."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    with tempfile.TemporaryDirectory(prefix="peers-") as scratch:
        out = Path(scratch) / "result.json"
        command = [
            sys.executable,
            "-m",
            "experiments.bench.peers",
            "--worker",
            json.dumps(spec),
            "--result",
            str(out),
        ]
        load_before = os.getloadavg()[0]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"peer worker {spec['kind']} {spec['side']} failed:\n{done.stderr[-4000:]}")
        result = json.loads(out.read_text())
    return result | {"load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def worker_main(spec: dict, result_path: Path) -> None:
    if spec["kind"] == "train":
        from experiments.bench.peers.train import train

        result = train(spec)
    else:
        from experiments.bench.peers.infer import infer

        result = infer(spec)
    result_path.write_text(json.dumps(result))


def plan_specs(plan: Plan, base: dict) -> list[dict]:
    """Every run in execution order: per configuration, per seed, the two sides back to back."""
    specs = []
    for objective in plan.objectives:
        for negatives in plan.negatives:
            for seed in plan.seeds:
                for side in SIDES:
                    specs.append(
                        {**base, "kind": "train", "side": side, "objective": objective}
                        | {"negatives": negatives, "seed": seed, "steps": plan.steps}
                    )
    for repeat in range(plan.infer_repeats):
        specs += [{**base, "kind": "infer", "side": side, "repeat": repeat} for side in SIDES]
    return specs


def _device() -> str:
    import platform

    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def check_inputs(model: str | Path, data: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming the first missing input and the commands that write it."""
    for path in (Path(model), Path(data) / "train", Path(data) / "dev" / "stdlib-code"):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: `python -m lightning_modules.fetch smollm2-135m --out {DEFAULT_MODEL}` and "
                "`python -m experiments.real --out runs/real_v2 --probe-v2 --prepare-only` write the model and data"
            )


def run(out: str | Path, plan: Plan, model: str | Path, data: str | Path, quick: bool = False) -> dict:
    """Run every configuration of ``plan`` and write ``<out>/peers.json`` and ``<out>/peers.md``."""
    out, data = Path(out), Path(data)
    base = {
        "model": str(model),
        "train_root": str(data / "train"),
        "dev_root": str(data / "dev" / "stdlib-code"),
        "model_config": str(Path(__file__).parents[2] / "configs" / "model" / "smollm2_135m.yaml"),
        "max_length": plan.max_length,
        "dev_queries": plan.dev_queries,
        "dev_top_k": plan.dev_top_k,
        "infer_queries": plan.infer_queries,
    }
    check_inputs(model, data)
    started, specs = time.perf_counter(), plan_specs(plan, base)
    results = []
    for number, spec in enumerate(specs, 1):
        results.append(run_worker(spec))
        print(f"peers [{number}/{len(specs)}] {_label(spec)}: {_short(results[-1])}", flush=True)
    header = {
        "device": _device(),
        "threads": 1,
        "quick": quick,
        "plan": dataclasses.asdict(plan),
        "settings": base,
    }
    report = summarize(specs, results, header) | {"seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "peers.json", report)
    write_text(out / "peers.md", markdown(report))
    return report


def _label(spec: dict) -> str:
    if spec["kind"] == "infer":
        return f"inference {spec['side']} repeat {spec['repeat']}"
    return f"train {spec['objective']} N={spec['negatives']} seed {spec['seed']} {spec['side']}"


def _short(result: dict) -> str:
    text = f"{result['pairs_per_s']:.2f} pairs/s, peak RSS {result['peak_rss_mib']:.0f} MiB"
    if "dev_ndcg10" in result:
        text += f", dev nDCG@10 {result['dev_ndcg10']:.3f}"
    return text + f", load {result['load_before']:.1f}->{result['load_after']:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench.peers"), description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", default="runs/bench-peers", help="folder for DIR/peers.json and DIR/peers.md"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a reduced run (SFT only, 6 steps, 5 dev queries)"
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="the SmolLM2-135M folder (lightning_modules.fetch)"
    )
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help="the real task's data root (train/, dev/stdlib-code/)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per training run (default: the plan's)")
    parser.add_argument("--objectives", help="comma-separated, e.g. cl (default: the plan's)")
    parser.add_argument("--negatives", help="comma-separated N, e.g. 3 (default: 3,7)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require(parser.prog, "data", "sentence_transformers", "datasets")
    if args.worker:
        worker_main(json.loads(args.worker), args.result)
        return 0
    try:
        check_inputs(args.model, args.data)
    except FileNotFoundError as err:
        return report_error(err)
    plan = QUICK if args.quick else Plan()
    if args.steps:
        plan = dataclasses.replace(plan, steps=args.steps)
    if args.objectives:
        plan = dataclasses.replace(plan, objectives=tuple(args.objectives.split(",")))
    if args.negatives:
        plan = dataclasses.replace(plan, negatives=tuple(int(n) for n in args.negatives.split(",")))
    report = run(args.out, plan, args.model, args.data, quick=args.quick)
    print(markdown(report))
    return 0
