"""Shared query prefixes and once-per-image vision features: the exact shortcuts of scoring a group.

Every pair of a query group starts with the same tokens: the system prompt, the instruction and
the query (its image included). This module finds that prefix on the token ids, runs it once,
keeping its keys/values (with their autograd graph when gradients are on), and scores each
candidate's remaining tokens, its *suffix*, against them. Training (``RerankerModule``, one
prefix per group of 1 + N documents) and inference (``Reranker``, one per query) both use it.

Why it is exact, for Qwen2-VL / Qwen2.5-VL / Qwen3-VL in transformers 5 and for text-only
decoders: a causal decoder's keys/values at a position depend only on the tokens up to it, and a
token's multimodal RoPE position depends only on the tokens before it. So a suffix's positions
are those of the suffix alone (``get_rope_index`` on it) shifted by the prefix's next position,
and attention over [prefix keys/values; suffix] is attention over the whole pair. Suffixes of
different lengths are left padded between prefix and suffix, and the padding is masked out.
Deep-stack features of a query image (Qwen3-VL) are injected in the prefix pass. With gradients,
every suffix batch reads the same prefix tensors (expanded over its rows, not copied), so autograd
sums their gradients and runs the prefix's backward once.

Where the prefix ends is read off the token ids: the longest common token prefix of the group,
leaving at least one token to every suffix (the answer position), never ending inside an image,
and holding an image only when its pixels and grid are identical in every pair. So BPE merges
across the query/document boundary, or documents whose images have the query image's size,
cannot make it wrong.

Vision once: :func:`image_features` runs the vision tower over a list of images in one call, and
the result goes to the decoder as ``mm_encoder_outputs`` instead of pixels. An image is then
encoded once per step even when its pair is scored twice (checkpointed micro-batches), and a
query image once per group. Exact while the vision tower is frozen (the default LoRA setup; it is
run without gradients); with a trainable vision tower callers pass pixels as before.

Not available under Hugging Face gradient checkpointing in training: transformers drops the KV
cache inside checkpointed layers, so :func:`prefix_usable` says no and callers score whole pairs.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from datamodules.encoding import EncodedPair
from lightning_modules.backbone import LabelScorer, Scores, text_position_ids

Image = tuple[torch.Tensor, torch.Tensor]  # (pixel patches, grid t/h/w) of one processed image
# Without gradients (evaluation, inference) the prefix's keys/values are copied into every batch;
# copying is far cheaper than recomputing, and experiments.bench measured a gain in every MRB
# family (prefix 25-70% of the pair). The floor only skips caching a handful of tokens.
PREFIX_MIN_SHARE = 0.1


def pays(length: int, pairs: Sequence[EncodedPair]) -> bool:
    """Whether a ``length``-token shared prefix is worth caching for scoring ``pairs``."""
    return length > 0 and length >= PREFIX_MIN_SHARE * sum(len(p.input_ids) for p in pairs) / len(pairs)


@dataclass
class PrefixKV:
    """A group's shared prefix: its length in tokens, the next RoPE position, its keys/values."""

    length: int
    next_position: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def prefix_usable(scorer: LabelScorer) -> bool:
    """Whether the backbone can score suffixes against a cached prefix exactly (see module doc)."""
    model = scorer.model
    if getattr(model.config, "vision_config", None) is not None and not hasattr(
        scorer.decoder, "get_rope_index"
    ):
        return False
    layers_checkpointed = model.training and getattr(model, "is_activation_checkpointing", False)
    return not layers_checkpointed


def vision_frozen(scorer: LabelScorer) -> bool:
    """Whether images can be encoded once and passed as features (frozen vision tower, new API)."""
    visual = getattr(scorer.decoder, "visual", None)
    if visual is None or not hasattr(scorer.decoder, "get_image_features"):
        return False
    if "mm_encoder_outputs" not in inspect.signature(scorer.decoder.forward).parameters:
        return False
    return not any(param.requires_grad for param in visual.parameters())


