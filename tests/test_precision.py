"""bf16 on the CPU: the training step under Lightning's ``bf16-mixed`` and ``bf16-true`` plugins.

The step is the real one (shared prefix, images through the frozen vision tower once, checkpointed
length-sorted micro-batches, LoRA, label-token scorer) for every objective, run inside the
precision plugin's own ``convert_module`` / ``forward_context`` (what the Trainer applies), and
compared with the float32 step on the same weights and batch.

Tolerances (bf16 keeps 8 significant bits, unit roundoff u = 2^-9 ~ 2e-3; rounding errors of the
two decoder layers, the vision tower and the attention softmax add up to a few percent of a
gradient, and differently for each parameter tensor):

- loss: |bf16 - fp32| <= 0.02 + 0.02·|fp32| (measured <= 5.2e-3 on losses ~1.5);
- gradient of all trainable weights as one vector: cosine >= 0.995 and ||g - g32|| <= 0.15·||g32||
  (measured over the objectives and modes below: cosine >= 0.9988, relative error <= 0.06);
- every trainable gradient is float32 (LoRA adapters stay float32, also under ``bf16-true``).

Dtypes: the shared prefix's keys/values have the dtype the decoder's own cache has for the whole
pair in the same precision context (so concatenating the suffix's never promotes), and image
features reach the decoder in the dtype the vision tower computes in (bf16 in every bf16 mode).
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision, Precision

import lightning_modules.reranker as reranker
import lightning_modules.scoring as scoring
from tests.helpers import cpu_trainer, first_batch, make_data

OBJECTIVES = {
    "sft": ("sft", None),
    "cl": ("cl", None),
    "listwise": ("listwise", None),
    "url-wsft-dcl": ("url", {"weight": "sft", "direction": "cl"}),
    "url-tau-mask": ("url", {"weight": "tau_mask", "direction": "sft"}),
    "url-projection": ("url", {"weight": "cl", "direction": "projection"}),
    "url-multi-token": ("url", {"weight": "sft", "direction": "multi_token", "label_token_count": 2}),
    "mix": ("mix", {"terms": {"sft": 1.0, "cl": 0.5}}),
}
# (Lightning precision, backbone dtype): a float32 backbone under autocast (trainer/fsdp.yaml), a
# bf16 backbone under autocast (the GPU presets), everything cast to bf16 by the plugin.
MODES = [("bf16-mixed", "float32"), ("bf16-mixed", "bfloat16"), ("bf16-true", "float32")]


@pytest.fixture(scope="module")
def image_batch(tiny_model_dir, demo_dir):
    """Two groups of 1 + 3 with image queries (prefix holds an image; documents have images)."""
    data = make_data(tiny_model_dir, demo_dir, num_negatives=3)
    batch = first_batch(data, count=2, predicate=lambda group: group.query.image)
    assert all(pair.pixel_values for group in batch.groups for pair in group)
    return batch


def _plugin(precision: str) -> Precision:
    if precision == "bf16-mixed":
        return MixedPrecision("bf16-mixed", "cpu")
    if precision == "bf16-true":
        return HalfPrecision("bf16-true")
    return Precision()


def _step(folder, batch, precision: str, dtype: str, objective: str, args, monkeypatch) -> dict:
    """One training step (forward + backward) inside ``precision``'s plugin; what it produced."""
    seen = {"kv": set(), "features": set()}
    start_prefix, pairs_features = scoring.start_prefix, reranker.pairs_features

    def recording_start_prefix(*a, **kw):
        prefix, suffixes = start_prefix(*a, **kw)
        seen["kv"] |= {(k.dtype, v.dtype) for k, v in zip(prefix.keys, prefix.values, strict=True)}
        return prefix, suffixes

    def recording_features(*a, **kw):
        features = pairs_features(*a, **kw)
        if features is not None:
            seen["features"] |= {f.dtype for f in features.pooler_output}
        return features

    monkeypatch.setattr(scoring, "start_prefix", recording_start_prefix)
    monkeypatch.setattr(reranker, "pairs_features", recording_features)
    torch.manual_seed(0)
    module = reranker.RerankerModule(
        str(folder),
        objective=objective,
        objective_args=args,
        dtype=dtype,
        lora_r=4,
        lora_dropout=0.0,
        pairs_per_forward=2,  # 4 pairs a group: one checkpointed micro-batch per group, then the kept one
    )
    for name, param in module.named_parameters():  # LoRA B starts at 0: give it values so A gets grads
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(1))
    plugin = _plugin(precision)
    module = plugin.convert_module(module)
    module.float32_trainables()  # what configure_optimizers does after the plugin's convert_module
    with plugin.forward_context():
        loss = module.loss_step(batch).loss
        # The decoder's own cache dtype for a whole pair in this context (what the prefix must match).
        pair = {k: v for k, v in module._collate(batch.groups[0][:1]).items() if k != "image_counts"}
        with torch.no_grad():
            out = module.scorer.decoder(**pair, use_cache=True)
        whole_kv = {(layer.keys.dtype, layer.values.dtype) for layer in out.past_key_values.layers}
    loss.backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "grads": grads, "whole_kv": whole_kv, **seen}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_bf16_training_step_matches_fp32(name, tiny_model_dir, image_batch, monkeypatch):
    objective, args = OBJECTIVES[name]
    ref = _step(tiny_model_dir, image_batch, "32-true", "float32", objective, args, monkeypatch)
    # Both shortcuts ran: the shared prefix and the once-per-image features.
    assert ref["kv"] == {(torch.float32, torch.float32)} and ref["features"] == {torch.float32}
    names = sorted(ref["grads"])
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    g32 = torch.cat([ref["grads"][n].flatten() for n in names])
    for precision, dtype in MODES:
        got = _step(tiny_model_dir, image_batch, precision, dtype, objective, args, monkeypatch)
        what = f"{name} {precision} backbone {dtype}"
        assert math.isfinite(got["loss"]), what
        assert abs(got["loss"] - ref["loss"]) <= 0.02 + 0.02 * abs(ref["loss"]), what
        assert sorted(got["grads"]) == names, what
        assert {g.dtype for g in got["grads"].values()} == {torch.float32}, what
        g = torch.cat([got["grads"][n].flatten() for n in names])
        assert torch.nn.functional.cosine_similarity(g, g32, dim=0) >= 0.995, what
        assert (g - g32).norm() <= 0.15 * g32.norm(), what
        assert got["kv"] == got["whole_kv"], what  # prefix KV in the decoder's own cache dtype
        assert got["features"] == {torch.bfloat16}, what  # the vision tower's compute dtype


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_trainer_fits_in_bf16_on_cpu_with_float32_adapters(precision, tiny_model_dir, demo_dir, tmp_path):
    """Lightning's Trainer with a bf16 precision on the CPU: two steps move the LoRA weights, which
    stay float32 (the frozen backbone is bf16 under ``bf16-true``)."""
    data = make_data(tiny_model_dir, demo_dir, num_negatives=3)
    batch = first_batch(data, count=2)
    torch.manual_seed(0)
    module = reranker.RerankerModule(
        str(tiny_model_dir), objective="cl", lora_r=4, pairs_per_forward=2, lr=1e-2
    )
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = cpu_trainer(tmp_path, precision=precision, max_steps=2)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch, batch], batch_size=None))
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    after = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert after.keys() == before.keys()
    assert {p.dtype for p in after.values()} == {torch.float32}
    assert any(not torch.equal(after[n], before[n]) for n in before if "lora_B" in n)
    backbone = module.scorer.model.get_input_embeddings().weight.dtype
    assert backbone == (torch.bfloat16 if precision == "bf16-true" else torch.float32)


def test_label_logits_stay_float32_under_bf16_autocast(tiny_model_dir, image_batch):
    module = reranker.RerankerModule(str(tiny_model_dir), lora_r=4)
    pair = {k: v for k, v in module._collate(image_batch.groups[0][:1]).items() if k != "image_counts"}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = module.scorer(pair)
    assert scores.label_logits.dtype == torch.float32  # the docstring's promise, also under autocast
