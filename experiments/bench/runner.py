"""The benchmark's orchestration: which configurations run, in which processes, and ``bench.json``.

See :mod:`experiments.bench` for what is measured; ``python -m experiments.bench`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.exit_codes import program
from datamodules.exit_codes import report as report_error
from datamodules.files import write_json, write_text
from experiments.bench.bounds import geometric_mean
from experiments.bench.mix import (
    CPU_WORKLOAD,
    FAMILIES,
    GPU_CHECK_WORKLOAD,
    GPU_WORKLOAD,
    QUICK_WORKLOAD,
    TRAIN_METHODS,
    TRAIN_NEGATIVES,
    Workload,
)
from experiments.bench.models import ARCHS, head_ratio, prepare_arch
from experiments.bench.report import markdown, short, train_summary
from experiments.bench.workers import LORA_R, dispatch

INFERENCE_ARCHS = ("scaled2b", "tiny", "qwen2_vl_2b", "qwen2_5_vl_3b", "qwen2_5_vl_7b")
# vocab152k: the real vocabulary's logits are slow on a CPU, so two families (text and image queries).
CPU_VOCAB_WORKLOAD = dataclasses.replace(CPU_WORKLOAD, families=("T2T", "I2T"))
__all__ = ["TRAIN_METHODS", "TRAIN_NEGATIVES", "Workload", "main", "run"]


# ---- orchestration -----------------------------------------------------------------------------


def _run_worker(spec: dict, mode: str, threads: int) -> dict:
    """Run one configuration ``in-process``, in a ``fork``ed child, or in a fresh ``subprocess``."""
    if mode == "in-process":
        return dispatch(spec, threads)
    if mode == "fork":
        return _run_forked(spec, threads)
    env = {
        **os.environ,
        **({"MALLOC_MMAP_THRESHOLD_": "65536"} if spec.get("measure") == "memory" else {}),
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "experiments.bench",
        "--worker",
        json.dumps(spec),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench worker {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _child(spec: dict, threads: int, connection) -> None:
    try:
        connection.send(dispatch(spec, threads))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        import traceback

        connection.send({"error": traceback.format_exc()})
    finally:
        connection.close()


def _run_forked(spec: dict, threads: int) -> dict:
    """A fresh process per configuration without re-importing the stack (CPU only: no CUDA fork)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(spec, threads, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        process.join()
        result = {"error": f"worker died with exit code {process.exitcode}"}
    process.join()
    if "error" in result:
        raise RuntimeError(
            f"bench worker {spec['arch']} {spec.get('method', spec['kind'])} failed:\n{result['error']}"
        )
    return result


def _measure_training(
    base: dict, methods: list[str], mode: str, threads: int, repeats: int, both: bool
) -> dict[str, dict]:
    """Each method's training figures per N, timed ``repeats`` times in interleaved order (rerank-lab,
    naive, naive-gc, rerank-lab, ...) so that a busy spell of the machine falls on every method.

    A method's entry is its median repeat (by pairs/s) plus ``pairs_per_s_repeats``; rerank-lab's
    also holds ``speedup_repeats``: per baseline, the ratio of the runs of each repeat, whose median
    is the reported speed-up (:func:`experiments.bench.report.train_summary`). ``both`` (CUDA, or
    the in-process smoke test) measures memory in the timing run; otherwise a separate process
    measures it once per method.
    """
    train = {}
    for negatives in TRAIN_NEGATIVES:
        runs: dict[str, list[dict]] = {method: [] for method in methods}
        for _ in range(repeats):
            for method in methods:
                spec = {**base, "kind": "train", "method": method, "negatives": negatives}
                result = _run_worker({**spec, "measure": "both" if both else "time"}, mode, threads)
                runs[method].append(result | {"load_average": round(os.getloadavg()[0], 2)})
        for method in methods:
            result = _median_run(runs[method])
            if not both and not result.get("oom"):
                spec = {**base, "kind": "train", "method": method, "negatives": negatives}
                result["peak_mib"] = _run_worker({**spec, "measure": "memory"}, mode, threads).get("peak_mib")
            train[f"{method}/n{negatives}"] = result
            print(f"bench: {base['arch']} train {method} N={negatives}: {short(result)}", flush=True)
        ours = runs.get("rerank-lab", [])
        if ours and not any(r.get("oom") for r in ours):
            train[f"rerank-lab/n{negatives}"]["speedup_repeats"] = {
                method: [a["pairs_per_s"] / b["pairs_per_s"] for a, b in zip(ours, theirs, strict=True)]
                for method, theirs in runs.items()
                if method != "rerank-lab" and not any(r.get("oom") for r in theirs)
            }
    return train


def _median_run(runs: list[dict]) -> dict:
    """The repeat with the median pairs/s (the lower of the middle two for an even count), with every
    repeat's pairs/s and load average beside it."""
    if any(r.get("oom") for r in runs):
        return runs[0]
    ranked = sorted(runs, key=lambda r: r["pairs_per_s"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["pairs_per_s_repeats"] = [r["pairs_per_s"] for r in runs]
    chosen["load_average_repeats"] = [r["load_average"] for r in runs]
    return chosen


def _load_range(train: dict) -> list[float] | None:
    """[min, max] of the load average after each timed training run."""
    loads = [load for result in train.values() for load in result.get("load_average_repeats", [])]
    return [min(loads), max(loads)] if loads else None


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def selection_problem(models: Sequence[str] | None, families: Sequence[str] | None) -> str | None:
    """What is wrong with ``--models`` / ``--families`` (an unknown name), or None."""
    for flag, given, known in (("models", models, sorted(ARCHS)), ("families", families, list(FAMILIES))):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            return f"--{flag}: unknown {unknown}; choose from {known}"
    return None


def _plan(
    quick: bool, cuda: bool, models: Sequence[str] | None, check: bool, families: Sequence[str] | None
) -> list[tuple[str, Any]]:
    """``(architecture, workload)`` pairs to run, the headline first (see :func:`run`'s arguments)."""
    if quick:
        plan = [("tiny", QUICK_WORKLOAD)]
    elif cuda:
        plan = [(name, GPU_WORKLOAD) for name in ("qwen2_vl_2b", "qwen2_5_vl_3b", "qwen2_5_vl_7b")]
    else:  # the first model is the headline: the one with real proportions
        plan = [("scaled2b", CPU_WORKLOAD), ("vocab152k", CPU_VOCAB_WORKLOAD)]
    problem = selection_problem(models, families)
    if problem:
        raise ValueError(problem)
    if models:
        workloads = dict(plan) | {"scaled2b": CPU_WORKLOAD, "vocab152k": CPU_VOCAB_WORKLOAD}
        plan = [(name, workloads.get(name, GPU_WORKLOAD if cuda else CPU_WORKLOAD)) for name in models]
    if check:
        plan = [(name, GPU_CHECK_WORKLOAD) for name, _ in plan]
    if families:
        plan = [(name, dataclasses.replace(work, families=tuple(families))) for name, work in plan]
    return plan


def _memory_method(cuda: bool, mode: str) -> str:
    """How the report's memory figures were measured."""
    if cuda:
        return "torch.cuda.max_memory_allocated minus allocated before the timed steps"
    return (
        "peak RSS (VmHWM after clear_refs reset) minus RSS before the measured steps, "
        "glibc mmap threshold 64 KiB, "
        + {
            "in-process": "configurations run one after another in one process",
            "fork": "a fresh forked process per configuration, separate from the timing process",
            "subprocess": "a fresh subprocess per configuration, separate from the timing process",
        }[mode]
    )


def _measure_models(
    plan, tiny_dir: str | Path | None, mode: str, threads: int, repeats: int, check: bool, both: bool
) -> dict[str, dict]:
    """Training (and, for ``INFERENCE_ARCHS``, inference) measurements of every planned architecture."""
    models: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as scratch_name:
        scratch = Path(scratch_name)
        for arch, work in plan:
            folder = prepare_arch(
                arch, scratch / "models", Path(tiny_dir) if tiny_dir else None, work.image_side
            )
            data_dir = scratch / "data" / arch
            base = {"arch": arch, "folder": str(folder), "data": str(data_dir), "work": work.__dict__}
            methods = ARCHS[arch].get("methods", TRAIN_METHODS)
            methods = [m for m in methods if m in ("rerank-lab", "naive")] if check else list(methods)
            train = _measure_training(base, methods, mode, threads, repeats, both=both)
            entry: dict[str, Any] = {"train": train, "summary": train_summary(train)}
            with contextlib.suppress(Exception):
                entry["head_flops_per_decoder_flops"] = head_ratio(arch, folder)
            if arch in INFERENCE_ARCHS:
                entry["inference"] = _run_worker({**base, "kind": "infer"}, mode, threads)
                print(f"bench: {arch} inference: {short(entry['inference'])}", flush=True)
            models[arch] = entry
    return models


def _headline(models: dict[str, dict], name: str, started: float) -> dict:
    """The report's top-level figures, read from the headline model ``name``."""
    headline = models[name]
    summary = headline["summary"]
    inference = headline.get("inference", {})
    return {
        "headline_model": name,
        "train_speedup": summary["train_speedup"],
        "train_speedup_n4": summary["train_speedup_n4"],
        "train_speedup_n16": summary["train_speedup_n16"],
        "memory_growth_n4_to_n16": summary["memory_growth_n4_to_n16"],
        "train_speedup_vs_naive_gc": summary["train_speedup_vs_naive_gc"],
        "naive_memory_growth_n4_to_n16": summary["naive_memory_growth_n4_to_n16"],
        "naive_gc_memory_growth_n4_to_n16": summary["naive_gc_memory_growth_n4_to_n16"],
        "train_bound": geometric_mean(
            [headline["train"].get(f"rerank-lab/n{n}", {}).get("bound") for n in TRAIN_NEGATIVES]
        ),
        "inference_speedup": inference.get("speedup"),
        "inference_bound": inference.get("bound"),
        "prefix_cache_speedup": inference.get("prefix_speedup"),
        "train_speedup_spread": summary["train_speedup_spread"],
        "load_average": _load_range(headline["train"]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _targets(report: dict) -> dict[str, bool]:
    """Whether the headline figures meet the benchmark's targets."""
    return {
        "train_speedup>=2": bool(report["train_speedup"] and report["train_speedup"] >= 2),
        "memory_growth<1.3": bool(
            report["memory_growth_n4_to_n16"] and report["memory_growth_n4_to_n16"] < 1.3
        ),
        "inference_speedup>=5": bool(report["inference_speedup"] and report["inference_speedup"] >= 5),
    }


def run(
    out: str | Path = "runs/bench",
    quick: bool = False,
    threads: int = 1,
    tiny_dir: str | Path | None = None,
    mode: str | None = None,
    models: Sequence[str] | None = None,
    check: bool = False,
    families: Sequence[str] | None = None,
    repeats: int | None = None,
) -> dict:
    """Run the benchmark and write ``bench.json`` and ``bench.md`` into ``out``.

    Args:
        out: output folder.
        quick: tiny sizes, tiny model only, in-process (the smoke test).
        threads: torch threads per configuration.
        tiny_dir: an existing tiny checkpoint folder to reuse (else one is built).
        mode: how configurations run: ``in-process`` (default with ``quick``), ``fork`` (a fresh forked
            process each, the CPU default) or ``subprocess`` (a fresh interpreter each, the CUDA
            default: CUDA cannot be forked).
        models: architectures to run (names of ``experiments.bench.models.ARCHS``, the first is the headline);
            default: this device's plan.
        families: time only these task families (a reduced run; the mix then covers them only).
        check: ``make gpu-check``'s short form: ``GPU_CHECK_WORKLOAD`` and the rerank-lab and naive
            methods only.
        repeats: interleaved repeats of every training measurement (default 3 on a CPU, 1 with
            ``quick``, ``check`` or CUDA, whose timings a neighbour does not move).

    Returns:
        The ``bench.json`` contents.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    mode = mode or ("in-process" if quick else "subprocess" if cuda else "fork")
    repeats = repeats or (1 if quick or check or cuda else 3)
    if mode not in ("in-process", "fork", "subprocess"):
        raise ValueError(f"mode must be in-process, fork or subprocess, got {mode!r}")
    plan = _plan(quick, cuda, models, check, families)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": _device_name(),
        "threads": threads,
        "quick": quick,
        "objective": "cl",
        "lora_r": LORA_R,
        "repeats": repeats,
        "memory_method": _memory_method(cuda, mode),
        "models": {},
    }
    report["models"] = _measure_models(plan, tiny_dir, mode, threads, repeats, check, cuda or quick)
    report.update(_headline(report["models"], plan[0][0], started))
    report["targets"] = _targets(report)
    write_json(out / "bench.json", report)
    write_text(out / "bench.md", markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench"),
        description="Training and inference speed and memory against a naive baseline (see experiments/bench/__init__.py).",
    )
    parser.add_argument("--out", default="runs/bench", type=Path, help="output folder (default runs/bench)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, in-process (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--tiny-dir", type=Path, default=None, help="reuse this tiny checkpoint folder")
    parser.add_argument(
        "--models", default=None, help="comma-separated architectures (default: the device's plan)"
    )
    parser.add_argument(
        "--families", default=None, help="comma-separated task families to time (default: all nine)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved repeats of each training measurement (default 3)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        print(json.dumps(dispatch(json.loads(args.worker), args.threads)), flush=True)
        return 0
    models = args.models.split(",") if args.models else None
    families = args.families.split(",") if args.families else None
    problem = selection_problem(models, families)
    if problem:  # checked before anything runs: a typo is one line, not a traceback from _plan
        return report_error(problem)
    if args.tiny_dir is not None and not (args.tiny_dir / "config.json").is_file():
        return report_error(f"{args.tiny_dir}: --tiny-dir is not a model folder (no config.json)")
    report = run(
        args.out,
        quick=args.quick,
        threads=args.threads,
        tiny_dir=args.tiny_dir,
        models=models,
        families=families,
        repeats=args.repeats,
    )
    print((Path(args.out) / "bench.md").read_text(encoding="utf-8"))
    print(f"wrote {Path(args.out) / 'bench.json'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
