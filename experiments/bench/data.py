"""Data-pipeline throughput: training groups of text+image pairs per second through the real stream.

Builds a tiny Qwen2-VL checkpoint (:func:`lightning_modules.tiny.build_tiny`) and a synthetic training
root (JSONL shards; every query and document has text and a 56x56 PNG: 4 visual tokens), then
feeds :class:`datamodules.stream.TrainStream` through a DataLoader whose workers encode each batch
with the model's :class:`~datamodules.encoding.PairEncoder` (chat template, tokenizer, image
processor, left-padded collation: everything a training step receives). Prints one JSON object::

    python -m experiments.bench.data [--workers 2] [--seconds 20] [--json out.json]

A group is 1 positive + ``--num-negatives`` documents (default 4: 5 pairs). Target: >= 200
groups/s with 2 CPU workers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from datamodules.exit_codes import program
from datamodules.files import write_text

TARGET_GROUPS_PER_S = 200.0
IMAGE_SIZE = 56


def write_root(root: Path, records: int, images: int, seed: int = 0, shards: int = 4) -> None:
    """``records`` groups (query, 1 positive, 6 hard negatives), all text + image, over ``images`` PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    for i in range(images):
        base = rng.integers(0, 256, size=3)
        gradient = np.linspace(0, 80, IMAGE_SIZE, dtype=np.float32)[None, :, None]
        noise = rng.normal(0, 25, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        pixels = np.clip(base + gradient + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i:05d}.png")
    words = (
        "red",
        "green",
        "blue",
        "small",
        "large",
        "round",
        "square",
        "photo",
        "drawing",
        "animal",
        "city",
    )
    pick = random.Random(seed)

    def doc(kind: str, k: int) -> dict:
        text = " ".join(pick.choices(words, k=pick.randint(6, 14)))
        return {"text": f"{kind} {k}: {text}", "image": f"images/{pick.randrange(images):05d}.png"}

    lines: list[list[str]] = [[] for _ in range(shards)]
    for k in range(records):
        record = {
            "task": f"task{k % 3}",
            "instruction": "Find the document that shows what the query describes.",
            "query": doc("query", k),
            "positives": [doc("positive", k)],
            "hard_negatives": [doc("hard", k) for _ in range(6)],
        }
        lines[k % shards].append(json.dumps(record))
    for shard, shard_lines in enumerate(lines):
        (root / f"shard{shard}.jsonl").write_text("\n".join(shard_lines) + "\n", encoding="utf-8")


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _stream_and_collate(
    tmp: Path, family: str, records: int, images: int, batch_size: int, num_negatives: int
):
    """A tiny model and a synthetic training root under ``tmp``: its stream and the encoding collate."""
    from datamodules.batches import encode_train
    from datamodules.encoding import PairEncoder
    from datamodules.stream import TrainStream
    from lightning_modules.tiny import build_tiny

    model_dir = build_tiny(tmp / "model", family=family, seed=0)
    write_root(tmp / "train", records, images)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    encoder = PairEncoder.from_pretrained(model_dir, max_length=1024, min_pixels=pixels, max_pixels=pixels)
    stream = TrainStream(
        str(tmp / "train"), batch_size=batch_size, num_negatives=num_negatives, hard_negative_ratio=0.5
    )
    return stream, functools.partial(encode_train, encoder)


def _consume(stream, collate, workers: int, seconds: float, warmup_batches: int) -> dict:
    """Read batches (restarting the loader at each epoch's end) for ``seconds`` after the first
    ``warmup_batches``: the counts of the timed span, all groups read, and the CPU seconds spent."""
    groups = pairs = visual_tokens = batches = all_groups = 0
    start = None
    workers_cpu = -_cpu_seconds(resource.RUSAGE_CHILDREN)
    main_cpu = -_cpu_seconds(resource.RUSAGE_SELF)
    while start is None or time.perf_counter() - start < seconds:
        loader = stream.dataloader(
            collate_fn=collate, num_workers=workers, prefetch_factor=4 if workers else None
        )
        iterator = iter(loader)
        for batch in iterator:
            stream.mark_consumed(batch)
            batches += 1
            all_groups += batch.positives.shape[0]
            if batches == warmup_batches:  # workers started, pipelines full
                start = time.perf_counter()
            elif start is not None:
                groups += batch.positives.shape[0]
                pairs += sum(len(group) for group in batch.groups)
                visual_tokens += batch.visual_tokens
            if start is not None and time.perf_counter() - start >= seconds:
                break
        del iterator  # joins the workers, so their CPU time is accounted to this process's children
    elapsed = time.perf_counter() - start
    workers_cpu += _cpu_seconds(resource.RUSAGE_CHILDREN)
    main_cpu += _cpu_seconds(resource.RUSAGE_SELF)
    return {
        "groups": groups,
        "pairs": pairs,
        "visual_tokens": visual_tokens,
        "all_groups": all_groups,
        "elapsed": elapsed,
        "workers_cpu": workers_cpu,
        "main_cpu": main_cpu,
    }


def measure(
    workers: int = 2,
    seconds: float = 20.0,
    batch_size: int = 4,
    num_negatives: int = 4,
    records: int = 3000,
    images: int = 2000,
    warmup_batches: int = 4,
    family: str = "qwen2_vl",
) -> dict:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        stream, collate = _stream_and_collate(Path(tmp), family, records, images, batch_size, num_negatives)
        counts = _consume(stream, collate, workers, seconds, warmup_batches)
    elapsed, pairs = counts["elapsed"], counts["pairs"]
    rate = counts["groups"] / elapsed
    # What the same workers deliver when each has a core to itself (the machine may be shared): all
    # groups consumed over the CPU seconds the workers spent (prefetched, unused batches included).
    per_worker_cpu = (counts["workers_cpu"] / workers) if workers else counts["main_cpu"]
    uncontended = counts["all_groups"] / per_worker_cpu if per_worker_cpu > 0 else float("nan")
    return {
        "benchmark": "data_stream",
        "groups_per_s": round(rate, 1),
        "pairs_per_s": round(pairs / elapsed, 1),
        "target_groups_per_s": TARGET_GROUPS_PER_S,
        "meets_target": rate >= TARGET_GROUPS_PER_S,
        "groups_per_s_one_core_per_worker": round(uncontended, 1),
        "main_process_cpu_share": round(counts["main_cpu"] / elapsed, 2),
        "workers": workers,
        "batch_size": batch_size,
        "group_size": 1 + num_negatives,
        "image_size": IMAGE_SIZE,
        "visual_tokens_per_pair": round(counts["visual_tokens"] / max(pairs, 1), 2),
        "groups_timed": counts["groups"],
        "seconds": round(elapsed, 2),
        "model": f"tiny {family}",
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench.data"), description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="measured time after warm-up (default 20)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="groups per batch (default 4)")
    parser.add_argument("--num-negatives", type=int, default=4, help="negatives per group (default 4)")
    parser.add_argument("--records", type=int, default=3000, help="synthetic training records (default 3000)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = measure(args.workers, args.seconds, args.batch_size, args.num_negatives, args.records)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
