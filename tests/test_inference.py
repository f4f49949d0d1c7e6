"""Reranker inference: input forms, batched == one by one, ranking order, OOM back-off, prefix cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.formats import Doc
from lightning_modules.backbone import LabelScorer
from lightning_modules.inference import Reranker, as_doc

INSTRUCTION = "Find the match."


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inference-images")
    rng = np.random.default_rng(1)
    paths = []
    for index, (w, h) in enumerate([(56, 56), (112, 56), (56, 112)]):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def reranker(tiny_model_dir):
    return Reranker.from_pretrained(
        tiny_model_dir, device="cpu", batch_size=4, max_length=256, min_pixels=3136, max_pixels=12544
    )


def documents(images):
    return [
        "A red car parks near the house.",
        {"text": "a dog", "image": images[0]},
        {"image": Image.open(images[1])},
        Doc(text="two birds sit in a tree at night, one looking at the sky", image=images[2]),
        "no",
        {"text": "A small red car."},
    ]


def test_zero_shot_base_scores_yes_minus_no(reranker, images):
    assert reranker.config is None and reranker.words == ["yes", "no"]
    query = {"text": "a red car", "image": images[0]}
    scores = reranker.score(query, documents(images), instruction=INSTRUCTION)
    pairs = reranker.encoder.encode_group(INSTRUCTION, as_doc(query), [as_doc(d) for d in documents(images)])
    with torch.no_grad():
        logits = LabelScorer(reranker.scorer.model, reranker.scorer.label_token_ids.tolist())(
            reranker.encoder.collate(pairs)
        ).label_logits
    torch.testing.assert_close(torch.tensor(scores), logits[:, 0] - logits[:, 1], atol=1e-5, rtol=0)


def test_batched_scores_equal_one_by_one_and_rank_sorts(reranker, images):
    query = "a red car"
    docs = documents(images)
    batched = reranker.score(query, docs, instruction=INSTRUCTION)
    single = [reranker.score(query, [doc], instruction=INSTRUCTION)[0] for doc in docs]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), atol=1e-5, rtol=0)
    ranking = reranker.rank(query, docs, instruction=INSTRUCTION)
    assert sorted(index for index, _ in ranking) == list(range(len(docs)))
    assert [score for _, score in ranking] == sorted(batched, reverse=True)
    assert all(isinstance(score, float) for _, score in ranking)


def test_pil_image_scores_like_its_file(reranker, images):
    by_path = reranker.score("a dog", [{"image": images[1]}], instruction=INSTRUCTION)
    by_pil = reranker.score("a dog", [{"image": Image.open(images[1])}], instruction=INSTRUCTION)
    assert by_path == by_pil


def test_rank_breaks_ties_by_input_order(reranker, monkeypatch):
    monkeypatch.setattr(reranker, "score", lambda *args, **kwargs: [0.5, 2.0, 0.5, 2.0, -1.0])
    assert [i for i, _ in reranker.rank("q", ["a"] * 5)] == [1, 3, 0, 2, 4]


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_out_of_memory_halves_the_batch_and_retries(tiny_model_dir, images, monkeypatch, prefix_cache):
    reranker = Reranker.from_pretrained(
        tiny_model_dir, device="cpu", batch_size=8, max_length=256, prefix_cache=prefix_cache
    )
    docs = documents(images) * 2
    expected = reranker.score("a red car", docs, instruction=INSTRUCTION)
    forward = reranker.scorer.forward
    calls = []

    def flaky(batch):
        rows = batch["input_ids"].shape[0]
        if rows > 1:  # candidate batches (a shared prefix is scored as one row)
            calls.append(rows)
            if len(calls) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(batch)

    monkeypatch.setattr(reranker.scorer, "forward", flaky)
    got = reranker.score("a red car", docs, instruction=INSTRUCTION)
    # The first forward is the shortest length bucket of at most 8 pairs (scoring.length_buckets);
    # after the out-of-memory the whole query is scored again at half the batch size.
    assert calls[0] <= 8 and reranker.batch_size == 4 and max(calls[1:]) <= 4
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=0)

    def always(batch):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(reranker.scorer, "forward", always)
    with pytest.raises(torch.OutOfMemoryError):  # a single sequence that does not fit is an error
        reranker.score("a red car", docs, instruction=INSTRUCTION)
    assert reranker.batch_size == 1


def test_input_forms_are_checked():
    assert as_doc("text") == Doc(text="text")
    with pytest.raises(ValueError, match="neither text nor image"):
        as_doc({"text": ""})
    with pytest.raises(ValueError, match="unknown keys"):
        as_doc({"txt": "a"})
    with pytest.raises(ValueError, match="expected a str"):
        as_doc(3)


@pytest.mark.parametrize("query_kind", ["image", "text", "image+text"])
def test_prefix_cache_is_exact(tiny_model_dir, images, query_kind):
    reranker = Reranker.from_pretrained(
        tiny_model_dir, device="cpu", batch_size=3, max_length=256, min_pixels=3136, max_pixels=12544
    )
    query = {
        "image": {"image": images[2]},
        "text": "a red car",
        "image+text": {"text": "same", "image": images[0]},
    }
    docs = documents(images) + ["a small dog on the grass", {"image": images[0]}]
    plain = reranker.score(query[query_kind], docs, instruction=INSTRUCTION)
    reranker.prefix_cache = True
    assert reranker._prefix_cache_available()
    cached = reranker.score(query[query_kind], docs, instruction=INSTRUCTION)
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), atol=1e-4, rtol=0)


def test_images_met_again_are_not_encoded_again(tiny_model_dir, images):
    """Across calls, a candidate image (by path) is encoded once; in-memory images every time."""
    kwargs = dict(device="cpu", batch_size=2, max_length=256, min_pixels=3136, max_pixels=12544)
    cached = Reranker.from_pretrained(tiny_model_dir, **kwargs)
    plain = Reranker.from_pretrained(tiny_model_dir, image_cache_mb=0, **kwargs)
    docs = documents(images)  # two path images, one in-memory image
    for query in ("a red car", {"text": "a dog", "image": images[1]}):
        torch.testing.assert_close(
            torch.tensor(cached.score(query, docs, instruction=INSTRUCTION)),
            torch.tensor(plain.score(query, docs, instruction=INSTRUCTION)),
            atol=1e-5,
            rtol=0,
        )
    # Call 1: 2 path images + 1 in-memory. Call 2: the query image (new) + the in-memory one again.
    assert cached.image_cache.encoded == 5 and cached.image_cache.reused == 2
    assert plain.image_cache.encoded == 0
