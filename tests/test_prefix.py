"""Shared query prefixes and once-per-image vision features in training: exact, and really used."""

from __future__ import annotations

import pytest
import torch

from datamodules.encoding import EncodedPair
from lightning_modules.prefix import shared_prefix
from lightning_modules.reranker import RerankerModule
from tests.helpers import first_batch, make_data

IMAGE = 99  # the image token id of the hand-made pairs below


def _pair(ids: list[int], images: list[torch.Tensor]) -> EncodedPair:
    return EncodedPair(ids, list(images), [torch.tensor([1, 1, 2])] * len(images))  # 2 tokens an image


def test_prefix_keeps_the_query_image_and_stops_before_document_images():
    query, doc_a, doc_b = torch.zeros(4, 3), torch.ones(4, 3), torch.full((4, 3), 2.0)
    # Text query, image documents of the query's size: ids agree into the document image, pixels do not.
    pairs = [
        _pair([1, 2, 3, 9, IMAGE, IMAGE, 8, 7], [doc_a]),
        _pair([1, 2, 3, 9, IMAGE, IMAGE, 8, 6], [doc_b]),
    ]
    assert shared_prefix(pairs, IMAGE, merge_size=1) == (4, 0)
    # Image query: its image (same pixels in every pair) is shared, the document image after it is not.
    pairs = [
        _pair([1, IMAGE, IMAGE, 5, 9, IMAGE, IMAGE, 7], [query, doc_a]),
        _pair([1, IMAGE, IMAGE, 5, 9, IMAGE, IMAGE, 6], [query, doc_b]),
    ]
    assert shared_prefix(pairs, IMAGE, merge_size=1) == (5, 1)
    # Equal ids but different first images (not a query image): nothing from the image on is shared.
    pairs = [_pair([1, IMAGE, IMAGE, 5, 6], [doc_a]), _pair([1, IMAGE, IMAGE, 5, 7], [doc_b])]
    assert shared_prefix(pairs, IMAGE, merge_size=1) == (1, 0)
    # The answer position always stays in the suffix.
    assert shared_prefix([_pair([1, 2, 3], []), _pair([1, 2, 3], [])], IMAGE, merge_size=1) == (2, 0)


def _step(folder, batch, **kwargs) -> tuple[float, dict[str, torch.Tensor], int]:
    """(loss, gradients, images encoded by the vision tower) of one fp64 training step."""
    torch.manual_seed(0)
    module = RerankerModule(str(folder), dtype="float64", lora_dropout=0.0, **kwargs)
    for name, param in module.named_parameters():  # LoRA B starts at 0: give it values so A gets grads
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    encoded = []
    module.scorer.decoder.visual.register_forward_pre_hook(
        lambda _, args, kw: encoded.append(len(kw["grid_thw"])), with_kwargs=True
    )
    loss = module.loss_step(batch).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}, sum(encoded)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_shared_prefix_training_has_the_gradients_of_whole_pairs(tmp_path, demo_dir, tiny_model_dir, family):
    """fp64: prefix sharing + image features computed once == every pair run whole, to 1e-6."""
    from lightning_modules.tiny import build_tiny

    folder = tiny_model_dir if family == "qwen2_vl" else build_tiny(tmp_path / family, family=family)
    data = make_data(folder, demo_dir, num_negatives=3)
    image_query = first_batch(data, count=1, predicate=lambda g: g.query.image)
    text_query = first_batch(data, count=1, predicate=lambda g: not g.query.image)
    merge = data.encoder.merge_size
    (group,) = image_query.groups
    length, images = shared_prefix(group, data.encoder.image_token_id, merge)
    assert images == 1 and length > 0.3 * min(len(p.input_ids) for p in group)  # the query image is shared
    length, images = shared_prefix(text_query.groups[0], data.encoder.image_token_id, merge)
    assert images == 0 and length > 20  # system prompt, instruction and query text
    both = first_batch(data, count=2)  # two groups in one batch: each keeps its own prefix
    for batch in (image_query, text_query, both):
        images = sum(len(p.image_grid_thw) for g in batch.groups for p in g)  # the query's included
        for lora_r in (4, 0):  # LoRA: frozen vision tower, features once; full: pixels in every forward
            loss, reference, seen = _step(folder, batch, lora_r=lora_r, share_prefix=False)
            assert seen == images
            for per_forward in (0, 1, 3):
                shared_loss, grads, seen = _step(
                    folder, batch, lora_r=lora_r, share_prefix=True, pairs_per_forward=per_forward
                )
                if lora_r and batch is image_query:  # the query image once, not once per pair (4 pairs)
                    assert seen == images - 3
                assert shared_loss == pytest.approx(loss, abs=1e-9)
                assert grads.keys() == reference.keys() and len(grads) > 10
                for name, grad in reference.items():
                    torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=0, msg=name)