def shared_prefix(
    pairs: Sequence[EncodedPair], image_token_id: int | None, merge_size: int
) -> tuple[int, int]:
    """(length in tokens, number of images) of the prefix that every pair shares exactly.

    Args:
        pairs: the encoded pairs of one query (at least one).
        image_token_id: the image placeholder token.
        merge_size: the processor's spatial merge (visual tokens per image = t·h·w / merge²).
    """
    first = pairs[0]
    length = min(len(p.input_ids) for p in pairs) - 1  # the answer position stays in the suffix
    for pair in pairs[1:]:
        common = 0
        while common < length and pair.input_ids[common] == first.input_ids[common]:
            common += 1
        length = common
    index = image = 0
    while index < length:
        if first.input_ids[index] != image_token_id:
            index += 1
            continue
        end = index + int(first.image_grid_thw[image].prod()) // merge_size**2
        same = all(
            torch.equal(p.image_grid_thw[image], first.image_grid_thw[image])
            and torch.equal(p.pixel_values[image], first.pixel_values[image])
            for p in pairs[1:]
        )
        if end > length or not same:
            return index, image
        index, image = end, image + 1
    return length, image


def split(pair: EncodedPair, length: int, images: int) -> tuple[EncodedPair, EncodedPair]:
    """(prefix, suffix) of a pair cut after ``length`` tokens holding its first ``images`` images."""
    keys = pair.image_keys
    return (
        EncodedPair(
            pair.input_ids[:length],
            pair.pixel_values[:images],
            pair.image_grid_thw[:images],
            image_keys=keys[:images],
        ),
        EncodedPair(
            pair.input_ids[length:],
            pair.pixel_values[images:],
            pair.image_grid_thw[images:],
            image_keys=keys[images:],
        ),
    )


def pair_images(pairs: Sequence[EncodedPair]) -> list[tuple[str | None, torch.Tensor, torch.Tensor]]:
    """``(key, pixels, grid)`` of every image of ``pairs``, in batch order (key ``None`` if unknown)."""
    return [
        (pair.image_keys[i] if pair.image_keys else None, pixels, grid)
        for pair in pairs
        for i, (pixels, grid) in enumerate(zip(pair.pixel_values, pair.image_grid_thw, strict=True))
    ]


def query_prefix(
    scorer: LabelScorer,
    pairs: Sequence[EncodedPair],
    image_token_id: int | None,
    merge_size: int,
    force: bool = False,
) -> tuple[int, int]:
    """(length, images) of the prefix worth caching when scoring one query's ``pairs`` without
    gradients (``force``: whenever there is one), or ``(0, 0)``."""
    if len(pairs) < 2 or not prefix_usable(scorer):
        return 0, 0
    length, images = shared_prefix(pairs, image_token_id, merge_size)
    return (length, images) if length > 0 and (force or pays(length, pairs)) else (0, 0)


def start_prefix(
    scorer: LabelScorer, pairs: Sequence[EncodedPair], length: int, images: int, collate, features
) -> tuple[PrefixKV, list[EncodedPair]]:
    """Run the shared prefix of ``pairs`` once; (its keys/values, every pair's suffix).

    ``collate`` turns pairs into a batch on the model's device; ``features(pairs)`` gives their
    image features or ``None`` (pixels then go through the decoder).
    """
    head = split(pairs[0], length, images)[0]
    prefix = run_prefix(scorer, collate([head]), features([head]))
    return prefix, [split(pair, length, images)[1] for pair in pairs]


def pairs_features(scorer: LabelScorer, pairs: Sequence[EncodedPair], cache: ImageFeatureCache | None = None):
    """``mm_encoder_outputs["image"]`` for the images of ``pairs`` (frozen vision tower), through
    ``cache`` when given; ``None`` when they have no image."""
    images = pair_images(pairs)
    if not images:
        return None
    if cache is not None:
        return cache.features(scorer, images)
    return image_features(scorer, [(pixels, grid) for _, pixels, grid in images]).pick(range(len(images)))


