"""Training and inference benchmark: rerank-lab's model path against the way peers write it.

Command line (what ``make bench`` runs)::

    python -m experiments.bench [--out runs/bench] [--quick] [--threads 1]

Writes ``bench.json`` and ``bench.md`` into ``--out``. In one run, on the same models and data:

(a) Training. One optimizer step = ``RerankerModule.training_step`` + backward + AdamW step
    (CL objective, LoRA r=16 on the language model, ``pairs_per_forward=4`` micro-batches under
    checkpointing, left padding, label-token rows only) against NAIVE peer-style code:
    ``model(**inputs).logits`` (full-vocabulary logits at every position), right padding + gather
    at the last real token, the whole group in one forward, same LoRA, objective and AdamW; and
    ``naive-gc``, the same with Hugging Face activation checkpointing (what peer trainers turn on
    by default for LLM rerankers). ``naive`` is given its fastest form (no checkpointing,
    ``use_cache=False``), so the speed comparison is conservative for rerank-lab. For N = 4 and
    N = 16 negatives: pairs/s and peak step memory.
(b) Inference, end to end from raw query/documents: ``Reranker.score`` (all pairs encoded,
    length-sorted, batched), with the shared-prefix KV cache forced on, and with its default
    (``prefix_cache="auto"``), against a loop that encodes and scores one pair per forward with the
    same label-token scorer (so only batching differs), for text queries, image queries, and image
    queries over text-only documents.

Models. CPU (1 thread by default): ``scaled2b`` (the headline) is Qwen2-VL-2B's proportions scaled
down (hidden 256, 4 layers, the tiny tokenizer's vocabulary): the LM head is 0.18 of the decoder's
FLOPs as in the real 2B (7B: 0.08), the vision tower ~0.4x the decoder, logits ~10% of a token's
activation memory, so both the FLOP saving of label-row scoring and the memory shares are honest.
``tiny`` is the real tiny checkpoint of ``lightning_modules.tiny`` loaded from disk (head 2.6x the
decoder's FLOPs); ``vocab152k`` has Qwen's real 151,936-row vocabulary on a hidden-256 decoder (head
33x the decoder), so full-vocabulary logits cost their real bytes per token. On those two the
head's share is far larger than on real models and their speed-ups overstate; they are reported,
not used for the headline. CUDA (``torch.cuda.is_available()``): real-size Qwen2-VL-2B,
Qwen2.5-VL-3B and Qwen2.5-VL-7B architectures from the config dicts below (random weights, bf16,
SDPA), ~1k tokens per pair, plus model-FLOPs utilisation: MFU = 6·P·tokens/s (training) or
2·P·tokens/s (inference) ÷ the device's peak dense bf16 FLOP/s (H100 SXM 989e12), P = parameters
of the decoder and vision tower (embedding table and LM head left out, the same P for every
method, so MFU compares useful work). Config-only models are built by :func:`random_backbone`,
which the workers put in place of ``load_backbone`` (checkpoints on disk still load normally).

Memory. CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps minus the memory allocated
before them, one fresh subprocess per configuration. CPU (tracemalloc does not see torch's
allocations): one fresh forked process per configuration with glibc's mmap threshold fixed at
64 KiB (``mallopt(M_MMAP_THRESHOLD)``, i.e. ``MALLOC_MMAP_THRESHOLD_``: every tensor buffer is its own
mapping, returned to the OS when freed, so RSS follows live tensors); after a warm-up step the
process's peak-RSS mark is reset (``/proc/self/clear_refs`` <- 5) and the peak (``VmHWM``) over the
timed steps minus the RSS before them is reported. Both are the step's transient memory (inputs,
activations, logits, gradients) above the resident model and optimizer state. ``--quick`` (the
smoke test) runs its configurations in-process, measured the same way.

Timing: median step time after one warm-up step; inference after one warm-up pass.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAIN_NEGATIVES = (4, 16)
TRAIN_METHODS = ("rerank-lab", "naive", "naive-gc")
INFERENCE_ARCHS = ("scaled2b", "tiny", "qwen2_vl_2b", "qwen2_5_vl_3b", "qwen2_5_vl_7b")
LORA_R = 16
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

# Real-size architectures (from the published configs), built with random weights on CUDA.
_QWEN2_VL_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
_QWEN2_5_VL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
ARCHS: dict[str, dict[str, Any]] = {
    # CPU: the tiny model from disk, and a real-vocabulary model built from config.
    "tiny": {"family": "qwen2_vl", "from_disk": True},
    "vocab152k": {
        "family": "qwen2_vl",
        "methods": ("rerank-lab", "naive"),  # checkpointing does not change the head's cost
        "text": {
            "vocab_size": 151936,
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "mrope_section": [8, 12, 12],
        },
        "vision": {"hidden_size": 256},
    },
    # Qwen2-VL-2B's proportions scaled down: LM head ÷ decoder FLOPs 0.18 (2B: 0.18), vision tower
    # ~0.4x the decoder's parameters, logits ~10% of a token's activation memory.
    "scaled2b": {
        "family": "qwen2_vl",
        "text": {
            "hidden_size": 256,
            "intermediate_size": 1152,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "mrope_section": [8, 12, 12],
        },
        "vision": {"depth": 4, "embed_dim": 192, "num_heads": 4, "mlp_ratio": 4, "hidden_size": 256},
    },
    # CUDA: real shapes.
    "qwen2_vl_2b": {
        "family": "qwen2_vl",
        "tied": True,
        "text": {
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "mrope_section": [16, 24, 24],
        },
        "vision": {**_QWEN2_VL_VISION, "hidden_size": 1536},
    },
    "qwen2_5_vl_3b": {
        "family": "qwen2_5_vl",
        "tied": True,
        "text": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "mrope_section": [16, 24, 24],
        },
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 2048},
    },
    "qwen2_5_vl_7b": {
        "family": "qwen2_5_vl",
        "text": {
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "mrope_section": [16, 24, 24],
        },
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 3584},
    },
}


@dataclass(frozen=True)
class Workload:
    """Sizes of one benchmark run.

    Attributes:
        groups: query groups per training step.
        train_steps: timed training steps (after one warm-up step).
        pairs_per_forward: rerank-lab's training micro-batch in pairs.
        max_length: token cap per pair.
        image_side: side in pixels of the synthetic images.
        text_words: (min, max) words of document text.
        infer_queries: queries per inference query type.
        infer_candidates: candidates per query.
        infer_batch: Reranker batch size.
    """

    groups: int
    train_steps: int
    pairs_per_forward: int
    max_length: int
    image_side: int
    text_words: tuple[int, int]
    infer_queries: int
    infer_candidates: int
    infer_batch: int


CPU_WORKLOAD = Workload(2, 3, 4, 256, 112, (20, 90), 3, 32, 32)
CPU_SCALED_WORKLOAD = Workload(1, 2, 4, 160, 56, (10, 40), 2, 16, 16)
CPU_VOCAB_WORKLOAD = Workload(1, 1, 4, 256, 112, (20, 90), 2, 16, 16)
QUICK_WORKLOAD = Workload(1, 1, 4, 128, 56, (5, 20), 1, 6, 4)
GPU_WORKLOAD = Workload(1, 3, 4, 1024, 448, (450, 650), 4, 64, 32)


# ---- models ------------------------------------------------------------------------------------


def arch_config(name: str, tokenizer) -> Any:
    """The model config of an architecture in :data:`ARCHS`, with the token ids of ``tokenizer``."""
    from transformers import AutoConfig

    from lightning_modules.tiny import build_config

    spec = ARCHS[name]
    base = build_config(spec["family"], tokenizer).to_dict()
    text = dict(spec.get("text", {}))
    mrope = text.pop("mrope_section", None)
    base["text_config"].update(text)
    base["text_config"].pop("layer_types", None)  # derived from num_hidden_layers again
    if mrope is not None:
        base["text_config"]["rope_parameters"]["mrope_section"] = mrope
        base["text_config"].pop("head_dim", None)
    base["vision_config"].update(spec.get("vision", {}))
    if spec.get("tied"):  # the 2B and 3B checkpoints share the LM head with the input embeddings
        base["tie_word_embeddings"] = base["text_config"]["tie_word_embeddings"] = True
    model_type = base.pop("model_type")
    return AutoConfig.for_model(model_type, **base)


def prepare_arch(name: str, folder: Path, tiny_dir: Path | None, image_side: int) -> Path:
    """A model folder for ``name``: the tiny checkpoint itself, or config + tokenizer + processor.

    Config-only folders are turned into randomly initialised models by :func:`random_backbone`.
    """
    from lightning_modules.tiny import build_image_processor, build_tiny, build_tokenizer

    spec = ARCHS[name]
    if spec.get("from_disk"):
        return tiny_dir if tiny_dir is not None else build_tiny(folder / name, spec["family"])
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    arch_config(name, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor = build_image_processor(spec["family"])
    pixels = image_side * image_side
    processor.size = {"shortest_edge": min(pixels, processor.size["shortest_edge"]), "longest_edge": pixels}
    processor.save_pretrained(out)
    return out


def random_backbone(name_or_path: str, dtype: str = "float32", *args, **kwargs):
    """Stand-in for ``load_backbone`` on config-only folders: the architecture, random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from lightning_modules.backbone import DTYPES, load_backbone

    if (Path(name_or_path) / "model.safetensors").exists() or (
        Path(name_or_path) / "model.safetensors.index.json"
    ).exists():
        return load_backbone(name_or_path, dtype, *args, **kwargs)
    config = AutoConfig.from_pretrained(name_or_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(
            config, dtype=DTYPES[dtype], attn_implementation="sdpa"
        )
    return model


def use_random_backbones() -> None:
    """Route rerank-lab's loaders to :func:`random_backbone` (config-only folders only)."""
    import lightning_modules.inference as inference
    import lightning_modules.reranker as reranker

    reranker.load_backbone = random_backbone
    inference.load_backbone = random_backbone


def flop_params(model) -> int:
    """Parameters doing matmul work per token: everything but the embedding table and the LM head."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for n, p in model.named_parameters() if id(p) not in skip and "lora_" not in n)


# ---- data --------------------------------------------------------------------------------------


def _corpus() -> list[str]:
    """Real text: docstrings of a fixed set of Python standard-library modules (sorted, deterministic)."""
    import importlib
    import inspect

    texts = []
    for name in (
        "argparse",
        "collections",
        "csv",
        "datetime",
        "json",
        "pathlib",
        "random",
        "statistics",
        "textwrap",
    ):
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if inspect.isfunction(obj) or inspect.isclass(obj) else None
            if doc and len(doc.split()) >= 8:
                texts.append(" ".join(doc.split()))
    return texts or ["a small red car parks near the old house while the dog runs on the grass"]


def make_data(folder: Path, work: Workload, count: int, seed: int = 0) -> tuple[list, list[Path]]:
    """``count`` (query, documents) records with text and images, deterministic.

    Queries are short texts, half with an image; documents alternate text, image + text and image
    only; texts are real docstrings cut to ``work.text_words`` words. Images are random PNGs.
    """
    import random

    import numpy as np
    from PIL import Image

    from datamodules.formats import Doc

    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    corpus = _corpus()
    images = []
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(24):
        side = work.image_side * (1 + index % 2)
        path = folder / f"image{index}.png"
        Image.fromarray(pixels.integers(0, 256, (work.image_side, side, 3), dtype=np.uint8)).save(path)
        images.append(path)

    def text(low: int, high: int) -> str:
        words = rng.choice(corpus).split()
        while len(words) < high:
            words += rng.choice(corpus).split()
        return " ".join(words[: rng.randint(low, high)])

    def document(index: int) -> Doc:
        kind = index % 3
        image = str(rng.choice(images)) if kind else None
        return Doc(text=text(*work.text_words) if kind < 2 else None, image=image)

    records = []
    for index in range(count):
        query = Doc(text=text(4, 12), image=str(rng.choice(images)) if index % 2 else None)
        records.append((query, [document(i) for i in range(64)]))
    return records, images


def train_batches(encoder, records, negatives: int, work: Workload, steps: int) -> list[dict]:
    """Encoded training steps: ``work.groups`` groups of 1 + N documents each (positive first)."""
    import torch

    batches = []
    for step in range(steps):
        pairs, positives = [], []
        for group in range(work.groups):
            query, documents = records[(step * work.groups + group) % len(records)]
            pairs += encoder.encode_group(
                "Find the document for the query.", query, documents[: 1 + negatives]
            )
            positives.append([True] + [False] * negatives)
        batches.append({"pairs": pairs, "positives": torch.tensor(positives)})
    return batches


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


def _timed_steps(step, batches: Sequence[dict], device) -> tuple[list[float], float]:
    """Warm up on the first batch, then time one step per remaining batch; (times, peak MiB)."""
    step(batches[0])
    memory = PeakMemory(device)
    memory.start()
    times = []
    for batch in batches[1:]:
        _sync(device)
        start = time.perf_counter()
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, memory.peak_mib()


def train_worker(
    arch: str, folder: Path, data_dir: Path, method: str, negatives: int, work: Workload
) -> dict:
    """Measure one training configuration in this process."""
    import torch

    import objectives
    from lightning_modules.backbone import label_token_id
    from lightning_modules.encoding import PairEncoder
    from lightning_modules.reranker import DEFAULT_LORA_TARGET, RerankerModule

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    encoder = PairEncoder.from_pretrained(
        folder, max_length=work.max_length, min_pixels=3136, max_pixels=work.image_side**2 * 2
    )
    records, _ = make_data(data_dir, work, count=work.groups * (work.train_steps + 1))
    batches = train_batches(encoder, records, negatives, work, work.train_steps + 1)
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

    pairs = len(batches[0]["pairs"])
    tokens = statistics.mean(sum(len(p.input_ids) for p in b["pairs"]) for b in batches) / pairs
    try:
        times, peak = _timed_steps(step, batches, device)
    except torch.OutOfMemoryError:
        return {"arch": arch, "method": method, "negatives": negatives, "oom": True}
    seconds = statistics.median(times)
    result = {
        "arch": arch,
        "method": method,
        "negatives": negatives,
        "pairs_per_step": pairs,
        "tokens_per_pair": round(tokens, 1),
        "step_seconds": [round(t, 4) for t in times],
        "pairs_per_s": pairs / seconds,
        "peak_mib": peak,
        "oom": False,
    }
    if device.type == "cuda":
        result["mfu"] = 6 * flop_params(model) * tokens * pairs / seconds / peak_flops()
    return result


def peak_flops() -> float:
    """Peak dense bf16 FLOP/s of the current CUDA device (by name; H100 SXM 989e12 by default)."""
    import torch

    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), 989e12)


def infer_worker(arch: str, folder: Path, data_dir: Path, work: Workload) -> dict:
    """Measure inference: batched Reranker.score (with and without prefix cache) vs one-pair loop."""
    import torch

    from lightning_modules.inference import Reranker

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    records, _ = make_data(data_dir, work, count=2 * work.infer_queries, seed=1)
    reranker = Reranker.from_pretrained(
        folder,
        device=device,
        dtype=dtype,
        batch_size=work.infer_batch,
        max_length=work.max_length,
        min_pixels=3136,
        max_pixels=work.image_side**2 * 2,
        prefix_cache=False,
    )
    instruction = "Find the document for the query."
    text_queries = [(q, d[: work.infer_candidates]) for q, d in records if not q.image][: work.infer_queries]
    image_queries = [(q, d[: work.infer_candidates]) for q, d in records if q.image][: work.infer_queries]
    # Image queries over text-only documents: the case where the shared prefix dominates.
    image_to_text = [(q, [d for d in docs if not d.image] or docs) for q, docs in image_queries]

    def batched(queries, prefix) -> list[list[float]]:
        reranker.prefix_cache = prefix
        return [reranker.score(q, docs, instruction=instruction) for q, docs in queries]

    def loop(queries) -> list[list[float]]:
        out = []
        for query, docs in queries:
            out.append(
                [reranker._score_batch([reranker.encoder.encode(instruction, query, d)])[0] for d in docs]
            )
        return out

    def measure(fn, *args, warm_up: bool = False) -> tuple[float, list[list[float]]]:
        if warm_up:
            fn(*args)
        _sync(device)
        start = time.perf_counter()
        scores = fn(*args)
        _sync(device)
        return time.perf_counter() - start, scores

    results: dict[str, Any] = {"arch": arch, "batch_size": work.infer_batch}
    totals = {"pairs": 0, "loop": 0.0, "default": 0.0}
    sets = (
        ("text_queries", text_queries),
        ("image_queries", image_queries),
        ("image_to_text", image_to_text),
    )
    for name, queries in sets:
        pairs = sum(len(docs) for _, docs in queries)
        t_loop, s_loop = measure(loop, queries, warm_up=True)
        t_batch, s_batch = measure(batched, queries, False)
        if reranker._prefix_cache_available():
            t_prefix, s_prefix = measure(batched, queries, True)
            t_default, _ = measure(batched, queries, "auto")  # what Reranker.score does by default
        else:  # the plain path is all there is
            t_prefix, s_prefix, t_default = t_batch, s_batch, t_batch
        flat = lambda scores: torch.tensor([x for row in scores for x in row])  # noqa: E731
        tokens = statistics.mean(
            len(reranker.encoder.encode(instruction, q, d).input_ids) for q, docs in queries for d in docs
        )
        entry = {
            "pairs": pairs,
            "tokens_per_pair": round(tokens, 1),
            "loop_pairs_per_s": pairs / t_loop,
            "batched_pairs_per_s": pairs / t_batch,
            "prefix_pairs_per_s": pairs / t_prefix,
            "default_pairs_per_s": pairs / t_default,
            "batched_vs_loop_max_abs_diff": float((flat(s_batch) - flat(s_loop)).abs().max()),
            "prefix_vs_batched_max_abs_diff": float((flat(s_prefix) - flat(s_batch)).abs().max()),
        }
        if device.type == "cuda":
            params = flop_params(reranker.scorer.model)
            entry["batched_mfu"] = 2 * params * tokens * pairs / t_batch / peak_flops()
        results[name] = entry
        if name != "image_to_text":  # the overall number: text and image queries over mixed documents
            totals["pairs"] += pairs
            totals["loop"] += t_loop
            totals["default"] += t_default
    results["prefix_cache_supported"] = bool(reranker._prefix_supported)
    results["overall"] = {
        "pairs": totals["pairs"],
        "loop_pairs_per_s": totals["pairs"] / totals["loop"],
        "default_pairs_per_s": totals["pairs"] / totals["default"],
        "speedup": totals["loop"] / totals["default"],
    }
    return results


# ---- orchestration -----------------------------------------------------------------------------


def _run_worker(spec: dict, mode: str, threads: int) -> dict:
    """Run one configuration ``in-process``, in a ``fork``ed child, or in a fresh ``subprocess``."""
    if mode == "in-process":
        return _dispatch(spec, threads)
    if mode == "fork":
        return _run_forked(spec, threads)
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
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

    fix_mmap_threshold()
    torch.set_num_threads(threads)
    use_random_backbones()
    work = Workload(**{**spec["work"], "text_words": tuple(spec["work"]["text_words"])})
    folder, data_dir = Path(spec["folder"]), Path(spec["data"])
    if spec["kind"] == "train":
        return train_worker(spec["arch"], folder, data_dir, spec["method"], spec["negatives"], work)
    return infer_worker(spec["arch"], folder, data_dir, work)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


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
        plan = [("scaled2b", CPU_SCALED_WORKLOAD), ("tiny", CPU_WORKLOAD), ("vocab152k", CPU_VOCAB_WORKLOAD)]
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
            else "peak RSS (VmHWM after clear_refs reset) minus RSS before the timed steps, "
            "glibc mmap threshold 64 KiB, "
            + {
                "in-process": "configurations run one after another in one process",
                "fork": "a fresh forked process per configuration",
                "subprocess": "a fresh subprocess per configuration",
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
                    train[f"{method}/n{negatives}"] = _run_worker(spec, mode, threads)
                    print(
                        f"bench: {arch} train {method} N={negatives}: {_short(train[f'{method}/n{negatives}'])}",
                        flush=True,
                    )
            entry = {"train": train, "summary": _train_summary(train)}
            with contextlib.suppress(Exception):
                entry["head_flops_per_decoder_flops"] = _head_ratio_of(arch, folder)
            if arch in INFERENCE_ARCHS:
                entry["inference"] = _run_worker({**base, "kind": "infer"}, mode, threads)
                print(f"bench: {arch} inference: {_short(entry['inference'])}", flush=True)
            report["models"][arch] = entry
    headline = report["models"][plan[0][0]]
    summary = headline["summary"]
    inference = headline.get("inference", {})
    image_text = inference.get("image_to_text", {})
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
            "inference_speedup": inference.get("overall", {}).get("speedup"),
            "prefix_cache_speedup_image_queries": (
                _ratio(image_text.get("prefix_pairs_per_s"), image_text.get("batched_pairs_per_s"))
                if inference.get("prefix_cache_supported")
                else None
            ),
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


def _head_ratio_of(arch: str, folder: Path) -> float:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder).get_text_config()
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    decoder = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)
    return round(hidden * config.vocab_size / decoder, 3)


def _short(result: dict) -> str:
    if "pairs_per_s" in result:
        return f"{result['pairs_per_s']:.1f} pairs/s, peak {result['peak_mib']:.0f} MiB"
    if result.get("oom"):
        return "out of memory"
    return ", ".join(
        f"{k}: batched {v['batched_pairs_per_s']:.1f} / loop {v['loop_pairs_per_s']:.1f} / prefix "
        f"{v['prefix_pairs_per_s']:.1f} pairs/s"
        for k, v in result.items()
        if isinstance(v, dict) and "batched_pairs_per_s" in v
    )


def _train_summary(train: dict) -> dict:
    def get(method: str, negatives: int, key: str):
        result = train.get(f"{method}/n{negatives}", {})
        return None if result.get("oom") else result.get(key)

    def speedups(baseline: str) -> dict[int, float | None]:
        return {
            n: _ratio(get("rerank-lab", n, "pairs_per_s"), get(baseline, n, "pairs_per_s"))
            for n in TRAIN_NEGATIVES
        }

    def mean(values) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.geometric_mean(known) if known else None

    naive, naive_gc = speedups("naive"), speedups("naive-gc")
    growth = {
        method: _ratio(get(method, 16, "peak_mib"), get(method, 4, "peak_mib")) for method in TRAIN_METHODS
    }
    return {
        "train_speedup": mean(naive.values()),
        "train_speedup_n4": naive[4],
        "train_speedup_n16": naive[16],
        "train_speedup_vs_naive_gc": mean(naive_gc.values()),
        "memory_growth_n4_to_n16": growth["rerank-lab"],
        "naive_memory_growth_n4_to_n16": growth["naive"],
        "naive_gc_memory_growth_n4_to_n16": growth["naive-gc"],
    }


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def markdown(report: dict) -> str:
    """``bench.md``: the device, the training and inference tables, targets and the method notes."""
    lines = [
        "# rerank-lab benchmark",
        "",
        f"Device: **{report['device']}**, {report['threads']} torch thread(s). Objective CL, LoRA "
        f"r={report['lora_r']} on the language model, AdamW. Reproduce: `python -m experiments.bench`.",
        f"Memory: {report['memory_method']}.",
        "",
        "## Training (one optimizer step: forward + backward + AdamW)",
        "",
        "rerank-lab: `RerankerModule.training_step` (label-token rows, left padding, checkpointed "
        "micro-batches). naive: `model(**inputs).logits` (all positions, full vocabulary), right padding + "
        "gather, whole group in one forward. naive-gc: naive + Hugging Face gradient checkpointing.",
        "",
        "| model | N | method | pairs/step | tokens/pair | pairs/s | peak step MiB | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        for key, result in entry["train"].items():
            method, negatives = key.split("/n")
            if result.get("oom"):
                lines.append(f"| {arch} | {negatives} | {method} | | | OOM | OOM | |")
                continue
            mfu = f"{100 * result['mfu']:.1f}%" if "mfu" in result else ""
            lines.append(
                f"| {arch} | {negatives} | {method} | {result['pairs_per_step']} | {result['tokens_per_pair']} | "
                f"{result['pairs_per_s']:.1f} | {result['peak_mib']:.0f} | {mfu} |"
            )
    lines += [
        "",
        "| model | head ÷ decoder FLOPs | speed-up vs naive N=4 / N=16 | vs naive-gc | memory growth 4→16: "
        "rerank-lab / naive / naive-gc |",
        "|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        s = entry["summary"]
        lines.append(
            f"| {arch} | {_fmt(entry.get('head_flops_per_decoder_flops'), 2)} | "
            f"{_fmt(s['train_speedup_n4'], 2, 'x')} / {_fmt(s['train_speedup_n16'], 2, 'x')} | "
            f"{_fmt(s['train_speedup_vs_naive_gc'], 2, 'x')} | {_fmt(s['memory_growth_n4_to_n16'], 2, 'x')} / "
            f"{_fmt(s['naive_memory_growth_n4_to_n16'], 2, 'x')} / "
            f"{_fmt(s['naive_gc_memory_growth_n4_to_n16'], 2, 'x')} |"
        )
    lines += [
        "",
        "## Inference (end to end: encoding + scoring)",
        "",
        "one pair per forward: each pair encoded and scored alone (same label-token scorer). batched: "
        "Reranker.score with all pairs encoded, length-sorted, batched. + prefix cache: the shared query "
        'prefix\'s KV cache forced on. default: `prefix_cache="auto"` (on when the prefix is >= '
        "30% of the mean pair length).",
        "",
        "| model | queries | pairs | tokens/pair | one pair per forward | batched | batched + prefix cache | "
        "Reranker.score default | batched vs loop max diff | prefix vs batched max diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        for name, result in entry.get("inference", {}).items():
            if not isinstance(result, dict) or "tokens_per_pair" not in result:
                continue
            lines.append(
                f"| {arch} | {name} | {result['pairs']} | {result['tokens_per_pair']} | "
                f"{result['loop_pairs_per_s']:.1f} pairs/s | {result['batched_pairs_per_s']:.1f} pairs/s | "
                f"{result['prefix_pairs_per_s']:.1f} pairs/s | {result['default_pairs_per_s']:.1f} pairs/s | "
                f"{result['batched_vs_loop_max_abs_diff']:.1e} | "
                f"{result['prefix_vs_batched_max_abs_diff']:.1e} |"
            )
    targets = report["targets"]
    lines += [
        "",
        f"## Headline ({report['headline_model']})",
        "",
        f"- training speed-up over naive (geometric mean of N=4 and N=16): {_fmt(report['train_speedup'], 2)}x "
        f"(target >= 2x: {'met' if targets['train_speedup>=2'] else 'NOT met'}); over naive-gc: "
        f"{_fmt(report['train_speedup_vs_naive_gc'], 2)}x",
        f"- rerank-lab peak step memory N=4 → N=16: {_fmt(report['memory_growth_n4_to_n16'], 2)}x "
        f"(target < 1.3x: {'met' if targets['memory_growth<1.3'] else 'NOT met'}); naive: "
        f"{_fmt(report['naive_memory_growth_n4_to_n16'], 2)}x, naive-gc: "
        f"{_fmt(report['naive_gc_memory_growth_n4_to_n16'], 2)}x",
        f"- inference speed-up of Reranker.score (defaults) over one pair per forward, text + image queries: "
        f"{_fmt(report['inference_speedup'], 2)}x (target >= 5x: {'met' if targets['inference_speedup>=5'] else 'NOT met'})",
        "- shared-prefix KV cache, image queries over text documents: "
        + (
            f"{_fmt(report['prefix_cache_speedup_image_queries'], 2)}x over plain batching"
            if report["prefix_cache_speedup_image_queries"] is not None
            else "not available (this LabelScorer replaces caller-given position_ids)"
        ),
        "",
        "Head ÷ decoder FLOPs is the LM head's share of per-token compute, which is what skipping the",
        "full-vocabulary logits saves. Real checkpoints: Qwen2-VL-2B 0.18, Qwen2.5-VL-7B 0.08. `scaled2b` keeps",
        "the 2B proportions (the honest CPU comparison); `tiny` and `vocab152k` (Qwen's real vocabulary on a",
        "hidden-256 decoder) give the head a far larger share than real models, so their speed-ups overstate.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench", type=Path, help="output folder (default runs/bench)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, in-process (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--tiny-dir", type=Path, default=None, help="reuse this tiny checkpoint folder")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        print(json.dumps(_dispatch(json.loads(args.worker), args.threads)), flush=True)
        return 0
    report = run(args.out, quick=args.quick, threads=args.threads, tiny_dir=args.tiny_dir)
    print((Path(args.out) / "bench.md").read_text(encoding="utf-8"))
    print(f"wrote {Path(args.out) / 'bench.json'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
