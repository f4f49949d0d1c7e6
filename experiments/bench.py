"""Training and inference benchmark: rerank-lab's model path against the way peers write it.

Command line (what ``make bench`` runs)::

    python -m experiments.bench [--out runs/bench] [--quick] [--threads 1]

Writes ``bench.json`` and ``bench.md`` into ``--out``. In one run, on the same models and data:

(a) Training. One optimizer step = ``RerankerModule.training_step`` + backward + AdamW step
    (CL objective, LoRA r=16 on the language model, ``pairs_per_forward=4``: the group's shared
    prefix run once, images through the frozen vision tower once, length-sorted micro-batches
    under checkpointing, label-token rows only) against NAIVE peer-style code:
    ``model(**inputs).logits`` (full-vocabulary logits at every position), right padding + gather
    at the last real token, the whole group in one forward, same LoRA, objective and AdamW; and
    ``naive-gc``, the same with Hugging Face activation checkpointing (what peer trainers turn on
    by default for LLM rerankers). ``naive`` is given its fastest form (no checkpointing,
    ``use_cache=False``). For N = 4 and N = 16 negatives: pairs/s and peak step memory.
(b) Inference, end to end from raw query/documents: ``Reranker.score`` (all pairs encoded,
    length-sorted, batched, the shared-prefix cache where it pays; its cross-call image cache is
    cleared before each call, so a figure is one query's cost) and the same without the prefix
    cache, against a loop that encodes and scores one pair per forward with the same label-token
    scorer (so only batching and sharing differ).

Data (:mod:`experiments.bench_mix`): one query group per MRB task family, at MRB's shapes; every
figure is the throughput of MRB's 40-dataset mix (families weighted by their dataset counts).

Models (:mod:`experiments.bench_models`). CPU (1 thread by default): ``scaled2b``, Qwen2-VL-2B's
proportions scaled down, is the headline; ``vocab152k`` (Qwen's real vocabulary on a small
decoder) shows what full-vocabulary logits cost in memory, and overstates the speed-up. CUDA
(``torch.cuda.is_available()``): real-size Qwen2-VL-2B, Qwen2.5-VL-3B and Qwen2.5-VL-7B
architectures (random weights, bf16, SDPA), real MRB lengths, plus model-FLOPs utilisation:
MFU = 6·P·tokens/s (training) or 2·P·tokens/s (inference) ÷ the device's peak dense bf16 FLOP/s
(H100 SXM 989e12), P = parameters of the decoder and vision tower (embedding table and LM head
left out, the same P for every method, so MFU compares useful work).

Memory. CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps minus the memory allocated
before them, one fresh subprocess per configuration. CPU (tracemalloc does not see torch's
allocations): a second fresh forked process per configuration, with glibc's mmap threshold fixed
at 64 KiB (``mallopt(M_MMAP_THRESHOLD)``, i.e. ``MALLOC_MMAP_THRESHOLD_``: every tensor buffer is its
own mapping, returned to the OS when freed, so RSS follows live tensors); after a warm-up step the
process's peak-RSS mark is reset (``/proc/self/clear_refs`` <- 5) and the peak (``VmHWM``) over one
step per family minus the RSS before them is reported. Timings come from the first process, with
the normal allocator (a mapping per buffer costs page faults, and not equally for every method).
Both are the step's transient memory (inputs, activations, logits, gradients) above the resident
model and optimizer state. ``--quick`` (the smoke test) runs its configurations in-process.

Timing: after one warm-up step (call), the fastest of ``Workload.repeats`` timings of each family's
step (inference call), so that one busy moment of the machine does not decide a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.bench_mix import (
    CPU_WORKLOAD,
    FAMILIES,
    GPU_WORKLOAD,
    INSTRUCTION,
    QUICK_WORKLOAD,
    TRAIN_METHODS,
    TRAIN_NEGATIVES,
    Workload,
    make_groups,
    weighted_rate,
)
from experiments.bench_models import (
    ARCHS,
    flop_params,
    head_ratio,
    peak_flops,
    prepare_arch,
    use_random_backbones,
)
from experiments.bench_report import markdown, short, train_summary

INFERENCE_ARCHS = ("scaled2b", "tiny", "qwen2_vl_2b", "qwen2_5_vl_3b", "qwen2_5_vl_7b")
LORA_R = 16
# vocab152k: the real vocabulary's logits are slow on a CPU, so two families (text and image queries).
CPU_VOCAB_WORKLOAD = dataclasses.replace(CPU_WORKLOAD, families=("T2T", "I2T"))


# ---- naive baseline ----------------------------------------------------------------------------


def collate_right(encoder, pairs) -> dict:
    """The naive collate: RIGHT padding (peer code), last real token found from the mask."""
    import torch

    length = max(len(p.input_ids) for p in pairs)
    input_ids = torch.full((len(pairs), length), encoder.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, pair in enumerate(pairs):
        input_ids[row, : len(pair.input_ids)] = torch.tensor(pair.input_ids)
        attention_mask[row, : len(pair.input_ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    pixel_values = [p for pair in pairs for p in pair.pixel_values]
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
        batch["image_grid_thw"] = torch.stack([g for pair in pairs for g in pair.image_grid_thw])
        batch["mm_token_type_ids"] = (input_ids == encoder.image_token_id).long()
    return batch


# ---- measurement -------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class PeakMemory:
    """Peak memory above the level at :meth:`start`, in MiB (CUDA allocator, or CPU peak RSS)."""

    def __init__(self, device) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
            self.base = _status_kb("VmRSS") * 1024

    def peak_mib(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_status_kb("VmHWM") * 1024 - self.base) / 2**20


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(step, batches: Sequence[dict], device, repeats: int = 2) -> tuple[list[float], float]:
    """Warm up on the first batch, then time each batch ``repeats`` times and keep the fastest
    (a step is a few seconds on a CPU, so one timing is at the mercy of other processes);
    (times, peak MiB over all timed steps)."""
    step(batches[0])
    memory = PeakMemory(device)
    memory.start()
    times = []
    for batch in batches:
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            step(batch)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        times.append(best)
    return times, memory.peak_mib()


def _family_batches(encoder, groups, negatives: int) -> list[dict]:
    """One training batch per family group: the query against its first 1 + N documents."""
    import torch

    return [
        {
            "family": family,
            "pairs": encoder.encode_group(INSTRUCTION, query, documents[: 1 + negatives], where=family),
            "positives": torch.tensor([[True] + [False] * negatives]),
        }
        for family, query, documents in groups
    ]


def _mix_summary(pairs: dict[str, int], tokens: dict[str, float], seconds: dict[str, float]) -> dict:
    """MRB-mix throughput of per-family timings, plus the per-family table."""
    weight = {family: FAMILIES[family][0] for family in seconds}
    total = sum(weight.values())
    return {
        "pairs_per_s": weighted_rate(pairs, seconds),
        "tokens_per_s": weighted_rate({f: pairs[f] * tokens[f] for f in seconds}, seconds),
        "tokens_per_pair": round(sum(weight[f] * tokens[f] for f in seconds) / total, 1),
        "families": {
            f: {"pairs": pairs[f], "tokens_per_pair": round(tokens[f], 1), "seconds": round(seconds[f], 4)}
            for f in seconds
        },
    }


def train_worker(
    arch: str,
    folder: Path,
    data_dir: Path,
    method: str,
    negatives: int,
    work: Workload,
    measure: str = "both",
) -> dict:
    """Measure one training configuration in this process: one step per task family.

    ``measure``: ``time`` (pairs/s), ``memory`` (peak step memory: one step per family, under the
    mmap threshold set by the caller) or ``both`` (CUDA, where measuring memory costs no speed).
    """
    import torch

    import objectives
    from lightning_modules.backbone import label_token_id
    from lightning_modules.encoding import PairEncoder
    from lightning_modules.reranker import DEFAULT_LORA_TARGET, RerankerModule

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    encoder = PairEncoder.from_pretrained(
        folder, max_length=work.max_length, min_pixels=3136, max_pixels=2 * work.image_side**2
    )
    batches = _family_batches(encoder, make_groups(data_dir, work), negatives)
    torch.manual_seed(0)
    if method == "rerank-lab":
        module = RerankerModule(
            str(folder), objective="cl", dtype=dtype, lora_r=LORA_R, pairs_per_forward=work.pairs_per_forward
        ).to(device)
        module.train()
        module.log = lambda *args, **kwargs: None  # outside a Trainer
        model = module.scorer.model
        params = [p for p in module.parameters() if p.requires_grad]

        def loss_of(batch: dict) -> torch.Tensor:
            inputs = {k: v.to(device) for k, v in encoder.collate(batch["pairs"]).items()}
            step_batch = {
                "inputs": inputs,
                "positives": batch["positives"].to(device),
                "filled_hard": 0,
                "truncated": sum(p.truncated for p in batch["pairs"]),
                "visual_tokens": sum(p.input_ids.count(encoder.image_token_id) for p in batch["pairs"]),
            }
            return module.training_step(step_batch, 0)

    elif method in ("naive", "naive-gc"):
        from peft import LoraConfig, inject_adapter_in_model

        import lightning_modules.reranker as reranker_module

        model = reranker_module.load_backbone(str(folder), dtype).to(device)
        if method == "naive-gc":  # what peer trainers enable by default for LLM rerankers
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.requires_grad_(False)
        inject_adapter_in_model(
            LoraConfig(r=LORA_R, lora_alpha=32, lora_dropout=0.05, target_modules=DEFAULT_LORA_TARGET), model
        )
        model.train()
        objective = objectives.build("cl")
        yes, no = (label_token_id(encoder.tokenizer, word) for word in ("yes", "no"))
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_of(batch: dict) -> torch.Tensor:
            inputs = {k: v.to(device) for k, v in collate_right(encoder, batch["pairs"]).items()}
            logits = model(**inputs, use_cache=False).logits  # [pairs, length, vocab]
            last = inputs["attention_mask"].sum(dim=1) - 1
            label_logits = logits[torch.arange(logits.shape[0], device=device), last][:, [yes, no]].float()
            positives = batch["positives"].to(device)
            return objective(label_logits.view(*positives.shape, 2), positives).loss

    else:
        raise ValueError(f"unknown method {method!r}")
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(batch: dict) -> None:
        loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        times, peak = _timed_steps(step, batches, device, repeats=1 if measure == "memory" else work.repeats)
    except torch.OutOfMemoryError:
        return {"arch": arch, "method": method, "negatives": negatives, "oom": True}
    families = [b["family"] for b in batches]
    mix = _mix_summary(
        {f: 1 + negatives for f in families},
        {b["family"]: statistics.mean(len(p.input_ids) for p in b["pairs"]) for b in batches},
        dict(zip(families, times, strict=True)),
    )
    result = {
        "arch": arch,
        "method": method,
        "negatives": negatives,
        "pairs_per_step": 1 + negatives,
        "oom": False,
    }
    if measure in ("time", "both"):
        result.update(mix)
    if measure in ("memory", "both"):
        result["peak_mib"] = peak
        result.setdefault("tokens_per_pair", mix["tokens_per_pair"])
    if device.type == "cuda" and measure != "memory":
        result["mfu"] = 6 * flop_params(model) * mix["tokens_per_s"] / peak_flops()
    return result


def infer_worker(arch: str, folder: Path, data_dir: Path, work: Workload) -> dict:
    """Measure inference per family: Reranker.score (defaults; and without the prefix cache) vs a
    loop that encodes and scores one pair per forward with the same label-token scorer."""
    import torch

    from lightning_modules.inference import Reranker

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    groups = make_groups(data_dir, work, seed=1)
    reranker = Reranker.from_pretrained(
        folder,
        device=device,
        dtype=dtype,
        batch_size=work.infer_batch,
        max_length=work.max_length,
        min_pixels=3136,
        max_pixels=2 * work.image_side**2,
    )

    cache_bytes = reranker.image_cache.max_bytes

    def batched(query, docs, prefix) -> list[float]:
        reranker.prefix_cache = prefix
        reranker.image_cache.clear()  # one query's cost: nothing carried over from earlier calls
        return reranker.score(query, docs, instruction=INSTRUCTION)

    def loop(query, docs) -> list[float]:
        encode = reranker.encoder.encode
        reranker.image_cache.max_bytes = 0  # every pair encodes its own images
        try:
            return [reranker._score_batch([encode(INSTRUCTION, query, doc)])[0] for doc in docs]
        finally:
            reranker.image_cache.max_bytes = cache_bytes

    def timed(fn, *args) -> tuple[float, list[float]]:
        best = float("inf")
        for _ in range(work.repeats):  # the fastest of a few calls, as for training steps
            _sync(device)
            start = time.perf_counter()
            scores = fn(*args)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        return best, scores

    _, query, docs = groups[0]
    loop(query, docs[:2]), batched(query, docs[:4], "auto")  # warm-up
    seconds = {"loop": {}, "batched": {}, "default": {}}
    pairs, tokens, diffs = {}, {}, {}
    for family, query, docs in groups:
        docs = docs[: work.infer_candidates]
        seconds["loop"][family], s_loop = timed(loop, query, docs)
        seconds["batched"][family], s_batched = timed(batched, query, docs, False)
        seconds["default"][family], s_default = timed(batched, query, docs, "auto")
        pairs[family] = len(docs)
        tokens[family] = statistics.mean(
            len(reranker.encoder.encode(INSTRUCTION, query, d).input_ids) for d in docs
        )
        diffs[family] = float((torch.tensor(s_default) - torch.tensor(s_loop)).abs().max())
    mixes = {name: _mix_summary(pairs, tokens, by_family) for name, by_family in seconds.items()}
    result = {
        "arch": arch,
        "batch_size": work.infer_batch,
        "candidates": work.infer_candidates,
        "tokens_per_pair": mixes["loop"]["tokens_per_pair"],
        "loop_pairs_per_s": mixes["loop"]["pairs_per_s"],
        "batched_pairs_per_s": mixes["batched"]["pairs_per_s"],
        "default_pairs_per_s": mixes["default"]["pairs_per_s"],
        "speedup": mixes["default"]["pairs_per_s"] / mixes["loop"]["pairs_per_s"],
        "prefix_speedup": mixes["default"]["pairs_per_s"] / mixes["batched"]["pairs_per_s"],
        "max_abs_diff_default_vs_loop": max(diffs.values()),
        "families": {
            family: {
                "pairs": pairs[family],
                "tokens_per_pair": round(tokens[family], 1),
                **{f"{name}_pairs_per_s": pairs[family] / seconds[name][family] for name in seconds},
            }
            for family in pairs
        },
    }
    if device.type == "cuda":
        result["default_mfu"] = (
            2 * flop_params(reranker.scorer.model) * mixes["default"]["tokens_per_s"] / peak_flops()
        )
    return result


# ---- orchestration -----------------------------------------------------------------------------


def _run_worker(spec: dict, mode: str, threads: int) -> dict:
    """Run one configuration ``in-process``, in a ``fork``ed child, or in a fresh ``subprocess``."""
    if mode == "in-process":
        return _dispatch(spec, threads)
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
        connection.send(_dispatch(spec, threads))
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
        result = {"error": f"worker died with exit code {process.join() or process.exitcode}"}
    process.join()
    if "error" in result:
        raise RuntimeError(
            f"bench worker {spec['arch']} {spec.get('method', spec['kind'])} failed:\n{result['error']}"
        )
    return result


def fix_mmap_threshold(threshold: int = 65536) -> None:
    """glibc: serve every allocation >= ``threshold`` by its own mapping, returned to the OS on free.

    The same as ``MALLOC_MMAP_THRESHOLD_`` in the environment, for in-process runs; it also stops
    glibc from raising the threshold dynamically, so freed tensors do not linger in the heap.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD


def _dispatch(spec: dict, threads: int) -> dict:
    import torch

    if spec.get("measure") == "memory":
        fix_mmap_threshold()  # RSS then follows live tensors (costs speed: timings run without it)
    torch.set_num_threads(threads)
    use_random_backbones()
    work = Workload(**{key: tuple(v) if isinstance(v, list) else v for key, v in spec["work"].items()})
    folder, data_dir = Path(spec["folder"]), Path(spec["data"])
    if spec["kind"] == "train":
        return train_worker(
            spec["arch"],
            folder,
            data_dir,
            spec["method"],
            spec["negatives"],
            work,
            spec.get("measure", "both"),
        )
    return infer_worker(spec["arch"], folder, data_dir, work)


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run(
    out: str | Path = "runs/bench",
    quick: bool = False,
    threads: int = 1,
    tiny_dir: str | Path | None = None,
    mode: str | None = None,
    models: Sequence[str] | None = None,
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
        models: architectures to run (names of ``bench_models.ARCHS``, the first is the headline);
            default: this device's plan.

    Returns:
        The ``bench.json`` contents.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    mode = mode or ("in-process" if quick else "subprocess" if cuda else "fork")
    if mode not in ("in-process", "fork", "subprocess"):
        raise ValueError(f"mode must be in-process, fork or subprocess, got {mode!r}")
    if quick:
        plan = [("tiny", QUICK_WORKLOAD)]
    elif cuda:
        plan = [(name, GPU_WORKLOAD) for name in ("qwen2_vl_2b", "qwen2_5_vl_3b", "qwen2_5_vl_7b")]
    else:  # the first model is the headline: the one with real proportions
        plan = [("scaled2b", CPU_WORKLOAD), ("vocab152k", CPU_VOCAB_WORKLOAD)]
    if models:
        workloads = dict(plan) | {"scaled2b": CPU_WORKLOAD, "vocab152k": CPU_VOCAB_WORKLOAD}
        unknown = [name for name in models if name not in ARCHS]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {sorted(ARCHS)}")
        plan = [(name, workloads.get(name, GPU_WORKLOAD if cuda else CPU_WORKLOAD)) for name in models]
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": _device_name(),
        "threads": threads,
        "quick": quick,
        "objective": "cl",
        "lora_r": LORA_R,
        "memory_method": (
            "torch.cuda.max_memory_allocated minus allocated before the timed steps"
            if cuda
            else "peak RSS (VmHWM after clear_refs reset) minus RSS before the measured steps, "
            "glibc mmap threshold 64 KiB, "
            + {
                "in-process": "configurations run one after another in one process",
                "fork": "a fresh forked process per configuration, separate from the timing process",
                "subprocess": "a fresh subprocess per configuration, separate from the timing process",
            }[mode]
        ),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as scratch:
        scratch = Path(scratch)
        for arch, work in plan:
            folder = prepare_arch(
                arch, scratch / "models", Path(tiny_dir) if tiny_dir else None, work.image_side
            )
            data_dir = scratch / "data" / arch
            base = {"arch": arch, "folder": str(folder), "data": str(data_dir), "work": work.__dict__}
            train = {}
            for negatives in TRAIN_NEGATIVES:
                for method in ARCHS[arch].get("methods", TRAIN_METHODS):
                    spec = {**base, "kind": "train", "method": method, "negatives": negatives}
                    if cuda or quick:  # CUDA's allocator statistics cost no speed; quick is a smoke test
                        result = _run_worker({**spec, "measure": "both"}, mode, threads)
                    else:  # CPU: time with the normal allocator, measure memory in a second process
                        result = _run_worker({**spec, "measure": "time"}, mode, threads)
                        if not result.get("oom"):
                            memory = _run_worker({**spec, "measure": "memory"}, mode, threads)
                            result["peak_mib"] = memory.get("peak_mib")
                    train[f"{method}/n{negatives}"] = result
                    print(
                        f"bench: {arch} train {method} N={negatives}: {short(train[f'{method}/n{negatives}'])}",
                        flush=True,
                    )
            entry = {"train": train, "summary": train_summary(train)}
            with contextlib.suppress(Exception):
                entry["head_flops_per_decoder_flops"] = head_ratio(arch, folder)
            if arch in INFERENCE_ARCHS:
                entry["inference"] = _run_worker({**base, "kind": "infer"}, mode, threads)
                print(f"bench: {arch} inference: {short(entry['inference'])}", flush=True)
            report["models"][arch] = entry
    headline = report["models"][plan[0][0]]
    summary = headline["summary"]
    inference = headline.get("inference", {})
    report.update(
        {
            "headline_model": plan[0][0],
            "train_speedup": summary["train_speedup"],
            "train_speedup_n4": summary["train_speedup_n4"],
            "train_speedup_n16": summary["train_speedup_n16"],
            "memory_growth_n4_to_n16": summary["memory_growth_n4_to_n16"],
            "train_speedup_vs_naive_gc": summary["train_speedup_vs_naive_gc"],
            "naive_memory_growth_n4_to_n16": summary["naive_memory_growth_n4_to_n16"],
            "naive_gc_memory_growth_n4_to_n16": summary["naive_gc_memory_growth_n4_to_n16"],
            "inference_speedup": inference.get("speedup"),
            "prefix_cache_speedup": inference.get("prefix_speedup"),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    report["targets"] = {
        "train_speedup>=2": bool(report["train_speedup"] and report["train_speedup"] >= 2),
        "memory_growth<1.3": bool(
            report["memory_growth_n4_to_n16"] and report["memory_growth_n4_to_n16"] < 1.3
        ),
        "inference_speedup>=5": bool(report["inference_speedup"] and report["inference_speedup"] >= 5),
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(markdown(report), encoding="utf-8")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench", type=Path, help="output folder (default runs/bench)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, in-process (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--tiny-dir", type=Path, default=None, help="reuse this tiny checkpoint folder")
    parser.add_argument(
        "--models", default=None, help="comma-separated architectures (default: the device's plan)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        print(json.dumps(_dispatch(json.loads(args.worker), args.threads)), flush=True)
        return 0
    models = args.models.split(",") if args.models else None
    report = run(args.out, quick=args.quick, threads=args.threads, tiny_dir=args.tiny_dir, models=models)
    print((Path(args.out) / "bench.md").read_text(encoding="utf-8"))
    print(f"wrote {Path(args.out) / 'bench.json'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