def positions(scorer: LabelScorer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """RoPE positions of a left-padded batch as if each row started at 0 (``[3, B, L]`` for VLMs)."""
    mask = batch["attention_mask"]
    if "image_grid_thw" in batch:
        found, _ = scorer.decoder.get_rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=mask,
        )
        return found
    text = text_position_ids(mask)
    if getattr(scorer.model.config, "vision_config", None) is None:
        return text
    return text.unsqueeze(0).expand(3, -1, -1)


@dataclass
class ImageFeatures:
    """Vision-tower outputs of some images, one entry per image, selectable by index."""

    output_type: type
    pooled: list[torch.Tensor]
    deepstack: list[list[torch.Tensor]] | None  # per image, per deep-stack layer (Qwen3-VL)

    def pick(self, indices: Sequence[int]):
        """``mm_encoder_outputs["image"]`` for the images at ``indices``, in that order."""
        fields: dict[str, Any] = {"pooler_output": tuple(self.pooled[i] for i in indices)}
        if self.deepstack is not None:
            layers = len(self.deepstack[0]) if self.deepstack else 0
            fields["deepstack_features"] = [
                tuple(self.deepstack[i][k] for i in indices) for k in range(layers)
            ]
        return self.output_type(**fields)


@torch.no_grad()
def image_features(scorer: LabelScorer, images: Sequence[Image]) -> ImageFeatures:
    """Run the (frozen) vision tower once over ``images``."""
    device = next(scorer.decoder.parameters()).device
    pixel_values = torch.cat([pixels for pixels, _ in images]).to(device)
    grids = torch.stack([grid for _, grid in images]).to(device)
    out = scorer.decoder.get_image_features(pixel_values, grids, return_dict=True)
    deepstack = getattr(out, "deepstack_features", None)
    return ImageFeatures(
        output_type=type(out),
        pooled=list(out.pooler_output),
        deepstack=[list(feats) for feats in zip(*deepstack, strict=True)] if deepstack else None,
    )


def _decoder_inputs(batch: dict[str, torch.Tensor], features) -> dict:
    inputs: dict[str, Any] = {key: value for key, value in batch.items() if key != "image_counts"}
    if features is not None:
        inputs.pop("pixel_values", None)
        inputs["mm_encoder_outputs"] = {"image": features}
    return inputs


def cache_keyword(decoder: torch.nn.Module) -> str:
    """The decoder's keyword for a KV cache: ``cache`` (transformers that renamed it; 5.40 removes the
    old name) or ``past_key_values`` (earlier 5.x)."""
    cls: type = type(decoder)  # a class is hashable (mypy reads nn.Module's __hash__ as not)
    return _cache_keyword(cls)


