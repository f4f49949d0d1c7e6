"""One measured benchmark configuration (a training method or the inference paths), run in this process.

See :mod:`experiments.bench` for what is measured and how.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.bench.bounds import family_bound, mix_bound, model_costs
from experiments.bench.mix import FAMILIES, INSTRUCTION, Workload, make_groups, weighted_rate
from experiments.bench.models import flop_params, peak_flops, use_random_backbones

LORA_R = 16


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
        # The kernel updates VmHWM lazily, so it can trail VmRSS: the peak is at least the current RSS,
        # and never below the level at start (a negative "peak" was noise read as a shrink).
        peak = max(_status_kb("VmHWM"), _status_kb("VmRSS")) * 1024
        return max(0.0, (peak - self.base) / 2**20)


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


def _rerank_lab_loss(folder: Path, work: Workload, dtype: str, device, encoder):
    """rerank-lab's side: ``RerankerModule.loss_step`` on the batch (model, trainable parameters, loss)."""
    import torch

    from datamodules.batches import TrainBatch
    from lightning_modules.reranker import RerankerModule

    module = RerankerModule(
        str(folder), objective="cl", dtype=dtype, lora_r=LORA_R, pairs_per_forward=work.pairs_per_forward
    ).to(device)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]

    def loss_of(batch: dict) -> torch.Tensor:
        size = batch["positives"].shape[1]
        pairs = batch["pairs"]
        groups = [pairs[i : i + size] for i in range(0, len(pairs), size)]  # what the DataModule yields
        step = TrainBatch.of_groups(groups, batch["positives"].to(device), encoder.image_token_id)
        return module.loss_step(step).loss  # no Trainer: the loss alone, nothing logged

    return module.scorer.model, params, loss_of


def _naive_loss(folder: Path, method: str, dtype: str, device, encoder):
    """The naive side: a peft LoRA backbone, every pair padded to the batch's longest, full-vocabulary
    logits, activation checkpointing with ``naive-gc`` (model, trainable parameters, loss)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    import lightning_modules.reranker as reranker_module
    import objectives
    from lightning_modules.backbone import label_token_id
    from lightning_modules.reranker import DEFAULT_LORA_TARGET

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

    return model, params, loss_of


def _time_figures(model, encoder, batches: list[dict], mix: dict) -> dict:
    """The pairs/s mix and the speed-up bounds of a timed configuration (``families`` with their bounds)."""
    costs, vocab = model_costs(model), model.get_output_embeddings().weight.shape[0]
    bounds = {
        b["family"]: family_bound(
            b["pairs"], encoder.image_token_id, encoder.merge_size, costs, vocab, full_vocab=True, train=True
        )
        for b in batches
    }
    figures = {**mix, "bound": mix_bound(bounds)}  # of the speed-up over naive (see experiments.bench.bounds)
    for family, bound in bounds.items():
        figures["families"][family]["bound"] = round(bound["bound"], 3)
    return figures


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

    from datamodules.encoding import PairEncoder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    encoder = PairEncoder.from_pretrained(
        folder, max_length=work.max_length, min_pixels=3136, max_pixels=2 * work.image_side**2
    )
    batches = _family_batches(encoder, make_groups(data_dir, work), negatives)
    torch.manual_seed(0)
    if method == "rerank-lab":
        model, params, loss_of = _rerank_lab_loss(folder, work, dtype, device, encoder)
    elif method in ("naive", "naive-gc"):
        model, params, loss_of = _naive_loss(folder, method, dtype, device, encoder)
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
        result.update(_time_figures(model, encoder, batches, mix))
    if measure in ("memory", "both"):
        result["peak_mib"] = peak
        result.setdefault("tokens_per_pair", mix["tokens_per_pair"])
    if device.type == "cuda" and measure != "memory":
        result["mfu"] = 6 * flop_params(model) * mix["tokens_per_s"] / peak_flops()
    return result


def _bench_reranker(folder: Path, work: Workload, device):
    """The exported model as :class:`Reranker`, with the workload's batch, length and pixel budgets."""
    from lightning_modules.inference import Reranker

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    return Reranker.from_pretrained(
        folder,
        device=device,
        dtype=dtype,
        batch_size=work.infer_batch,
        max_length=work.max_length,
        min_pixels=3136,
        max_pixels=2 * work.image_side**2,
    )


def _score_batched(reranker, query, docs, prefix) -> list[float]:
    """``Reranker.score`` with the prefix cache set to ``prefix``, nothing carried over from earlier calls."""
    reranker.prefix_cache = prefix
    reranker.image_cache.clear()  # one query's cost: nothing carried over from earlier calls
    return reranker.score(query, docs, instruction=INSTRUCTION)


