"""One measured inference run, in its own process: ``Reranker.score`` or ``CrossEncoder.predict`` on the
same dev candidate lists (one call per query, the whole list in one batch on both sides), zero-shot
SmolLM2 scoring z_yes - z_no with the same prompt tokens (:mod:`experiments.bench.peers.data`)."""

from __future__ import annotations

import time

import torch

from experiments.bench.peers.data import load_dev
from experiments.bench.peers.memory import peak_rss_mib


def _scorer(spec: dict, instruction: str):
    """``score(query, documents) -> list[float]`` of the run's side."""
    if spec["side"] == "rerank-lab":
        from lightning_modules.inference import Reranker

        reranker = Reranker.from_pretrained(
            spec["model"], max_length=spec["max_length"], batch_size=spec["dev_top_k"]
        )
        return lambda query, docs: reranker.score(query, list(docs), instruction=instruction)
    from experiments.bench.peers.train import cross_encoder

    model_ce, _ = cross_encoder(spec["model"], "sft", spec["max_length"], instruction)
    model_ce.eval()
    return lambda query, docs: model_ce.predict([(query, d) for d in docs], batch_size=len(docs)).tolist()


def infer(spec: dict) -> dict:
    """Score every candidate list once after a warm-up call; pairs/s over all lists, peak RSS, scores."""
    torch.set_num_threads(1)
    instruction, _, lists = load_dev(spec["dev_root"], spec["infer_queries"], spec["dev_top_k"])
    score = _scorer(spec, instruction)
    score(lists[0].query, lists[0].documents)  # warm-up
    started = time.perf_counter()
    scores = [score(item.query, item.documents) for item in lists]
    seconds = time.perf_counter() - started
    pairs = sum(len(item.documents) for item in lists)
    return {
        "pairs": pairs,
        "pairs_per_s": pairs / seconds,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "scores": [[round(float(s), 6) for s in row] for row in scores],
    }
