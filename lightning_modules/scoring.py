"""The one scoring path: encoded pairs in, label-token logits out (training, evaluation, ``Reranker``).

A query's pairs (a training group, or one query's candidates at evaluation and in ``Reranker``) go
through :func:`score_pairs`:

1. with a shared prefix (``prefix=(length, images)``, from ``prefix.shared_prefix`` or
   ``prefix.query_prefix``) the tokens every pair shares run once and each pair's remaining tokens
   are scored against their keys/values (exact; lightning_modules/prefix.py);
2. the pairs are cut into length-sorted micro-batches of ``size`` pairs, the remainder (shortest
   pairs) first and full micro-batches of the longest pairs last, each collated (left-padded and
   moved to the model's device) only when it runs: this is the only place pairs become tensors;
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
        size: pairs per forward pass.
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

    chunks = micro_batches(suffixes, size)
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
