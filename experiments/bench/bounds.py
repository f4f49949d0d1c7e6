"""The exact-computation bound of each speed-up: how far sharing can go at best.

rerank-lab's speed-ups come from not computing what need not be computed: a group's shared prefix
runs once instead of once per pair, each image goes through the vision tower once, and only the
label rows of the LM head are read. The bound of a speed-up is the ratio of the work the baseline
does to the work that must be done, counted from the encoded pairs themselves:

    work = c_dec · decoder tokens + c_vis · vision-tower patches + c_head · LM-head rows·tokens

with c_dec = 2·P_lm FLOPs per decoder token (P_lm: the language model's weights, embedding table
left out), c_vis = 2·P_vis per patch, c_head = 2·H per vocabulary row per token. Training counts the
decoder and head twice (forward, and backward's input gradients: the frozen base needs no weight
gradients, LoRA's are small) and the frozen vision tower once (no backward). Attention's
length-dependent FLOPs are left out (short pairs: a few percent).

- baseline (``naive`` training; ``one pair per forward`` inference): every pair whole, every
  pair's images (the query image once per pair), and for ``naive`` the full vocabulary at every
  position;
- the minimum: the prefix once per group (query), each pair's suffix, each image once, two head
  rows per pair.

A family's bound is work(baseline) ÷ work(minimum); the MRB mix's is Σ w·work(baseline) ÷ Σ w·
work(minimum) over the families (w: MRB datasets per family), the same weighting as the measured
throughput, on the assumption that time follows FLOPs at the same rate for both. Recomputation
under checkpointing, padding and per-forward costs keep a measured ratio below it. Only model
FLOPs are counted: a baseline's work outside the model (one pair per forward tokenises and
processes the query image once per pair, and pays the framework's per-forward cost per pair) can
put a measured inference ratio slightly above its bound (seen: IT2IT 2.26x against 2.09x).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from experiments.bench.mix import FAMILIES


def model_costs(model) -> dict[str, float]:
    """FLOPs per decoder token, per vision patch, and per LM-head row and token of ``model``."""
    decoder = model.model
    visual = getattr(decoder, "visual", None)
    language = getattr(decoder, "language_model", decoder)
    embed = model.get_input_embeddings().weight
    vision_params = sum(p.numel() for n, p in visual.named_parameters() if "lora_" not in n) if visual else 0
    lm_params = sum(p.numel() for n, p in language.named_parameters() if "lora_" not in n and p is not embed)
    hidden = model.get_output_embeddings().weight.shape[1]
    return {"token": 2.0 * lm_params, "patch": 2.0 * vision_params, "head_row": 2.0 * hidden}


def group_work(
    pairs: Sequence,
    image_token_id: int | None,
    merge_size: int,
    costs: dict[str, float],
    vocab: int,
    *,
    minimal: bool,
    full_vocab: bool = False,
    train: bool = False,
) -> float:
    """FLOPs of scoring one group's (query's) encoded ``pairs`` the baseline way or the minimal way."""
    from lightning_modules.prefix import shared_prefix

    length, images = (0, 0)
    if minimal and len(pairs) > 1:
        length, images = shared_prefix(pairs, image_token_id, merge_size)
    tokens = length + sum(len(p.input_ids) - length for p in pairs)
    patches = sum(int(px.shape[0]) for px in pairs[0].pixel_values[:images])
    patches += sum(int(px.shape[0]) for p in pairs for px in p.pixel_values[images:])
    rows = vocab * sum(len(p.input_ids) for p in pairs) if full_vocab else 2 * len(pairs)
    passes = 2.0 if train else 1.0
    return passes * (costs["token"] * tokens + costs["head_row"] * rows) + costs["patch"] * patches


def family_bound(pairs: Sequence, image_token_id, merge_size, costs, vocab, *, full_vocab, train) -> dict:
    """``{"baseline": FLOPs, "minimal": FLOPs, "bound": ratio}`` of one group."""
    baseline = group_work(
        pairs, image_token_id, merge_size, costs, vocab, minimal=False, full_vocab=full_vocab, train=train
    )
    minimal = group_work(pairs, image_token_id, merge_size, costs, vocab, minimal=True, train=train)
    return {"baseline": baseline, "minimal": minimal, "bound": baseline / minimal}


def mix_bound(families: dict[str, dict]) -> float:
    """The MRB-mix bound of per-family ``family_bound`` results (weighted by MRB dataset counts)."""
    weight = {family: FAMILIES[family][0] for family in families}
    baseline = sum(weight[f] * families[f]["baseline"] for f in families)
    return baseline / sum(weight[f] * families[f]["minimal"] for f in families)


def geometric_mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.geometric_mean(known) if known else None
