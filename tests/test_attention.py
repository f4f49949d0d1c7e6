"""Attention implementations: ``sdpa`` and ``eager`` score alike with the shared prefix and left
padding; ``flash_attention_2`` is refused early without flash-attn, and the path it would take is
run with a pure-torch stand-in for flash-attn's kernels.

The stand-in (:func:`varlen_attention`, :func:`dense_attention`) follows flash-attn 2's documented
semantics: sequences given by cumulative lengths, grouped-query heads, and with ``causal=True`` and
fewer queries than keys the causal mask aligned to the bottom-right corner (query i of a sequence
with q queries and k keys sees keys 0..i + k - q). Installed in place of the flash-attn functions
that transformers loads, it runs transformers' own flash-attention path: the 2-D padding mask
(a prefix's ones, then each suffix's left padding, in the middle of the keys) unpadded into
variable-length sequences, the prefix pass with no mask at all, and the vision tower's
``cu_seqlens`` windows. A GPU run with the real kernels is part of ``make gpu-check``.
"""

from __future__ import annotations

import functools

import pytest
import torch

from datamodules.formats import Doc
from lightning_modules.backbone import check_attn_implementation
from lightning_modules.inference import Reranker
from lightning_modules.reranker import RerankerModule
from tests.helpers import first_batch, make_data

INSTRUCTION = "Find the document that matches the query."


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool, top_left: bool = False
) -> torch.Tensor:
    """One sequence: q [Lq, H, D], k/v [Lk, Hkv, D] -> [Lq, H, D] (flash-attn layout).

    ``top_left``: the causal mask of flash-attn < 2.1 (query i sees keys 0..i), for the negative test.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if causal:
        lq, lk = q.shape[0], k.shape[0]
        shift = 0 if top_left else lk - lq  # bottom-right alignment
        allowed = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + shift
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.float()).to(q.dtype)


def varlen_attention(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
    softmax_scale=None, causal=False, top_left=False, **kwargs,
):  # fmt: skip
    """Stand-in for ``flash_attn.flash_attn_varlen_func`` (no dropout: eval-mode tests)."""
    assert dropout_p == 0.0
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    for b in range(len(cu_seqlens_q) - 1):
        qs, qe, ks, ke = (
            int(x) for x in (cu_seqlens_q[b], cu_seqlens_q[b + 1], cu_seqlens_k[b], cu_seqlens_k[b + 1])
        )
        out[qs:qe] = _attend(q[qs:qe], k[ks:ke], v[ks:ke], scale, causal, top_left)
    return out


def dense_attention(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    """Stand-in for ``flash_attn.flash_attn_func``: q [B, Lq, H, D], k/v [B, Lk, Hkv, D]."""
    assert dropout_p == 0.0
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return torch.stack([_attend(q[b], k[b], v[b], scale, causal) for b in range(q.shape[0])])


def use_flash_standin(model, monkeypatch) -> None:
    """Make ``model`` run transformers' flash_attention_2 path on the stand-in kernels."""
    import transformers.modeling_flash_attention_utils as fa

    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_process_flash_kwargs_fn"):
        assert hasattr(fa, name), (
            f"transformers moved its flash-attention loader ({name}); update the stand-in"
        )
    monkeypatch.setattr(fa, "_loaded_implementation", "flash_attention_2")
    monkeypatch.setattr(fa, "_flash_fn", dense_attention)
    monkeypatch.setattr(fa, "_flash_varlen_fn", varlen_attention)
    monkeypatch.setattr(fa, "_flash_with_kvcache_fn", None)
    monkeypatch.setattr(fa, "_pad_fn", fa._pad_input)
    monkeypatch.setattr(fa, "_unpad_fn", fa._unpad_input)
    monkeypatch.setattr(fa, "_process_flash_kwargs_fn", fa._lazy_define_process_function(varlen_attention))
    monkeypatch.setattr(fa, "_process_with_kvcache_kwargs_fn", dict)
    model.config._attn_implementation = "flash_attention_2"  # set on the text and vision configs too


@pytest.fixture(scope="module")
def queries(demo_dir) -> list[tuple[Doc, list[Doc]]]:
    """A text query over documents of different lengths, and an image query over image documents."""
    images = sorted((demo_dir / "train").rglob("*.png"))[:6]
    words = [
        "a",
        "small",
        "red",
        "square",
        "drawn",
        "next",
        "to",
        "a",
        "larger",
        "blue",
        "circle",
        "on",
        "white",
        "paper",
    ]
    text_docs = [Doc(text=" ".join(words[: 2 + 3 * i])) for i in range(5)]
    image_docs = [Doc(text=" ".join(words[:i]) or None, image=str(path)) for i, path in enumerate(images[1:])]
    return [
        (Doc(text="red square next to blue circle"), text_docs),
        (Doc(text="the same picture", image=str(images[0])), image_docs),
    ]