@functools.cache
def _cache_keyword(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def run_prefix(scorer: LabelScorer, batch: dict[str, torch.Tensor], features=None) -> PrefixKV:
    """Run a one-row prefix batch and keep its keys/values (with their graph if grad is on)."""
    from transformers import DynamicCache

    position_ids = positions(scorer, batch)
    cache = DynamicCache(config=scorer.config)
    inputs = {**_decoder_inputs(batch, features), cache_keyword(scorer.decoder): cache}
    scorer.decoder(**inputs, position_ids=position_ids, use_cache=True)
    keys, values = [], []
    for number, layer in enumerate(cache.layers):
        if layer.keys is None or layer.values is None:
            raise RuntimeError(f"the prefix's forward left layer {number} of its KV cache empty")
        keys.append(layer.keys)
        values.append(layer.values)
    return PrefixKV(
        length=batch["input_ids"].shape[1],
        next_position=int(position_ids.max()) + 1,
        keys=keys,
        values=values,
    )


def score(
    scorer: LabelScorer, batch: dict[str, torch.Tensor], prefix: PrefixKV | None = None, features=None
) -> Scores:
    """Label logits of a left-padded batch of pairs, or of suffixes after ``prefix``.

    ``features`` (from :meth:`ImageFeatures.pick`) replace the batch's pixels when given.
    """
    inputs = _decoder_inputs(batch, features)
    if prefix is not None:
        from transformers import DynamicCache

        rows = batch["input_ids"].shape[0]
        inputs["position_ids"] = positions(scorer, batch) + prefix.next_position
        inputs[cache_keyword(scorer.decoder)] = DynamicCache(
            ddp_cache_data=[
                (k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                for k, v in zip(prefix.keys, prefix.values, strict=True)
            ],
            config=scorer.config,
        )
        mask = batch["attention_mask"]
        ones = torch.ones(rows, prefix.length, dtype=mask.dtype, device=mask.device)
        inputs["attention_mask"] = torch.cat([ones, mask], dim=1)
    return scorer(inputs)


class ImageFeatureCache:
    """Vision-tower outputs by image key (its path), least recently used out first, kept on the CPU.

    Evaluation scores the same candidate images for many queries (the top-100 lists of an image
    corpus overlap), and a frozen vision tower gives an image the same features every time, so
    each image is encoded once per evaluation instead of once per (query, candidate) pair. Images
    without a key (in-memory ones) are encoded every time and not kept.

    Args:
        max_bytes: the most feature bytes kept; 0 keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[torch.Tensor, list[torch.Tensor] | None, int]] = OrderedDict()
        self._bytes = 0
        self._output_type: type | None = None
        self.encoded = self.reused = 0

    def clear(self) -> None:
        """Forget every image (call when the vision tower may have changed)."""
        self._items.clear()
        self._bytes = 0

    def _store(self, key: str, pooled: torch.Tensor, deepstack: list[torch.Tensor] | None) -> None:
        pooled = pooled.to("cpu", copy=True)
        deepstack = None if deepstack is None else [feat.to("cpu", copy=True) for feat in deepstack]
        size = pooled.nbytes + sum(feat.nbytes for feat in deepstack or [])
        if size > self.max_bytes:
            return
        self._items[key] = (pooled, deepstack, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped

    def features(self, scorer: LabelScorer, images: Sequence[tuple[str | None, torch.Tensor, torch.Tensor]]):
        """``mm_encoder_outputs["image"]`` for ``(key, pixels, grid)`` images, encoding only the
        ones not kept (in one vision-tower call)."""
        missing = [i for i, (key, _, _) in enumerate(images) if key is None or key not in self._items]
        fresh = (
            image_features(scorer, [(px, grid) for _, px, grid in (images[i] for i in missing)])
            if missing
            else None
        )
        if fresh is not None:
            self._output_type = fresh.output_type
        self.encoded += len(missing)
        self.reused += len(images) - len(missing)
        device = next(scorer.decoder.parameters()).device
        computed = dict(zip(missing, range(len(missing)), strict=True))
        pooled, deepstack = [], []
        for index, (key, _, _) in enumerate(images):
            if index in computed or key is None:  # a keyless image is never kept: it was computed
                slot = computed[index]
                item = (fresh.pooled[slot], fresh.deepstack[slot] if fresh.deepstack else None)
                if key is not None:
                    self._store(key, *item)
            else:
                self._items.move_to_end(key)
                kept, kept_deep, _ = self._items[key]
                item = (
                    kept.to(device, non_blocking=True),
                    None if kept_deep is None else [f.to(device, non_blocking=True) for f in kept_deep],
                )
            pooled.append(item[0])
            deepstack.append(item[1])
        deep = [feats for feats in deepstack if feats is not None]
        if deep and len(deep) != len(deepstack):
            raise RuntimeError("image features with and without deep-stack layers in one batch")
        if self._output_type is None:  # set by the first encoding, which every kept image went through
            raise RuntimeError("no image was encoded yet, so no kept features exist")
        picked = ImageFeatures(self._output_type, pooled, deep or None)
        return picked.pick(range(len(images)))