def _assert_same_scores(module, reference, batch) -> None:
    with torch.no_grad():
        got, expected = module.rerank_query(batch), reference.rerank_query(batch)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=0)


def test_validation_scores_with_the_shared_prefix_equal_whole_pairs(tiny_model_dir, demo_dir):
    """Evaluation runs each query's prefix once (where it pays); scores equal whole pairs (1e-5)."""
    from lightning_modules.prefix import pays

    data = make_data(tiny_model_dir, demo_dir)
    data.setup("validate")
    shared = RerankerModule(str(tiny_model_dir), lora_r=0, eval_pairs_per_forward=4).eval()
    plain = RerankerModule(str(tiny_model_dir), lora_r=0, share_prefix=False, eval_pairs_per_forward=4).eval()
    used = 0
    for index, batch in enumerate(data.val_dataloader()):
        if index % 7:  # a spread of tasks (text, image and image+text queries) keeps the test short
            continue
        pairs = batch.pairs
        length, _ = shared_prefix(pairs, data.encoder.image_token_id, data.encoder.merge_size)
        used += pays(length, pairs) and len(pairs) > shared.hparams.eval_pairs_per_forward
        _assert_same_scores(shared, plain, batch)
    assert used >= 3  # the prefix path really ran, across several micro-batches per query


def test_evaluation_encodes_each_image_once_and_scores_the_same(tiny_model_dir, demo_dir):
    """A frozen vision tower's features are kept across queries; scores equal encoding every pair."""
    data = make_data(tiny_model_dir, demo_dir, eval_tasks=["faces-i2i", "digits-t2i"])
    data.setup("validate")
    cached = RerankerModule(str(tiny_model_dir), lora_r=4, eval_pairs_per_forward=4).eval()
    plain = RerankerModule(
        str(tiny_model_dir), lora_r=4, eval_image_cache_mb=0, share_prefix=False, eval_pairs_per_forward=4
    ).eval()
    distinct, pairs = set(), 0
    for index, batch in enumerate(data.val_dataloader()):
        if index == 6:
            break
        distinct.update(key for pair in batch.pairs for key in pair.image_keys)
        pairs += len(batch.pairs)
        _assert_same_scores(cached, plain, batch)
    cache = cached._image_cache
    assert cache.encoded == len(distinct)  # every distinct image once (query images included)
    assert cache.reused > 0 and cache.encoded < pairs  # candidates recur across queries
    assert plain._image_cache.encoded == 0


def test_length_buckets_pad_least_for_their_forward_cost():
    """The dynamic programme against every cut of the sorted lengths into runs of at most ``size``."""
    import itertools
    import random

    from lightning_modules.scoring import length_buckets

    def cost(chunks, lengths, forward_cost):
        return sum(len(c) * max(lengths[i] for i in c) + forward_cost for c in chunks)

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(5, 120) for _ in range(rng.randint(1, 9))]
        size, forward_cost = rng.randint(1, 9), rng.choice([0, 16, 1024])
        got = length_buckets(lengths, size, forward_cost)
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        assert [i for c in got for i in c] == order and all(1 <= len(c) <= size for c in got)
        best = min(
            cost(
                [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True)],
                lengths,
                forward_cost,
            )
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
            if all(b - a <= size for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True))
        )
        assert cost(got, lengths, forward_cost) == best
    # One long document no longer pads a group: 7 short pairs and 1 long one run as two forwards on a
    # CPU; a GPU's forward cost keeps them together.
    lengths = [40, 42, 41, 150, 39, 40, 43, 41]
    assert length_buckets(lengths, 8, 16) == [[4, 0, 5, 2, 7, 1, 6], [3]]
    assert length_buckets(lengths, 8, 1024) == [[4, 0, 5, 2, 7, 1, 6, 3]]
    with pytest.raises(ValueError, match="micro-batch size"):
        length_buckets(lengths, 0, 16)


def test_micro_batches_put_the_remainder_first_and_the_longest_pairs_last():
    from lightning_modules.scoring import micro_batches

    pairs = [EncodedPair([0] * n) for n in (5, 2, 9, 2, 7)]
    assert micro_batches(pairs, 2) == [[1], [3, 0], [4, 2]]  # ties keep input order
    assert micro_batches(pairs, 5) == [[1, 3, 0, 4, 2]]
    assert micro_batches(pairs, 1) == [[1], [3], [0], [4], [2]]
    with pytest.raises(ValueError, match="micro-batch size"):
        micro_batches(pairs, 0)