def _scores(reranker: Reranker, queries) -> list[list[float]]:
    return [reranker.score(query, docs, instruction=INSTRUCTION) for query, docs in queries]


def _reranker(folder, implementation: str, prefix_cache) -> Reranker:
    return Reranker.from_pretrained(
        folder,
        device="cpu",
        batch_size=3,  # 5 candidates: a full batch and a left-padded remainder
        min_pixels=3136,
        max_pixels=3136,
        attn_implementation=implementation,
        prefix_cache=prefix_cache,
        image_cache_mb=0,
    )


def test_sdpa_eager_and_the_flash_path_score_alike(tiny_model_dir, queries, monkeypatch):
    reference = _scores(_reranker(tiny_model_dir, "sdpa", False), queries)
    flat = torch.tensor([s for scores in reference for s in scores])
    assert flat.std() > 1e-3  # the scores differ between documents, so agreement means something
    for implementation in ("sdpa", "eager", "flash-standin"):
        for prefix in (False, True):
            reranker = _reranker(tiny_model_dir, "eager" if implementation != "sdpa" else "sdpa", prefix)
            if implementation == "flash-standin":
                use_flash_standin(reranker.scorer.model, monkeypatch)
            got = torch.tensor([s for scores in _scores(reranker, queries) for s in scores])
            torch.testing.assert_close(got, flat, atol=2e-5, rtol=0, msg=f"{implementation} prefix={prefix}")


def test_the_flash_path_really_runs_the_stand_in(tiny_model_dir, queries, monkeypatch):
    """Both kernels are reached: dense (prefix pass, unpadded rows) and variable-length (padding,
    vision windows); a broken stand-in changes the scores."""
    calls = {"dense": 0, "varlen": 0}

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    reranker = _reranker(tiny_model_dir, "eager", True)
    use_flash_standin(reranker.scorer.model, monkeypatch)
    import transformers.modeling_flash_attention_utils as fa

    monkeypatch.setattr(fa, "_flash_fn", counted(dense_attention, "dense"))
    monkeypatch.setattr(fa, "_flash_varlen_fn", counted(varlen_attention, "varlen"))
    good = _scores(reranker, queries)
    assert calls["dense"] > 0 and calls["varlen"] > 0
    # Top-left causal alignment (the flash-attn < 2.1 convention) is wrong for suffixes after a prefix.
    monkeypatch.setattr(fa, "_flash_varlen_fn", functools.partial(varlen_attention, top_left=True))
    bad = _scores(reranker, queries)
    assert max(abs(a - b) for x, y in zip(good, bad, strict=True) for a, b in zip(x, y, strict=True)) > 1e-3


def test_eager_training_step_equals_sdpa(tiny_model_dir, demo_dir):
    """Shared prefix, checkpointed micro-batches, LoRA: the same loss and gradients (fp64)."""
    batch = first_batch(make_data(tiny_model_dir, demo_dir, num_negatives=3), count=2)
    results = {}
    for implementation in ("sdpa", "eager"):
        torch.manual_seed(0)
        module = RerankerModule(
            str(tiny_model_dir), dtype="float64", lora_r=4, lora_dropout=0.0, pairs_per_forward=2,
            attn_implementation=implementation, objective="cl",
        )  # fmt: skip
        for name, param in module.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(1))
        loss = module.loss_step(batch).loss
        loss.backward()
        results[implementation] = (
            loss.item(),
            {n: p.grad for n, p in module.named_parameters() if p.grad is not None},
        )
    # eager takes its softmax in float32 (transformers), so fp64 agrees to float32 rounding only.
    assert results["eager"][0] == pytest.approx(results["sdpa"][0], abs=1e-6)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results["eager"][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_flash_attention_without_flash_attn_fails_before_loading(tiny_model_dir, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the attention check")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", no_load)
    with pytest.raises(
        ValueError, match=r"model\.attn_implementation 'flash_attention_2' needs the flash-attn"
    ):
        RerankerModule(str(tiny_model_dir), attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="sdpa"):
        Reranker.from_pretrained(tiny_model_dir, attn_implementation="flash_attention_2")
    check_attn_implementation("sdpa")  # the others pass through to transformers
    check_attn_implementation("eager")
