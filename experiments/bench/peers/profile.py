"""Where a training step's time goes, on each side of the peer benchmark (SFT, one group per step).

    python -m experiments.bench.peers.profile --side {rerank-lab,sentence-transformers,padding}
        [--negatives 3,7] [--groups 4] [--model DIR] [--data DIR]

For each N, after one warm-up group, times the parts of a step on the same groups: encoding (rerank-lab's
``PairEncoder``; sentence-transformers' ``preprocess``: chat template + tokenizer), forward + loss,
backward, and the AdamW step, run the way each trainer runs them (rerank-lab: ``score_groups``, the
group's shared prefix once; sentence-transformers: the loss's preprocess + ``model(features)`` on the
whole group, left-padded). It also counts the token positions each side runs through the decoder
(``real``: rerank-lab runs the prefix once plus each pair's remaining tokens, sentence-transformers
every pair whole; ``padded``: as run, each batch padded to its longest row), whose ratio bounds what
sharing the prefix can save. ``--side padding`` only counts, without a model: for each N, over
``--groups`` groups, the remainders' real tokens and the positions they take padded to the group's
longest (one forward) and as the length buckets rerank-lab runs (``scoring.length_buckets`` at a
CPU's forward cost). Prints one JSON object.
Hand-timed with ``perf_counter`` rather than ``torch.profiler``: the question is the share of four
coarse phases, and the profiler's own overhead on one CPU thread would distort the small ones.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from datamodules.exit_codes import program
from experiments.bench.peers.data import load_groups
from experiments.bench.peers.runner import DEFAULT_DATA, DEFAULT_MODEL
from experiments.bench.peers.train import _settings, cross_encoder, init_lora, st_loss

PHASES = ("encode", "forward", "backward", "optimizer")


def _timed(phases: dict[str, float], name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    phases[name] += time.perf_counter() - start
    return out


def _rerank_lab(spec: dict, groups) -> dict:
    from datamodules.batches import TrainBatch
    from datamodules.encoding import PairEncoder
    from datamodules.formats import Doc
    from lightning_modules.prefix import shared_prefix
    from lightning_modules.reranker import RerankerModule

    settings = _settings(spec)
    keys = ("lora_r", "lora_alpha", "lora_dropout", "lora_target", "pairs_per_forward")
    module = RerankerModule(spec["model"], objective="sft", **{k: settings[k] for k in keys})
    init_lora(module.scorer.model, 0)
    encoder = PairEncoder.from_pretrained(spec["model"], max_length=spec["max_length"])
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=settings["lr"])
    phases, tokens = dict.fromkeys(PHASES, 0.0), np.zeros(2, dtype=np.int64)
    for number, group in enumerate(groups):
        if number == 1:
            phases, tokens = dict.fromkeys(PHASES, 0.0), np.zeros(2, dtype=np.int64)
        docs = [Doc(text=d) for d in group.documents]
        pairs = _timed(phases, "encode", encoder.encode_group, group.instruction, Doc(text=group.query), docs)
        batch = TrainBatch.of_groups([pairs], torch.tensor([[True] + [False] * (len(pairs) - 1)]))
        loss = _timed(phases, "forward", lambda step=batch: module.loss_step(step).loss)
        _timed(phases, "backward", loss.backward)
        _timed(phases, "optimizer", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
        prefix, _ = shared_prefix(pairs, None, 1)
        suffixes = [len(p.input_ids) - prefix for p in pairs]
        tokens += [prefix + sum(suffixes), prefix + _bucketed(suffixes)]
    return {"seconds": phases, "token_positions": dict(zip(("real", "padded"), tokens.tolist(), strict=True))}


def _bucketed(suffixes: list[int]) -> int:
    """Positions the remainders take as the length buckets that ``score_pairs`` runs on a CPU."""
    from lightning_modules.scoring import FORWARD_COST, length_buckets

    chunks = length_buckets(suffixes, len(suffixes), FORWARD_COST["cpu"])
    return sum(len(chunk) * max(suffixes[i] for i in chunk) for chunk in chunks)


def _padding(spec: dict, groups) -> dict:
    """The remainders' token positions: real, padded to the group's longest, and length-bucketed."""
    from datamodules.encoding import PairEncoder
    from datamodules.formats import Doc
    from lightning_modules.prefix import shared_prefix

    encoder = PairEncoder.from_pretrained(spec["model"], max_length=spec["max_length"])
    counts = dict.fromkeys(("real", "one_forward", "length_buckets"), 0)
    for group in groups:
        docs = [Doc(text=d) for d in group.documents]
        pairs = encoder.encode_group(group.instruction, Doc(text=group.query), docs)
        prefix, _ = shared_prefix(pairs, None, 1)
        suffixes = [len(p.input_ids) - prefix for p in pairs]
        counts["real"] += sum(suffixes)
        counts["one_forward"] += len(pairs) * max(suffixes)
        counts["length_buckets"] += _bucketed(suffixes)
    return {"remainder_positions": counts, "saved": 1 - counts["length_buckets"] / counts["one_forward"]}


def _st_loss(model_ce, loss_fn, features: dict, labels: torch.Tensor) -> torch.Tensor:
    """What ``BinaryCrossEntropyLoss.forward`` does after its ``preprocess`` call."""
    return loss_fn.bce_with_logits_loss(model_ce(features)["scores"].view(-1), labels)


def _sentence_transformers(spec: dict, groups) -> dict:
    from peft import LoraConfig
    from sentence_transformers.util import batch_to_device

    settings = _settings(spec)
    model_ce, _ = cross_encoder(spec["model"], "sft", spec["max_length"], groups[0].instruction)
    lora = {k: settings[k] for k in ("lora_alpha", "lora_dropout")}
    model_ce.add_adapter(LoraConfig(r=settings["lora_r"], target_modules=settings["lora_target"], **lora))
    init_lora(model_ce, 0)
    model_ce.train()
    loss_fn = st_loss(model_ce, "sft")
    optimizer = torch.optim.AdamW([p for p in model_ce.parameters() if p.requires_grad], lr=settings["lr"])
    phases, tokens = dict.fromkeys(PHASES, 0.0), np.zeros(2, dtype=np.int64)
    for number, group in enumerate(groups):
        if number == 1:
            phases, tokens = dict.fromkeys(PHASES, 0.0), np.zeros(2, dtype=np.int64)
        pairs = [(group.query, d) for d in group.documents]
        features = _timed(phases, "encode", model_ce.preprocess, pairs)
        features = batch_to_device(features, model_ce.device)
        labels = torch.tensor([1.0] + [0.0] * (len(pairs) - 1))
        loss = _timed(phases, "forward", _st_loss, model_ce, loss_fn, features, labels)
        _timed(phases, "backward", loss.backward)
        _timed(phases, "optimizer", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
        tokens += [int(features["attention_mask"].sum()), features["input_ids"].numel()]
    return {"seconds": phases, "token_positions": dict(zip(("real", "padded"), tokens.tolist(), strict=True))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program("experiments.bench.peers.profile"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--negatives", default="3,7")
    parser.add_argument("--groups", type=int, default=4, help="groups timed per N (after one warm-up group)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--side", choices=("rerank-lab", "sentence-transformers", "padding"), required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = {"model": args.model, "max_length": 256}
    spec["model_config"] = "experiments/configs/model/smollm2_135m.yaml"
    run = {"rerank-lab": _rerank_lab, "sentence-transformers": _sentence_transformers, "padding": _padding}[
        args.side
    ]
    out = {"side": args.side}
    for n in (int(v) for v in args.negatives.split(",")):
        groups = load_groups(f"{args.data}/train", args.groups + (args.side != "padding"), n)
        out[f"n{n}"] = run(spec, groups) | {"groups": args.groups}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