def _score_loop(reranker, query, docs) -> list[float]:
    """One pair per forward: each pair encoded (its images too) and scored alone."""
    encode = reranker.encoder.encode
    cache_bytes = reranker.image_cache.max_bytes
    reranker.image_cache.max_bytes = 0  # every pair encodes its own images
    try:
        return [reranker.score_encoded([encode(INSTRUCTION, query, doc)])[0] for doc in docs]
    finally:
        reranker.image_cache.max_bytes = cache_bytes


def _best_time(device, repeats: int, fn, *args) -> tuple[float, list[float]]:
    """The fastest of ``repeats`` calls of ``fn(*args)`` (as for training steps), and its scores."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        scores = fn(*args)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, scores


def _infer_family(reranker, costs, device, work: Workload, query, docs) -> dict:
    """One family's group: the three methods' seconds, pairs, tokens per pair, the bound and the
    largest score difference of ``Reranker.score`` vs one pair per forward."""
    import torch

    docs = docs[: work.infer_candidates]
    seconds = {}
    seconds["loop"], s_loop = _best_time(device, work.repeats, _score_loop, reranker, query, docs)
    seconds["batched"], _ = _best_time(device, work.repeats, _score_batched, reranker, query, docs, False)
    seconds["default"], s_default = _best_time(
        device, work.repeats, _score_batched, reranker, query, docs, "auto"
    )
    encoded = [reranker.encoder.encode(INSTRUCTION, query, d) for d in docs]
    bound = family_bound(
        encoded,
        reranker.encoder.image_token_id,
        reranker.encoder.merge_size,
        costs,
        0,
        full_vocab=False,
        train=False,
    )
    return {
        "seconds": seconds,
        "pairs": len(docs),
        "tokens": statistics.mean(len(p.input_ids) for p in encoded),
        "bound": bound,
        "diff": float((torch.tensor(s_default) - torch.tensor(s_loop)).abs().max()),
    }


def _infer_result(arch: str, work: Workload, measured: dict[str, dict]) -> tuple[dict, dict]:
    """The worker's result from the per-family measurements, and the mix summaries by method."""
    seconds = {
        name: {family: m["seconds"][name] for family, m in measured.items()} for name in _INFER_METHODS
    }
    pairs = {family: m["pairs"] for family, m in measured.items()}
    tokens = {family: m["tokens"] for family, m in measured.items()}
    bounds = {family: m["bound"] for family, m in measured.items()}
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
        "max_abs_diff_default_vs_loop": max(m["diff"] for m in measured.values()),
        "bound": mix_bound(bounds),  # of the speed-up over one pair per forward (experiments.bench.bounds)
        "families": {
            family: {
                "pairs": pairs[family],
                "tokens_per_pair": round(tokens[family], 1),
                "bound": round(bounds[family]["bound"], 3),
                **{f"{name}_pairs_per_s": pairs[family] / seconds[name][family] for name in seconds},
            }
            for family in pairs
        },
    }
    return result, mixes


# Inference methods, in the order they are timed: one pair per forward, Reranker.score without the
# prefix cache, Reranker.score with its defaults.
_INFER_METHODS = ("loop", "batched", "default")


def infer_worker(arch: str, folder: Path, data_dir: Path, work: Workload) -> dict:
    """Measure inference per family: Reranker.score (defaults; and without the prefix cache) vs a
    loop that encodes and scores one pair per forward with the same label-token scorer."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    groups = make_groups(data_dir, work, seed=1)
    reranker = _bench_reranker(folder, work, device)
    _, query, docs = groups[0]
    _score_loop(reranker, query, docs[:2]), _score_batched(reranker, query, docs[:4], "auto")  # warm-up
    costs = model_costs(reranker.scorer.model)
    measured = {
        family: _infer_family(reranker, costs, device, work, query, docs) for family, query, docs in groups
    }
    result, mixes = _infer_result(arch, work, measured)
    if device.type == "cuda":
        result["default_mfu"] = (
            2 * flop_params(reranker.scorer.model) * mixes["default"]["tokens_per_s"] / peak_flops()
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


def dispatch(spec: dict, threads: int) -> dict:
    import torch

    if spec.get("measure") == "memory":
        fix_mmap_threshold()  # RSS then follows live tensors (costs speed: timings run without it)
    torch.set_num_threads(threads)
    use_random_backbones()
    fields: dict[str, Any] = {key: tuple(v) if isinstance(v, list) else v for key, v in spec["work"].items()}
    work = Workload(**fields)
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
