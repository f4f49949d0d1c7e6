"""The one scoring path: encoded pairs in, label-token logits out (training, evaluation, ``Reranker``).

A query's pairs (a training group, or one query's candidates at evaluation and in ``Reranker``) go
through :func:`score_pairs`:

1. with a shared prefix (``prefix=(length, images)``, from ``prefix.shared_prefix`` or
   ``prefix.query_prefix``) the tokens every pair shares run once and each pair's remaining tokens
   are scored against their keys/values (exact; lightning_modules/prefix.py);
2. the pairs run in forwards of at most ``size`` pairs, each collated (left-padded and moved to the
   model's device) only when it runs: this is the only place pairs become tensors. Without
   activation checkpointing the forwards are length buckets (:func:`length_buckets`): the cut of the
   length-sorted pairs that pads least, counting a forward's fixed cost, so that one long document
   does not pad the whole group to its length. With ``checkpointed`` they are length-sorted
   micro-batches of ``size`` (:func:`micro_batches`), the remainder (shortest pairs) first and full
   micro-batches of the longest pairs last;
3. with ``checkpointed`` every micro-batch but the last runs under non-reentrant activation
   checkpointing: the forward keeps no activations and backward recomputes one micro-batch at a
   time, so peak activation memory is that of ``size`` pairs plus the prefix, whatever the group
   size (docs/architecture.md §4). The last one, a full micro-batch of the longest pairs, keeps its
   activations: backward starts with it, so this adds nothing to the peak and saves recomputing
   the most expensive pairs.

The result is in the pairs' order. :func:`objective_inputs` then turns label logits and hidden
states into what an objective takes (its ``needs``), for the loss and for ranking alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from datamodules.encoding import EncodedPair
from lightning_modules.backbone import LabelScorer
from lightning_modules.prefix import score as score_after_prefix
from lightning_modules.prefix import start_prefix

Collate = Callable[[list[EncodedPair]], dict[str, torch.Tensor]]
Features = Callable[[list[EncodedPair]], Any]


def micro_batches(pairs: Sequence[EncodedPair], size: int) -> list[list[int]]:
    """Indices of ``pairs`` in length-sorted micro-batches of ``size``: the remainder first, then
    full micro-batches, the last holding the longest pairs (ties keep input order)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    ranked = sorted(range(len(pairs)), key=lambda i: (len(pairs[i].input_ids), i))
    return [ranked[max(0, end - size) : end] for end in range(len(ranked), 0, -size)][::-1]


# A forward pass's fixed cost, in padded token positions, by device type: what one more forward must
# save in padding to pay. On a CPU a forward's dispatch costs a few token positions of even a 135M
# model (a token position is ~2 ms of its forward and backward on one core; a forward's overhead ~10 ms);
# on a GPU a small forward is latency-bound (milliseconds against microseconds a token), so a split pays
# only for a large saving.
FORWARD_COST = {"cpu": 16, "cuda": 1024}


def length_buckets(lengths: Sequence[int], size: int, forward_cost: int) -> list[list[int]]:
    """Indices of the pairs (given their ``lengths``) in forwards of at most ``size`` pairs, each a run
    of the length-sorted order, chosen to minimise the padded positions (rows x longest row) plus
    ``forward_cost`` per forward: a dynamic programme over the sorted lengths (ties keep input order
    and, between equal costs, fewer forwards)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    ordered = [lengths[i] for i in order]
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - size), end):
            cost = best[start] + (end - start) * ordered[end - 1] + forward_cost
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks, end = [], len(order)
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


def score_pairs(
    scorer: LabelScorer,
    pairs: Sequence[EncodedPair],
    *,
    collate: Collate,
    features: Features,
    size: int,
    prefix: tuple[int, int] = (0, 0),
    checkpointed: bool = False,
    checkpoint_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label_logits [n, K], hidden [n, H])`` of ``pairs`` (one query's), in their order.

    Args:
        scorer: the label scorer around the backbone.
        pairs: the encoded pairs of one query (they share at most one prefix).
        collate: pairs -> a left-padded batch on the model's device.
        features: pairs -> their images' vision features (frozen tower, maybe cached) or ``None``.
        size: the most pairs in one forward pass.
        prefix: ``(length, images)`` of the prefix all pairs share, ``(0, 0)`` for none.
        checkpointed: run micro-batches under activation checkpointing (training).
        checkpoint_last: checkpoint the last micro-batch too (a group that is not the last one of
            its training batch: backward does not start with it).
    """
    length, images = prefix
    head, suffixes = None, list(pairs)
    if length > 0:
        head, suffixes = start_prefix(scorer, list(pairs), length, images, collate, features)

    def run(batch, image_features) -> tuple[torch.Tensor, torch.Tensor]:
        out = score_after_prefix(scorer, batch, head, image_features)
        return out.label_logits, out.hidden

    if checkpointed:
        chunks = micro_batches(suffixes, size)
    else:
        device = next(scorer.model.parameters()).device.type
        lengths = [len(pair.input_ids) for pair in suffixes]
        chunks = length_buckets(lengths, size, FORWARD_COST.get(device, FORWARD_COST["cuda"]))
    parts, order = [], []
    for number, chunk in enumerate(chunks):
        items = [suffixes[i] for i in chunk]
        args = (collate(items), features(items))
        if checkpointed and (checkpoint_last or number < len(chunks) - 1):
            parts.append(checkpoint(run, *args, use_reentrant=False))
        else:
            parts.append(run(*args))
        order += chunk
    restore = torch.argsort(torch.as_tensor(order, device=parts[0][0].device))
    label_logits = torch.cat([logits for logits, _ in parts])[restore]
    hidden = torch.cat([hidden for _, hidden in parts])[restore]
    return label_logits, hidden


def objective_inputs(
    label_logits: torch.Tensor, hidden: torch.Tensor, needs: Collection[str], token_columns: Sequence[int]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The (yes, no) logits ``[n, 2]`` and the extra inputs an objective ``needs``: ``hidden``
    (float32 hidden states at the answer position) and ``token_logits`` (every label token's
    logit, positive words first, in ``token_columns`` order)."""
    extra = {}
    if "hidden" in needs:
        extra["hidden"] = hidden.float()
    if "token_logits" in needs:
        extra["token_logits"] = label_logits[:, list(token_columns)]
    return label_logits[:, :2], extra


def rank_scores(
    objective, label_logits: torch.Tensor, hidden: torch.Tensor, token_columns: Sequence[int]
) -> torch.Tensor:
    """The objective's ranking score of each pair of one query, ``[n]``."""
    logits, extra = objective_inputs(label_logits, hidden, objective.needs, token_columns)
    return objective.score(logits.unsqueeze(0), **{k: v.unsqueeze(0) for k, v in extra.items()})[0]
