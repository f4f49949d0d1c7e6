"""Memory savers: gradient checkpointing with LoRA, QLoRA 4-bit, 8-bit AdamW (CPU, tiny model)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.reranker import RerankerModule
from tests.helpers import first_batch, make_data


@pytest.fixture(scope="module")
def batch(tiny_model_dir, demo_dir):
    return first_batch(make_data(tiny_model_dir, demo_dir), count=3)


def _lora_grads(tiny_model_dir, batch, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = RerankerModule(str(tiny_model_dir), lora_r=4, lora_dropout=0.0, dtype="float64", **kwargs)
    for name, param in module.named_parameters():  # LoRA B starts at 0: give it values so A gets grads
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    module.loss_step(batch).loss.backward()
    return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(tiny_model_dir, batch):
    plain = _lora_grads(tiny_model_dir, batch, share_prefix=False)
    checkpointed = _lora_grads(tiny_model_dir, batch, gradient_checkpointing=True)  # prefix off by itself
    assert plain.keys() == checkpointed.keys() and all("lora_" in n for n in plain)
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-9, rtol=0, msg=name)


def test_qlora_4bit_trains_lora_on_a_quantized_base(tiny_model_dir, batch):
    module = RerankerModule(str(tiny_model_dir), lora_r=4, quantization="4bit", optimizer="adamw8bit")
    quantized = [m for m in module.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized, "the language model's linears should be 4-bit"
    assert not any("visual" in n for n, m in module.named_modules() if type(m).__name__ == "Linear4bit")
    loss = module.loss_step(batch).loss
    loss.backward()
    grads = [p.grad for n, p in module.named_parameters() if "lora_" in n and p.grad is not None]
    assert torch.isfinite(loss) and grads and any(g.abs().sum() > 0 for g in grads)
